//! PCam's HDF5 files (`camelyonpatch_level_2_split_{train,valid,test}_x.h5`):
//! dataset `x`, uint8 [N, 96, 96, 3]. Read through libhdf5 (crate hdf5-metno)
//! behind the `pcam-h5` feature, so device builds need no C library.

use std::path::Path;

use image::RgbImage;

use crate::error::{Error, Result};

#[cfg(feature = "pcam-h5")]
mod imp {
    use super::*;

    fn err(path: &Path, e: impl std::fmt::Display) -> Error {
        Error::BadImage { path: path.to_path_buf(), reason: format!("not a PCam HDF5 file: {e}") }
    }

    fn dataset(path: &Path) -> Result<(hdf5_metno::Dataset, usize)> {
        if !path.exists() {
            return Err(Error::NotFound { path: path.to_path_buf() });
        }
        let file = hdf5_metno::File::open(path).map_err(|e| err(path, e))?;
        let ds = file.dataset("x").map_err(|e| err(path, format!("no dataset \"x\" ({e})")))?;
        let shape = ds.shape();
        if shape.len() != 4 || shape[3] != 3 {
            return Err(err(path, format!("dataset \"x\" has shape {shape:?}, expected [N, H, W, 3]")));
        }
        // Reading one patch allocates H x W x 3 bytes: the declared size is checked first,
        // as image headers are (found by fuzzing: a forged shape exhausted memory).
        let side = crate::patch::MAX_IMAGE_SIDE as usize;
        if shape[1] > side || shape[2] > side {
            return Err(err(path, format!("patches of {}x{} declared, more than {side} pixels a side", shape[1], shape[2])));
        }
        if ds.dtype().map_err(|e| err(path, e))?.size() != 1 {
            return Err(err(path, "dataset \"x\" is not uint8"));
        }
        Ok((ds, shape[0]))
    }

    pub fn patch_count(path: &Path) -> Result<usize> {
        Ok(dataset(path)?.1)
    }

    pub fn read_patch(path: &Path, index: usize) -> Result<RgbImage> {
        let (ds, n) = dataset(path)?;
        crate::ensure!(index < n, err(path, format!("patch {index} out of range ({n} patches)")));
        let patch = ds.read_slice::<u8, _, crate::ndarray::Ix3>(crate::ndarray::s![index, .., .., ..]).map_err(|e| err(path, e))?;
        let (h, w, _) = patch.dim();
        let data: Vec<u8> = patch.iter().copied().collect();
        RgbImage::from_raw(w as u32, h as u32, data).ok_or_else(|| err(path, "patch buffer size mismatch"))
    }
}

#[cfg(not(feature = "pcam-h5"))]
mod imp {
    use super::*;

    fn unsupported(path: &Path) -> Error {
        Error::Invalid(format!(
            "{}: reading PCam HDF5 files needs a build with the pcam-h5 feature (cargo build --features pcam-h5; libhdf5-dev installed)",
            path.display()
        ))
    }

    pub fn patch_count(path: &Path) -> Result<usize> {
        Err(unsupported(path))
    }

    pub fn read_patch(path: &Path, _index: usize) -> Result<RgbImage> {
        Err(unsupported(path))
    }
}

pub use imp::{patch_count, read_patch};
