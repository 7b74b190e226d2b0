//! Patches in: finding image files, decoding them, and turning a PCam patch
//! into the normalised, cropped, masked CHW tensor the network expects.

use std::path::{Path, PathBuf};

use image::RgbImage;

use super::MAX_IMAGE_SIDE;
use crate::error::{Error, Result};
use crate::metadata::ModelMetadata;
pub use crate::metadata::{circular_mask, in_circle};

/// File extensions picked up when a directory is given.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "tif", "tiff"];

/// What a decoder may allocate for one image: an 8192 x 8192 RGBA image at 16 bits.
pub const MAX_IMAGE_BYTES: u64 = 8192 * 8192 * 8;

/// Where one patch comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchSource {
    /// An image file (PNG, JPEG, TIFF).
    File(PathBuf),
    /// Patch `index` of a PCam HDF5 file (`camelyonpatch_level_2_split_*_x.h5`, dataset `x`).
    H5 { path: PathBuf, index: usize },
}

impl std::fmt::Display for PatchSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PatchSource::File(p) => write!(f, "{}", p.display()),
            PatchSource::H5 { path, index } => write!(f, "{}[{index}]", path.display()),
        }
    }
}

fn is_h5(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "h5" | "hdf5"))
}

/// Expands command-line arguments into patches: files as given, directories
/// walked recursively (image extensions only, sorted), glob patterns expanded,
/// PCam HDF5 files into one source per patch.
pub fn expand_inputs(args: &[PathBuf]) -> Result<Vec<PatchSource>> {
    let mut files = Vec::new();
    expand_paths(args, &mut files)?;
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        if is_h5(&f) && f.is_file() {
            let n = crate::formats::pcam_h5::patch_count(&f)?;
            out.extend((0..n).map(|index| PatchSource::H5 { path: f.clone(), index }));
        } else {
            out.push(PatchSource::File(f));
        }
    }
    Ok(out)
}

fn expand_paths(args: &[PathBuf], out: &mut Vec<PathBuf>) -> Result<()> {
    for arg in args {
        let s = arg.to_string_lossy();
        if s.contains(['*', '?', '[']) && !arg.exists() {
            let matches: Vec<PathBuf> = glob::glob(&s)
                .map_err(|e| Error::Invalid(format!("{s}: bad glob pattern: {e}")))?
                .filter_map(|m| m.ok())
                .filter(|p| p.is_file())
                .collect();
            if matches.is_empty() {
                return Err(Error::NoMatch { pattern: s.into_owned() });
            }
            out.extend(matches);
        } else if arg.is_dir() {
            let before = out.len();
            walk_dir(arg, out)?;
            out[before..].sort();
            if out.len() == before {
                return Err(Error::NoMatch { pattern: format!("{} (no .png/.jpg/.tif files in the directory)", arg.display()) });
            }
        } else {
            // Kept even when missing: the batch reports it as failed and goes on.
            out.push(arg.clone());
        }
    }
    Ok(())
}

fn walk_dir(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            walk_dir(&path, out)?;
        } else if path.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str())) {
            out.push(path);
        }
    }
    Ok(())
}

/// Decodes an image file as 8-bit RGB, refusing absurd dimensions before allocating.
pub fn read_rgb(path: &Path) -> Result<RgbImage> {
    let size = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    if size > MAX_IMAGE_BYTES {
        return Err(Error::BadImage { path: path.to_path_buf(), reason: format!("{size} bytes, larger than any image read here") });
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_rgb(path, &bytes)
}

/// Decodes image bytes (PNG, JPEG, TIFF; `path` names them in errors) as 8-bit RGB. The
/// header's dimensions are checked against [`MAX_IMAGE_SIDE`] and the decoder's
/// allocations capped before any pixel is decoded (decompression bombs).
pub fn decode_rgb(path: &Path, bytes: &[u8]) -> Result<RgbImage> {
    let bad = |reason: String| Error::BadImage { path: path.to_path_buf(), reason };
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| Error::io(path, e))?;
    if reader.format().is_none() {
        return Err(bad("unknown image format".into()));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| bad(e.to_string()))?;
    Ok(img.to_rgb8())
}

/// How patches become network inputs.
#[derive(Debug, Clone)]
pub struct Preprocess {
    /// Raw patch side the model expects (PCam: 96).
    pub patch_size: u32,
    /// Side of the centred square crop (the network's input size).
    pub crop_size: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub circular_mask: bool,
    /// Resample patches of another size to `patch_size` instead of refusing them.
    pub resize: bool,
}

