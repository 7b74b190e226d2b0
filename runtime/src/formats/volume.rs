//! 3-D volumes: NIfTI-1 in and out (the `nifti` crate), keeping the input's header,
//! and so its affine and orientation, for everything written from it; plus the
//! volume preprocessing of the seed papers (CT windowing, crop around the centre of
//! gravity, resampling to a model's grid).
//!
//! Voxels are held as `[X, Y, Z]` in C order, the order nibabel and MONAI give, so
//! tensors and fixtures line up with the Python side without transposes.

use std::path::{Path, PathBuf};

use nifti::{InMemNiftiObject, IntoNdArray, NiftiHeader, NiftiObject};

use super::provenance::Provenance;
use crate::budget;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::ndarray::{Array3, ArrayView3, Ix3};

/// A scalar volume and the header it came with.
#[derive(Debug, Clone)]
pub struct Volume {
    pub data: Array3<f32>,
    pub header: NiftiHeader,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadVolume { path: path.to_path_buf(), reason: reason.into() }
}

/// Bytes per voxel of a NIfTI datatype code, for the budget check (None: not a scalar we read).
fn voxel_bytes(datatype: i16) -> Option<u64> {
    // NIfTI-1 datatype codes (nifti1.h).
    match datatype {
        2 | 256 => Some(1),      // uint8, int8
        4 | 512 => Some(2),      // int16, uint16
        8 | 768 | 16 => Some(4), // int32, uint32, float32
        1024 | 1280 | 64 => Some(8),
        _ => None,
    }
}

/// The three spatial sizes of a header, refusing anything that is not a 3-D scalar
/// volume (trailing dimensions of size 1 are accepted, as nibabel squeezes them).
pub fn spatial_dims(header: &NiftiHeader, path: &Path) -> Result<[usize; 3]> {
    let rank = header.dim[0] as usize;
    if !(1..=7).contains(&rank) {
        return Err(bad(path, format!("header dim[0] = {} (must be 1 to 7)", header.dim[0])));
    }
    let dims: Vec<usize> = header.dim[1..=rank].iter().map(|&d| d as usize).collect();
    if dims.contains(&0) {
        return Err(bad(path, format!("header has a zero-sized dimension: {dims:?}")));
    }
    if rank < 3 {
        return Err(bad(path, format!("is {rank}-D ({dims:?}); a 3-D volume is expected")));
    }
    if dims[3..].iter().any(|&d| d > 1) {
        return Err(bad(path, format!("is {rank}-D ({dims:?}); a 3-D volume is expected (split the series into 3-D files first)")));
    }
    Ok([dims[0], dims[1], dims[2]])
}

/// The file as a byte stream, gunzipped when its content is gzip (whatever its name says:
/// `.nii` files that are really compressed are common).
fn open_maybe_gz(path: &Path) -> Result<Box<dyn std::io::Read>> {
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).map_err(|e| Error::io(path, e))?;
    f.rewind().map_err(|e| Error::io(path, e))?;
    let f = std::io::BufReader::new(f);
    Ok(if n == 2 && magic == [0x1f, 0x8b] { Box::new(std::io::BufReader::new(flate2::read::MultiGzDecoder::new(f))) } else { Box::new(f) })
}

/// A NIfTI error as a reason a person reads: the crate prints I/O errors in their debug
/// form (`Io(Error { kind: UnexpectedEof, .. })`).
fn reason(e: &nifti::NiftiError) -> String {
    match e {
        nifti::NiftiError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => "the file ends too early (truncated)".into(),
        nifti::NiftiError::Io(io) => io.to_string(),
        e => e.to_string(),
    }
}

/// The NIfTI extension code edgemed's provenance record is written under:
/// NIFTI_ECODE_COMMENT (nifti1.h), plain text, here JSON.
const PROVENANCE_ECODE: i32 = 6;

/// The record of what made a volume edgemed wrote (None: not written by edgemed).
pub fn read_provenance(path: &Path) -> Result<Option<Provenance>> {
    let obj = InMemNiftiObject::from_reader(open_maybe_gz(path)?).map_err(|e| bad(path, format!("cannot read it: {}", reason(&e))))?;
    Ok(obj
        .extensions()
        .iter()
        .filter(|e| e.code() == PROVENANCE_ECODE)
        .find_map(|e| serde_json::from_slice::<Provenance>(e.data().split(|&b| b == 0).next().unwrap_or_default()).ok()))
}

