//! PCam's HDF5 files (`camelyonpatch_level_2_split_{train,valid,test}_x.h5`):
//! dataset `x`, uint8 [N, 96, 96, 3]. Read with the pure-Rust decoder `hdf5-reader`
//! (feature `pcam-h5`, on by default), so device builds read them too and no C library
//! is involved: libhdf5 1.10 segfaulted inside `H5Dread` on a corrupted chunk found by
//! fuzzing (kept in fuzz/regressions/pcam_h5), below any check we could make first.

use std::path::Path;

use image::RgbImage;

use crate::error::{Error, Result};

#[cfg(feature = "pcam-h5")]
mod imp {
    use hdf5_reader::{Hdf5File, SliceInfo, SliceInfoElem};

    use super::*;

    fn err(path: &Path, e: impl std::fmt::Display) -> Error {
        Error::BadImage { path: path.to_path_buf(), reason: format!("not a PCam HDF5 file: {e}") }
    }

    fn dataset(path: &Path) -> Result<(hdf5_reader::Dataset, usize)> {
        if !path.exists() {
            return Err(Error::NotFound { path: path.to_path_buf() });
        }
        let file = Hdf5File::open(path).map_err(|e| err(path, e))?;
        let ds = file.dataset("x").map_err(|e| err(path, format!("no dataset \"x\" ({e})")))?;
        let shape = ds.shape();
        if shape.len() != 4 || shape[3] != 3 {
            return Err(err(path, format!("dataset \"x\" has shape {shape:?}, expected [N, H, W, 3]")));
        }
        // Reading one patch allocates H x W x 3 bytes: the declared size is checked first,
        // as image headers are (found by fuzzing: a forged shape exhausted memory).
        let side = crate::formats::MAX_IMAGE_SIDE as u64;
        if shape[1] > side || shape[2] > side {
            return Err(err(path, format!("patches of {}x{} declared, more than {side} pixels a side", shape[1], shape[2])));
        }
        if !matches!(ds.dtype(), hdf5_reader::Datatype::FixedPoint { size: 1, signed: false, .. }) {
            return Err(err(path, format!("dataset \"x\" is {:?}, expected uint8", ds.dtype())));
        }
        let n = usize::try_from(shape[0]).map_err(|_| err(path, format!("{} patches declared", shape[0])))?;
        Ok((ds, n))
    }

    pub fn patch_count(path: &Path) -> Result<usize> {
        Ok(dataset(path)?.1)
    }

    pub fn read_patch(path: &Path, index: usize) -> Result<RgbImage> {
        let (ds, n) = dataset(path)?;
        edgemed_onnx::ensure!(index < n, err(path, format!("patch {index} out of range ({n} patches)")));
        let all = SliceInfoElem::Slice { start: 0, end: u64::MAX, step: 1 };
        let selection = SliceInfo { selections: vec![SliceInfoElem::Index(index as u64), all.clone(), all.clone(), all] };
        let patch = ds.read_slice::<u8>(&selection).map_err(|e| err(path, format!("patch {index}: {e}")))?;
        let (h, w) = match patch.shape() {
            &[h, w, 3] => (h, w),
            s => return Err(err(path, format!("patch {index} read as {s:?}"))),
        };
        let data: Vec<u8> = patch.iter().copied().collect();
        RgbImage::from_raw(w as u32, h as u32, data).ok_or_else(|| err(path, "patch buffer size mismatch"))
    }
}

#[cfg(not(feature = "pcam-h5"))]
mod imp {
    use super::*;

    fn unsupported(path: &Path) -> Error {
        Error::Invalid(format!("{}: reading PCam HDF5 files needs a build with the pcam-h5 feature (on by default)", path.display()))
    }

    pub fn patch_count(path: &Path) -> Result<usize> {
        Err(unsupported(path))
    }

    pub fn read_patch(path: &Path, _index: usize) -> Result<RgbImage> {
        Err(unsupported(path))
    }
}

pub use imp::{patch_count, read_patch};