impl Preprocess {
    pub fn for_model(md: &ModelMetadata, input_side: u32) -> Self {
        Preprocess {
            patch_size: md.patch_size.max(input_side),
            crop_size: md.crop_size.unwrap_or(input_side),
            mean: md.mean,
            std: md.std,
            circular_mask: md.circular_mask,
            resize: false,
        }
    }

    /// Reads and prepares one patch into `out` (CHW, `3 * crop^2` floats).
    pub fn load_into(&self, source: &PatchSource, out: &mut [f32]) -> Result<()> {
        let (path, img) = match source {
            PatchSource::File(p) => (p, read_rgb(p)?),
            PatchSource::H5 { path, index } => (path, crate::formats::pcam_h5::read_patch(path, *index)?),
        };
        let img = self.check_size(path, img)?;
        self.tensorize(&img, out);
        Ok(())
    }

    pub fn check_size(&self, path: &Path, img: RgbImage) -> Result<RgbImage> {
        let (w, h) = img.dimensions();
        // A raw patch (PCam's 96, centre-cropped) or one already the size of the
        // network's input (taken as it is: nothing to crop, nothing resampled).
        if (w == self.patch_size && h == self.patch_size) || (w == self.crop_size && h == self.crop_size) {
            return Ok(img);
        }
        if self.resize {
            return Ok(image::imageops::resize(&img, self.patch_size, self.patch_size, image::imageops::FilterType::Triangle));
        }
        Err(Error::WrongPatchSize { path: path.to_path_buf(), width: w, height: h, expected: self.patch_size, input: self.crop_size })
    }

    /// Centre crop, scale to [0, 1], normalise, zero outside the inscribed circle.
    pub fn tensorize(&self, img: &RgbImage, out: &mut [f32]) {
        let s = self.crop_size as usize;
        assert_eq!(out.len(), 3 * s * s, "output buffer must hold one CHW patch");
        // floor((P - S) / 2), as torchvision's CenterCrop does for the PCam 96 -> 95 case.
        let off = ((img.width() - self.crop_size) / 2) as usize;
        for y in 0..s {
            for x in 0..s {
                let p = img.get_pixel((x + off) as u32, (y + off) as u32).0;
                let inside = !self.circular_mask || in_circle(s, y, x);
                for c in 0..3 {
                    out[c * s * s + y * s + x] = if inside { (p[c] as f32 / 255.0 - self.mean[c]) / self.std[c] } else { 0.0 };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_of_the_input_size_are_taken_as_they_are() {
        let p = Preprocess { patch_size: 96, crop_size: 95, mean: [0.0; 3], std: [1.0; 3], circular_mask: false, resize: false };
        let img = RgbImage::from_fn(95, 95, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let taken = p.check_size(Path::new("p.png"), img.clone()).unwrap();
        let mut out = vec![0f32; 3 * 95 * 95];
        p.tensorize(&taken, &mut out);
        // No shift: pixel (x, y) lands at (x, y).
        assert_eq!(out[10 * 95 + 20], 20.0 / 255.0);
        assert_eq!(out[95 * 95 + 10 * 95 + 20], 10.0 / 255.0);
        // Other sizes are still refused without --resize.
        let err = p.check_size(Path::new("p.png"), RgbImage::new(94, 94)).unwrap_err().to_string();
        assert!(err.contains("94x94"), "{err}");
    }

    #[test]
    fn tensorize_crops_normalises_and_masks() {
        let img = RgbImage::from_fn(96, 96, |x, y| image::Rgb([x as u8, y as u8, 255]));
        let pre =
            Preprocess { patch_size: 96, crop_size: 95, mean: [0.0, 0.5, 0.0], std: [1.0, 0.5, 2.0], circular_mask: true, resize: false };
        let mut out = vec![0.0; 3 * 95 * 95];
        pre.tensorize(&img, &mut out);
        let at = |c: usize, y: usize, x: usize| out[c * 95 * 95 + y * 95 + x];
        assert_eq!(at(0, 47, 10), 10.0 / 255.0);
        assert_eq!(at(1, 30, 47), (30.0 / 255.0 - 0.5) / 0.5);
        assert_eq!(at(2, 47, 47), 0.5);
        assert_eq!(at(2, 0, 0), 0.0, "corner is outside the circle");
    }
}