impl Volume {
    /// Reads a `.nii` or `.nii.gz` file. The header is checked first and the voxel
    /// count against `memory_budget` (bytes, 0 = unlimited) before anything the size of
    /// the volume is allocated. NaN or infinite voxels are refused: a model would turn
    /// them into NaN everywhere their window reaches.
    pub fn read(path: &Path, memory_budget: u64) -> Result<Volume> {
        if !path.exists() {
            return Err(Error::NotFound { path: path.to_path_buf() });
        }
        // By content, not by name: a gzipped file named .nii is read as well.
        let header =
            NiftiHeader::from_reader(open_maybe_gz(path)?).map_err(|e| bad(path, format!("not a NIfTI-1 file: {}", reason(&e))))?;
        let [x, y, z] = spatial_dims(&header, path)?;
        let per_voxel = voxel_bytes(header.datatype)
            .ok_or_else(|| bad(path, format!("voxel type {} is not a scalar integer or float type", header.datatype)))?;
        // The nifti crate sizes the data from bitpix and reads it by datatype; a header where
        // they disagree made it panic (found by fuzzing, kept in fuzz/regressions/nifti_volume).
        if header.bitpix as i64 != 8 * per_voxel as i64 {
            return Err(bad(
                path,
                format!("header bitpix {} disagrees with its datatype {} ({} bits)", header.bitpix, header.datatype, 8 * per_voxel),
            ));
        }
        let voxels = (x as u64) * (y as u64) * (z as u64);
        // The file's voxels, their float32 copy, and the working copy a pipeline makes.
        budget::check(|| format!("{}: volume {x}x{y}x{z}", path.display()), voxels * (per_voxel + 8), memory_budget)?;
        let obj = InMemNiftiObject::from_reader(open_maybe_gz(path)?)
            .map_err(|e| bad(path, format!("cannot read the voxels: {}", reason(&e))))?;
        let arr = obj.into_volume().into_ndarray::<f32>().map_err(|e| bad(path, format!("cannot read the voxels: {}", reason(&e))))?;
        // into_ndarray gives the file's Fortran order; make it C order once, then drop
        // trailing dimensions of size 1.
        let arr = arr.as_standard_layout().into_owned();
        let arr = arr.into_shape_with_order(crate::ndarray::IxDyn(&[x, y, z])).map_err(|e| bad(path, e.to_string()))?;
        let data = arr.into_dimensionality::<Ix3>().map_err(|e| bad(path, e.to_string()))?;
        let non_finite = data.iter().filter(|v| !v.is_finite()).count();
        if non_finite > 0 {
            return Err(Error::NonFinite { what: format!("{}: {non_finite} voxels", path.display()) });
        }
        Ok(Volume { data, header })
    }

    pub fn shape(&self) -> [usize; 3] {
        let s = self.data.shape();
        [s[0], s[1], s[2]]
    }

    /// Voxel size in the header's units (pixdim 1..3).
    pub fn spacing(&self) -> [f32; 3] {
        [self.header.pixdim[1], self.header.pixdim[2], self.header.pixdim[3]]
    }

    /// Voxel index -> world (scanner) coordinates: the sform when its code is set, else
    /// the qform, else the scaling by pixdim NIfTI prescribes for code 0.
    pub fn affine(&self) -> [[f64; 4]; 4] {
        affine(&self.header)
    }

    /// Writes a label map (uint8) with this volume's header and the record of what made it.
    pub fn write_labels_like(&self, path: &Path, labels: ArrayView3<u8>, made_by: Option<&Provenance>) -> Result<()> {
        write_nifti(path, &self.header, labels, made_by)
    }
}

pub fn affine(h: &NiftiHeader) -> [[f64; 4]; 4] {
    let row = |r: [f32; 4]| [r[0] as f64, r[1] as f64, r[2] as f64, r[3] as f64];
    if h.sform_code > 0 {
        return [row(h.srow_x), row(h.srow_y), row(h.srow_z), [0.0, 0.0, 0.0, 1.0]];
    }
    let p = |i: usize| h.pixdim[i] as f64;
    if h.qform_code > 0 {
        // NIfTI-1 quaternion form (nifti1.h, method 2).
        let (b, c, d) = (h.quatern_b as f64, h.quatern_c as f64, h.quatern_d as f64);
        let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
        let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        let r = [
            [a * a + b * b - c * c - d * d, 2.0 * (b * c - a * d), 2.0 * (b * d + a * c)],
            [2.0 * (b * c + a * d), a * a + c * c - b * b - d * d, 2.0 * (c * d - a * b)],
            [2.0 * (b * d - a * c), 2.0 * (c * d + a * b), a * a + d * d - c * c - b * b],
        ];
        let s = [p(1), p(2), p(3) * qfac];
        let o = [h.quatern_x as f64, h.quatern_y as f64, h.quatern_z as f64];
        let mut m = [[0.0; 4]; 4];
        for i in 0..3 {
            for j in 0..3 {
                m[i][j] = r[i][j] * s[j];
            }
            m[i][3] = o[i];
        }
        m[3][3] = 1.0;
        return m;
    }
    [[p(1), 0.0, 0.0, 0.0], [0.0, p(2), 0.0, 0.0], [0.0, 0.0, p(3), 0.0], [0.0, 0.0, 0.0, 1.0]]
}

