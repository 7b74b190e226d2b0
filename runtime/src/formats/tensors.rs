//! Tensors as files, for `edgemed-run run`: model inputs read from `.npy` or raw
//! little-endian float32, outputs written as `.npy`, and outputs compared with a
//! reference written elsewhere (another machine, another backend), so a board can
//! prove it computes what the host computes.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::model::{Dim, OnnxModel};
use crate::ndarray::{ArrayD, IxDyn};

/// Reads a model input: a float32 `.npy` (its shape is used), or any other file as raw
/// little-endian float32 with the shape the model declares for its first input.
pub fn read_input(path: &Path, model: &OnnxModel) -> Result<ArrayD<f32>> {
    read_input_at(path, model, 0)
}

/// [`read_input`] for the model's input number `index` (graph order).
pub fn read_input_at(path: &Path, model: &OnnxModel, index: usize) -> Result<ArrayD<f32>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let array = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy")) {
        parse_npy(path, &bytes)?
    } else {
        edgemed_onnx::ensure!(
            bytes.len() % 4 == 0,
            Error::Invalid(format!("{}: {} bytes is not a whole number of float32 values", path.display(), bytes.len()))
        );
        let shape =
            raw_input_shape(model, index, bytes.len() / 4).map_err(|reason| Error::Invalid(format!("{}: {reason}", path.display())))?;
        let values = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        ArrayD::from_shape_vec(IxDyn(&shape), values).expect("length checked above")
    };
    edgemed_onnx::ensure!(array.iter().all(|v| v.is_finite()), Error::NonFinite { what: path.display().to_string() });
    // One check before any backend: each declared size must match (a .npy names its own).
    if let Some(dims) = model.inputs.get(index).and_then(|i| i.dims.as_ref()) {
        let fits = dims.len() == array.ndim() && dims.iter().zip(array.shape()).all(|(d, &n)| !matches!(d, Dim::Fixed(f) if *f != n));
        if !fits {
            let shown: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
            return Err(Error::Invalid(format!(
                "{}: shape {:?} does not fit the model's input [{}]",
                path.display(),
                array.shape(),
                shown.join(", ")
            )));
        }
    }
    Ok(array)
}

/// The shape of a raw input of `values` floats: the model's declared input shape, with
/// one symbolic dimension (the batch) taken from the number of values.
fn raw_input_shape(model: &OnnxModel, index: usize, values: usize) -> std::result::Result<Vec<usize>, String> {
    let input = model.inputs.get(index).ok_or("the model has no such input")?;
    let dims = input.dims.as_ref().ok_or_else(|| format!("input {} declares no shape; give the input as .npy", input.name))?;
    let fixed: usize = dims.iter().map(|d| if let Dim::Fixed(n) = d { *n } else { 1 }).product();
    let symbolic = dims.iter().filter(|d| matches!(d, Dim::Symbolic(_))).count();
    let mismatch = || {
        let shown: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
        format!("{values} float32 values do not fill the model's input [{}] (give the input as .npy to name its shape)", shown.join(", "))
    };
    match symbolic {
        0 if values == fixed => {}
        1 if fixed > 0 && values.is_multiple_of(fixed) && values > 0 => {}
        0 | 1 => return Err(mismatch()),
        _ => return Err(format!("input {} has {symbolic} symbolic dimensions; give the input as .npy", input.name)),
    }
    Ok(dims.iter().map(|d| if let Dim::Fixed(n) = d { *n } else { values / fixed }).collect())
}

/// The file an output is written to or compared with: its ONNX name, made file-safe.
pub fn output_file(dir: &Path, output_name: &str) -> PathBuf {
    let safe: String = output_name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    dir.join(format!("{safe}.npy"))
}

pub fn write_npy(path: &Path, array: &ArrayD<f32>) -> Result<()> {
    let mut bytes = Vec::new();
    ndarray_npy::WriteNpyExt::write_npy(array, &mut bytes).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    fsutil::write_atomic(path, &bytes)
}

pub fn read_npy(path: &Path) -> Result<ArrayD<f32>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_npy(path, &bytes)
}

/// A uint8 .npy array (label maps).
pub fn read_npy_u8(path: &Path) -> Result<ArrayD<u8>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    <ArrayD<u8> as ndarray_npy::ReadNpyExt>::read_npy(&bytes[..])
        .map_err(|e| Error::Invalid(format!("{}: not a uint8 .npy array: {e}", path.display())))
}

fn parse_npy(path: &Path, bytes: &[u8]) -> Result<ArrayD<f32>> {
    <ArrayD<f32> as ndarray_npy::ReadNpyExt>::read_npy(bytes)
        .map_err(|e| Error::Invalid(format!("{}: not a float32 .npy array: {e}", path.display())))
}

/// How far an output is from its reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub elements: usize,
    /// Elements whose bits differ (NaN equals NaN only bit for bit).
    pub differing: usize,
    pub max_abs_diff: f64,
    /// Flat index of the largest difference.
    pub worst: usize,
}

impl Comparison {
    /// Within `tolerance` in absolute value everywhere; `0` asks for identical bits.
    pub fn within(&self, tolerance: f64) -> bool {
        if tolerance == 0.0 {
            self.differing == 0
        } else {
            self.max_abs_diff <= tolerance
        }
    }
}

pub fn compare(expected: &ArrayD<f32>, actual: &ArrayD<f32>) -> Result<Comparison> {
    edgemed_onnx::ensure!(
        expected.shape() == actual.shape(),
        Error::WrongShape { got: actual.shape().to_vec(), expected: expected.shape().to_vec() }
    );
    let mut c = Comparison { elements: expected.len(), differing: 0, max_abs_diff: 0.0, worst: 0 };
    for (i, (e, a)) in expected.iter().zip(actual.iter()).enumerate() {
        if e.to_bits() == a.to_bits() {
            continue;
        }
        c.differing += 1;
        // A NaN on one side only is as wrong as it gets.
        let d = if e.is_nan() || a.is_nan() { f64::INFINITY } else { (*e as f64 - *a as f64).abs() };
        if d > c.max_abs_diff || c.differing == 1 {
            c.max_abs_diff = d;
            c.worst = i;
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_bits_and_tolerances() {
        let a = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![1.0f32, 2.0, f32::NAN, 4.0]).unwrap();
        let same = compare(&a, &a.clone()).unwrap();
        assert_eq!(same.differing, 0);
        assert!(same.within(0.0));

        let mut b = a.clone();
        b[[0, 1]] = 2.0 + 1e-6;
        let close = compare(&a, &b).unwrap();
        assert_eq!((close.differing, close.worst), (1, 1));
        assert!(!close.within(0.0));
        assert!(close.within(1e-5));
        assert!(!close.within(1e-7));

        let mut n = a.clone();
        n[[1, 1]] = f32::NAN;
        let nan = compare(&a, &n).unwrap();
        assert!(nan.max_abs_diff.is_infinite() && !nan.within(1.0));

        let other = ArrayD::<f32>::zeros(IxDyn(&[4]));
        assert!(matches!(compare(&a, &other), Err(Error::WrongShape { .. })));
    }

    #[test]
    fn output_names_become_safe_file_names() {
        assert_eq!(output_file(Path::new("d"), "logits"), Path::new("d/logits.npy"));
        assert_eq!(output_file(Path::new("d"), "/head/Gemm:0"), Path::new("d/_head_Gemm_0.npy"));
    }
}
