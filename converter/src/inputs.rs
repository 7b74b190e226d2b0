//! Model inputs for calibration and verification: patch images through the
//! runtime's own preprocessing (so ranges match deployment), or seeded random
//! tensors over the model's normalised input range.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use edgemed_runtime::bench::UniformNoise;
use edgemed_runtime::formats::patch::{circular_mask, expand_inputs, Preprocess};
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::ndarray::{ArrayD, IxDyn};

/// Calibration inputs from `path`: a `.npy` tensor (its first axis is the batch),
/// a directory of `.npy` tensors, or a directory of patch images. Tensors must have
/// the model's input shape after the batch axis (latents for a GLOW decoder, volumes...).
pub fn calibration(model: &OnnxModel, path: &Path, limit: usize) -> Result<Vec<ArrayD<f32>>> {
    let npys: Vec<std::path::PathBuf> = if path.is_file() && path.extension().is_some_and(|e| e == "npy") {
        vec![path.to_path_buf()]
    } else if path.is_dir() {
        let mut v: Vec<_> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "npy"))
            .collect();
        v.sort();
        v
    } else {
        Vec::new()
    };
    if npys.is_empty() {
        return from_images(model, path, limit);
    }
    let dims = model.inputs[0].dims.as_ref().context("the model declares no input shape")?;
    let mut out = Vec::new();
    for p in npys {
        let t = edgemed_runtime::formats::tensors::read_npy(&p)?;
        let fits = t.ndim() == dims.len()
            && dims.iter().zip(t.shape()).skip(1).all(|(d, &n)| match d {
                edgemed_runtime::model::Dim::Fixed(f) => *f == n,
                edgemed_runtime::model::Dim::Symbolic(_) => true,
            });
        anyhow::ensure!(fits, "{}: shape {:?} does not fit the model input {dims:?} (first axis: batch)", p.display(), t.shape());
        // NaN or infinite inputs would give NaN ranges, and a model quantized on nothing.
        if let Some(bad) = t.iter().position(|v| !v.is_finite()) {
            anyhow::bail!(
                "{}: value {bad} is {} (calibration inputs must be finite numbers)",
                p.display(),
                t.iter().nth(bad).copied().unwrap_or(f32::NAN)
            );
        }
        for item in t.outer_iter() {
            out.push(item.insert_axis(edgemed_runtime::ndarray::Axis(0)).to_owned());
            if out.len() == limit {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

/// Every image under `dir`, one [1, 3, S, S] tensor each (unreadable files are skipped with a warning).
pub fn from_images(model: &OnnxModel, dir: &Path, limit: usize) -> Result<Vec<ArrayD<f32>>> {
    from_image_paths(model, &[dir.to_path_buf()], limit)
}

/// Every image the paths name (files, folders, glob patterns), one [1, 3, S, S] tensor
/// each (unreadable files are skipped with a warning).
pub fn from_image_paths(model: &OnnxModel, paths: &[PathBuf], limit: usize) -> Result<Vec<ArrayD<f32>>> {
    let (_, side, _) = model.image_input()?;
    let pre = Preprocess { resize: true, ..Preprocess::for_model(&model.metadata, side as u32) };
    let named = paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    let sources = expand_inputs(paths).with_context(|| format!("reading inputs from {named}"))?;
    let mut out = Vec::new();
    for s in sources.iter().take(limit) {
        let mut buf = vec![0f32; 3 * side * side];
        match pre.load_into(s, &mut buf) {
            Ok(()) => out.push(ArrayD::from_shape_vec(IxDyn(&[1, 3, side, side]), buf).expect("sized")),
            Err(e) => log::warn!("skipping {s}: {e}"),
        }
    }
    anyhow::ensure!(!out.is_empty(), "{named}: no usable images");
    Ok(out)
}

/// `n` seeded uniform inputs over the normalised pixel range, masked when the model asks.
pub fn random(model: &OnnxModel, n: usize, seed: u64) -> Result<Vec<ArrayD<f32>>> {
    let (_, side, _) = model.image_input()?;
    let md = &model.metadata;
    let mask = md.circular_mask.then(|| circular_mask(side));
    let mut noise = UniformNoise::from_seed(seed);
    let mut next = move || noise.next_unit();
    Ok((0..n)
        .map(|_| {
            ArrayD::from_shape_fn(IxDyn(&[1, 3, side, side]), |i| {
                let inside = mask.as_ref().is_none_or(|m| m[i[2] * side + i[3]]);
                if inside {
                    (next() - md.mean[i[1]]) / md.std[i[1]]
                } else {
                    0.0
                }
            })
        })
        .collect())
}