/// Whether `path` names a NIfTI file (.nii or .nii.gz), the only kind volumes are written as.
pub fn is_nifti_name(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    name.ends_with(".nii") || name.ends_with(".nii.gz")
}

/// Writes `data` as NIfTI with `reference`'s header fields (affine, units) through a
/// temporary file beside `path` and a rename, so a crash never leaves half a volume
/// under the final name. `made_by` goes into the description (short) and, whole, into
/// a comment extension as JSON ([`read_provenance`]).
pub fn write_nifti<A>(path: &Path, reference: &NiftiHeader, data: ArrayView3<A>, made_by: Option<&Provenance>) -> Result<()>
where
    A: nifti::DataElement + bytemuck::Pod,
{
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if !is_nifti_name(path) {
        return Err(Error::Invalid(format!("{}: output volumes are written as .nii or .nii.gz", path.display())));
    }
    // The writer picks gzip from the suffix and rewrites everything after the stem's
    // first dot, so the temporary name has one dot before the same suffix.
    static SERIAL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let suffix = if name.ends_with(".nii.gz") { "nii.gz" } else { "nii" };
    let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp: PathBuf = fsutil::folder_of(path).join(format!(".edgemed-partial-{}-{serial}.{suffix}", std::process::id()));
    let mut header = reference.clone();
    header.cal_min = 0.0;
    header.cal_max = 0.0;
    let mut extensions = Vec::new();
    if let Some(m) = made_by {
        // The input's description would be wrong here; the record's short form (80 bytes at most).
        let mut descrip = m.short().into_bytes();
        descrip.truncate(79);
        descrip.resize(80, 0);
        header.descrip = descrip;
        let json = serde_json::to_string(m).map_err(|e| Error::Invalid(e.to_string()))?;
        extensions.push(nifti::extension::Extension::from_str(PROVENANCE_ECODE, &json));
    }
    let extensions = nifti::extension::ExtensionSequence::new(
        nifti::extension::Extender::from(if extensions.is_empty() { [0u8; 4] } else { [1, 0, 0, 0] }),
        extensions,
    );
    fsutil::replace_via(path, &tmp, |tmp| {
        nifti::writer::WriterOptions::new(tmp)
            .reference_header(&header)
            .with_extensions(extensions)
            .write_nifti(&data)
            .map_err(|e| std::io::Error::other(e.to_string()))
    })
}

/// The header of a new grid over the same scanner space: output voxel o's centre is
/// input voxel index `first + o * step` (per axis), the grid has `dims` voxels. The
/// sform's columns scale by `step` and its origin moves; the qform keeps its rotation
/// and moves its origin the same way; pixdim scales.
pub fn regridded_header(h: &NiftiHeader, first: [f64; 3], step: [f64; 3], dims: [usize; 3]) -> NiftiHeader {
    let mut out = h.clone();
    for row in [&mut out.srow_x, &mut out.srow_y, &mut out.srow_z] {
        let origin = row[3] as f64 + (0..3).map(|d| first[d] * row[d] as f64).sum::<f64>();
        for d in 0..3 {
            row[d] = (row[d] as f64 * step[d]) as f32;
        }
        row[3] = origin as f32;
    }
    let q = affine(&NiftiHeader { sform_code: 0, ..h.clone() });
    let moved = |i: usize| (q[i][3] + (0..3).map(|d| first[d] * q[i][d]).sum::<f64>()) as f32;
    (out.quatern_x, out.quatern_y, out.quatern_z) = (moved(0), moved(1), moved(2));
    for d in 0..3 {
        out.pixdim[d + 1] = (h.pixdim[d + 1] as f64 * step[d]) as f32;
        out.dim[d + 1] = dims[d] as u16;
    }
    out.dim[0] = out.dim[0].max(3);
    out
}

/// CT windowing of the aging paper: clip(HU + 80, 0, 255) (a brain window from -80 to 175 HU).
pub fn ct_window(v: &mut Array3<f32>) {
    v.mapv_inplace(|hu| (hu + 80.0).clamp(0.0, 255.0));
}

