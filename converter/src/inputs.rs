//! Model inputs for calibration and verification: patch images through the
//! runtime's own preprocessing (so ranges match deployment), or seeded random
//! tensors over the model's normalised input range.

use std::path::Path;

use anyhow::{Context, Result};
use edgemed_runtime::bench::UniformNoise;
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::ndarray::{ArrayD, IxDyn};
use edgemed_runtime::patch::{circular_mask, expand_inputs, Preprocess};

/// Every image under `dir`, one [1, 3, S, S] tensor each (unreadable files are skipped with a warning).
pub fn from_images(model: &OnnxModel, dir: &Path, limit: usize) -> Result<Vec<ArrayD<f32>>> {
    let (_, side, _) = model.image_input()?;
    let pre = Preprocess { resize: true, ..Preprocess::for_model(&model.metadata, side as u32) };
    let sources = expand_inputs(&[dir.to_path_buf()]).with_context(|| format!("reading inputs from {}", dir.display()))?;
    let mut out = Vec::new();
    for s in sources.iter().take(limit) {
        let mut buf = vec![0f32; 3 * side * side];
        match pre.load_into(s, &mut buf) {
            Ok(()) => out.push(ArrayD::from_shape_vec(IxDyn(&[1, 3, side, side]), buf).expect("sized")),
            Err(e) => log::warn!("skipping {s}: {e}"),
        }
    }
    anyhow::ensure!(!out.is_empty(), "{}: no usable images", dir.display());
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