/// Centre of gravity (intensity-weighted, voxel indices) of the positive part of `v`;
/// the geometric centre when nothing is positive.
pub fn centre_of_gravity(v: ArrayView3<f32>) -> [f64; 3] {
    let mut sum = [0f64; 3];
    let mut total = 0f64;
    for ((i, j, k), &w) in v.indexed_iter() {
        if w > 0.0 {
            let w = w as f64;
            sum[0] += w * i as f64;
            sum[1] += w * j as f64;
            sum[2] += w * k as f64;
            total += w;
        }
    }
    let s = v.shape();
    if total == 0.0 {
        return [(s[0] as f64 - 1.0) / 2.0, (s[1] as f64 - 1.0) / 2.0, (s[2] as f64 - 1.0) / 2.0];
    }
    [sum[0] / total, sum[1] / total, sum[2] / total]
}

/// A `size` crop centred (rounding down) on `centre`, padded with `fill` where it
/// leaves the volume. Returns the crop and the volume index of its first voxel.
pub fn crop_around(v: ArrayView3<f32>, centre: [f64; 3], size: [usize; 3], fill: f32) -> (Array3<f32>, [i64; 3]) {
    let start: Vec<i64> = (0..3).map(|d| (centre[d] - (size[d] as f64 - 1.0) / 2.0).round() as i64).collect();
    let s = v.shape();
    let out = Array3::from_shape_fn((size[0], size[1], size[2]), |(i, j, k)| {
        let (a, b, c) = (start[0] + i as i64, start[1] + j as i64, start[2] + k as i64);
        if a < 0 || b < 0 || c < 0 || a >= s[0] as i64 || b >= s[1] as i64 || c >= s[2] as i64 {
            fill
        } else {
            v[[a as usize, b as usize, c as usize]]
        }
    });
    (out, [start[0], start[1], start[2]])
}

/// Trilinear resampling to `shape`, voxel centres aligned as with
/// `torch.nn.functional.interpolate(mode="trilinear", align_corners=False)`.
pub fn resample_trilinear(v: ArrayView3<f32>, shape: [usize; 3]) -> Array3<f32> {
    let src = v.shape().to_vec();
    // For each axis: lower index, upper index, weight of the upper one, per output index.
    let axis = |d: usize| -> Vec<(usize, usize, f32)> {
        let scale = src[d] as f64 / shape[d] as f64;
        (0..shape[d])
            .map(|o| {
                let x = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
                let lo = (x.floor() as usize).min(src[d] - 1);
                let hi = (lo + 1).min(src[d] - 1);
                (lo, hi, (x - lo as f64) as f32)
            })
            .collect()
    };
    let (ax, ay, az) = (axis(0), axis(1), axis(2));
    Array3::from_shape_fn((shape[0], shape[1], shape[2]), |(i, j, k)| {
        let (x0, x1, wx) = ax[i];
        let (y0, y1, wy) = ay[j];
        let (z0, z1, wz) = az[k];
        let lerp = |a: f32, b: f32, w: f32| a + (b - a) * w;
        let plane = |x: usize| lerp(lerp(v[[x, y0, z0]], v[[x, y0, z1]], wz), lerp(v[[x, y1, z0]], v[[x, y1, z1]], wz), wy);
        lerp(plane(x0), plane(x1), wx)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trilinear_identity_and_constant() {
        let v = Array3::from_shape_fn((4, 5, 6), |(i, j, k)| (i * 100 + j * 10 + k) as f32);
        assert_eq!(resample_trilinear(v.view(), [4, 5, 6]), v);
        let c = Array3::from_elem((3, 3, 3), 2.5f32);
        assert!(resample_trilinear(c.view(), [7, 2, 5]).iter().all(|&x| (x - 2.5).abs() < 1e-6));
    }

    #[test]
    fn crop_pads_outside_and_centres() {
        let v = Array3::from_shape_fn((5, 5, 5), |(i, j, k)| (i + j + k) as f32);
        let (c, start) = crop_around(v.view(), [2.0, 2.0, 2.0], [3, 3, 3], -1.0);
        assert_eq!(start, [1, 1, 1]);
        assert_eq!(c[[0, 0, 0]], 3.0);
        let (c, start) = crop_around(v.view(), [0.0, 0.0, 0.0], [3, 3, 3], -1.0);
        assert_eq!(start, [-1, -1, -1]);
        assert_eq!(c[[0, 0, 0]], -1.0);
        assert_eq!(c[[1, 1, 1]], 0.0);
    }

    #[test]
    fn centre_of_gravity_of_a_point() {
        let mut v = Array3::zeros((4, 6, 8));
        v[[1, 2, 3]] = 5.0;
        assert_eq!(centre_of_gravity(v.view()), [1.0, 2.0, 3.0]);
    }
}
