//! Probability maps over images larger than a patch (slide regions).
//!
//! Two kinds of model give a map:
//! - a patch classifier (output `[N, K]`): patches of the model's input side slide
//!   over the image at `stride`; each patch's probability fills the stride x stride
//!   cell at its centre;
//! - a local-map model (output `[N, K, h, w]`, from `edgemed export --local-map`,
//!   BagNet style): the image is cut into non-overlapping patches, each giving an
//!   h x w block of local probabilities (cells of input_side / h pixels). When the
//!   model masks a circle (`edgemed.circular_mask`), cells outside the inscribed
//!   circle of each block saw no features and are left out (NaN).
//!
//! The patch grid is centred in the image, so rotating the image by 90 degrees
//! rotates the grid onto itself when the margins are even. Patches are made band by
//! band (`tile` pixel rows at a time) and run in batches, so the tensors in flight
//! stay bounded whatever the image size; the image itself is decoded whole.
//! `--tta d4` averages over the 8 rotations and reflections of each patch, mapping
//! each block back before averaging.

use image::RgbImage;

use crate::backend::{self, Backend, BackendOptions};
use crate::error::{Error, Result};
use crate::formats::patch::{in_circle, Preprocess};
use crate::model::OnnxModel;
use crate::ndarray::{ArrayD, IxDyn};
use crate::tasks::classify::probabilities;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tta {
    None,
    /// The dihedral group of the square: 4 rotations, each with and without a flip.
    D4,
}

#[derive(Debug, Clone)]
pub struct HeatmapOptions {
    /// Classifiers: pixels between patch positions (default a third of the patch).
    /// Local-map models always tile without overlap.
    pub stride: Option<usize>,
    /// Pixel rows of the image turned into patches at a time.
    pub tile: usize,
    pub batch: usize,
    /// Batches run side by side (tract); ONNX Runtime uses them inside each run.
    pub threads: usize,
    pub tta: Tta,
    pub backend: BackendOptions,
}

impl Default for HeatmapOptions {
    fn default() -> Self {
        HeatmapOptions { stride: None, tile: 1024, batch: 1, threads: 1, tta: Tta::None, backend: BackendOptions::default() }
    }
}

/// A probability map on a grid of cells laid over the image.
#[derive(Debug, Clone)]
pub struct Heatmap {
    pub rows: usize,
    pub cols: usize,
    /// Row-major probabilities of the positive class; NaN where nothing was predicted.
    pub probs: Vec<f32>,
    /// Top-left pixel of cell (0, 0) and the cell side in pixels.
    pub origin: (f64, f64),
    pub cell: f64,
    pub patches: usize,
    pub local_map: bool,
}

impl Heatmap {
    /// Probability under image pixel (x, y), if a cell covers it.
    pub fn at_pixel(&self, x: u32, y: u32) -> Option<f32> {
        let c = ((x as f64 + 0.5 - self.origin.0) / self.cell).floor();
        let r = ((y as f64 + 0.5 - self.origin.1) / self.cell).floor();
        if c < 0.0 || r < 0.0 || c as usize >= self.cols || r as usize >= self.rows {
            return None;
        }
        Some(self.probs[r as usize * self.cols + c as usize]).filter(|p| p.is_finite())
    }

    /// Fraction of the predicted cells whose probability is at least `threshold`.
    pub fn area_above(&self, threshold: f32) -> f64 {
        let valid: Vec<f32> = self.probs.iter().copied().filter(|p| p.is_finite()).collect();
        valid.iter().filter(|p| **p >= threshold).count() as f64 / valid.len().max(1) as f64
    }

    /// (min, mean, max) over the predicted cells.
    pub fn summary(&self) -> (f32, f32, f32) {
        let valid: Vec<f32> = self.probs.iter().copied().filter(|p| p.is_finite()).collect();
        let mean = valid.iter().map(|p| *p as f64).sum::<f64>() / valid.len().max(1) as f64;
        (valid.iter().copied().fold(f32::INFINITY, f32::min), mean as f32, valid.iter().copied().fold(f32::NEG_INFINITY, f32::max))
    }
}

/// Applies the `t`-th element of D4 (t = 4 * flip + quarter turns) to a square
/// row-major grid of side `s` with `planes` planes: out = rot90^k(flip?(grid)).
fn d4(grid: &[f32], s: usize, planes: usize, t: usize) -> Vec<f32> {
    let (k, flip) = (t % 4, t >= 4);
    let mut out = vec![0f32; grid.len()];
    for p in 0..planes {
        for i in 0..s {
            for j in 0..s {
                // np.rot90 (counter-clockwise): out[i][j] = in[j][s - 1 - i]; applied k times.
                let (mut y, mut x) = (i, j);
                for _ in 0..k {
                    (y, x) = (x, s - 1 - y);
                }
                if flip {
                    x = s - 1 - x;
                }
                out[p * s * s + i * s + j] = grid[p * s * s + y * s + x];
            }
        }
    }
    out
}

/// The inverse element of `t` in D4.
fn d4_inverse(t: usize) -> usize {
    if t >= 4 {
        t // reflections are their own inverse
    } else {
        (4 - t) % 4
    }
}

struct Plan {
    backend: Box<dyn Backend>,
    pre: Preprocess,
    side: usize,
    /// h (= w) of a local map; 1 for classifiers.
    k: usize,
    positive: usize,
    mask_cells: bool,
}

pub fn heatmap(model: &OnnxModel, img: &RgbImage, opts: &HeatmapOptions) -> Result<Heatmap> {
    heatmap_with_progress(model, img, opts, |_, _| {})
}

/// [`heatmap`], telling `progress(done, total)` (patch positions) after each group of batches.
pub fn heatmap_with_progress(
    model: &OnnxModel,
    img: &RgbImage,
    opts: &HeatmapOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<Heatmap> {
    edgemed_onnx::ensure!(opts.batch >= 1 && opts.tile >= 1, Error::Invalid("batch and tile must be at least 1".into()));
    let (_, side, _) = model.image_input()?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    edgemed_onnx::ensure!(
        w >= side && h >= side,
        Error::Invalid(format!("the image is {w}x{h}, smaller than the model's {side}x{side} input"))
    );
    let backend = backend::create(model, &[opts.batch, 3, side, side], &opts.backend.clone().with_threads(opts.threads))?;
    // One probe batch tells the kind of model: [N, K] or [N, K, h, w].
    let probe = backend.run(ArrayD::zeros(IxDyn(&[opts.batch, 3, side, side])))?.into_iter().next();
    let shape = probe.map(|o| o.shape().to_vec()).ok_or_else(|| Error::Invalid("the model produced no output".into()))?;
    let k = match shape.as_slice() {
        [n, _] if *n == opts.batch => 1,
        [n, _, mh, mw] if *n == opts.batch && mh == mw => *mh,
        _ => {
            return Err(Error::Invalid(format!(
                "model output {shape:?}: expected [batch, classes] or a square local map [batch, classes, h, h]"
            )))
        }
    };
    let local_map = shape.len() == 4;
    let mut pre = Preprocess::for_model(&model.metadata, side as u32);
    // Patches are cut from the image at the network's own input size.
    pre.patch_size = side as u32;
    pre.crop_size = side as u32;
    let plan =
        Plan { backend, pre, side, k, positive: model.metadata.positive_class, mask_cells: local_map && model.metadata.circular_mask };
    let stride = if local_map {
        if let Some(s) = opts.stride.filter(|s| *s != side) {
            return Err(Error::Invalid(format!("a local-map model tiles the image without overlap: --stride must be {side} (got {s})")));
        }
        side
    } else {
        opts.stride.unwrap_or((side / 3).max(1))
    };
    edgemed_onnx::ensure!(stride >= 1, Error::Invalid("stride must be at least 1".into()));
    let (cols, rows) = ((w - side) / stride + 1, (h - side) / stride + 1);
    // Centre the grid: equal margins left/right and top/bottom (to a pixel).
    let (x0, y0) = ((w - side - (cols - 1) * stride) / 2, (h - side - (rows - 1) * stride) / 2);
    let positions: Vec<(usize, usize)> = (0..rows).flat_map(|r| (0..cols).map(move |c| (r, c))).collect();
    let (map_rows, map_cols) = (rows * k, cols * k);
    let mut probs = vec![f32::NAN; map_rows * map_cols];
    let transforms: Vec<usize> = match opts.tta {
        Tta::None => vec![0],
        Tta::D4 => (0..8).collect(),
    };
    // Band by band: the patches of the grid rows whose pixels start within `tile` rows.
    let band_rows = (opts.tile / stride).max(1);
    // Threads run whole batches side by side where the backend allows it (tract);
    // ONNX Runtime got them for inside each run (`with_threads`).
    let threads = if plan.backend.parallel_runs() { opts.threads.max(1) } else { 1 };
    let averaged = |chunk: &[(usize, usize)]| -> Result<Vec<f32>> {
        let mut sum = vec![0f32; chunk.len() * k * k];
        for &t in &transforms {
            let grids = run_batch(&plan, img, chunk, t, x0, y0, stride)?;
            for (acc, g) in sum.chunks_mut(k * k).zip(grids) {
                let back = d4(&g, k, 1, d4_inverse(t));
                acc.iter_mut().zip(back).for_each(|(a, b)| *a += b / transforms.len() as f32);
            }
        }
        Ok(sum)
    };
    let mut done = 0;
    for band in positions.chunks(band_rows * cols) {
        let chunks: Vec<&[(usize, usize)]> = band.chunks(opts.batch).collect();
        for group in chunks.chunks(threads) {
            let results = crate::parallel::map_side_by_side(group, |c| averaged(c));
            for (chunk, sum) in group.iter().zip(results) {
                for (&(r, c), block) in chunk.iter().zip(sum?.chunks(k * k)) {
                    for i in 0..k {
                        for j in 0..k {
                            if !plan.mask_cells || in_circle(k, i, j) {
                                probs[(r * k + i) * map_cols + c * k + j] = block[i * k + j];
                            }
                        }
                    }
                }
                done += chunk.len();
            }
            progress(done, positions.len());
        }
    }
    let (cell, origin) = if local_map {
        let cell = side as f64 / k as f64;
        (cell, (x0 as f64, y0 as f64))
    } else {
        // A classifier's value belongs to the stride x stride square at its patch's centre.
        let inset = (side as f64 - stride as f64) / 2.0;
        (stride as f64, (x0 as f64 + inset, y0 as f64 + inset))
    };
    Ok(Heatmap { rows: map_rows, cols: map_cols, probs, origin, cell, patches: positions.len() * transforms.len(), local_map })
}

/// Probabilities (k x k per patch) for a batch of grid positions, each patch transformed by `t`.
fn run_batch(
    plan: &Plan,
    img: &RgbImage,
    chunk: &[(usize, usize)],
    t: usize,
    x0: usize,
    y0: usize,
    stride: usize,
) -> Result<Vec<Vec<f32>>> {
    let (s, batch) = (plan.side, plan.backend.input_shape()[0]);
    let per = 3 * s * s;
    let mut input = vec![0f32; batch * per];
    let mut buf = vec![0f32; per];
    for (n, &(r, c)) in chunk.iter().enumerate() {
        let crop = image::imageops::crop_imm(img, (x0 + c * stride) as u32, (y0 + r * stride) as u32, s as u32, s as u32).to_image();
        plan.pre.tensorize(&crop, &mut buf);
        input[n * per..(n + 1) * per].copy_from_slice(&d4(&buf, s, 3, t));
    }
    let x = ArrayD::from_shape_vec(IxDyn(&[batch, 3, s, s]), input).map_err(|e| Error::Invalid(e.to_string()))?;
    let out = plan.backend.run(x)?.into_iter().next().ok_or_else(|| Error::Invalid("the model produced no output".into()))?;
    if out.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite { what: "model output".into() });
    }
    let classes = out.shape()[1];
    let k = plan.k;
    Ok((0..chunk.len())
        .map(|n| {
            (0..k * k)
                .map(|cell| {
                    let logits: Vec<f32> = (0..classes)
                        .map(|cl| if k == 1 { out[[n, cl].as_slice()] } else { out[[n, cl, cell / k, cell % k].as_slice()] })
                        .collect();
                    let p = probabilities(&logits);
                    p[plan.positive.min(p.len() - 1)]
                })
                .collect()
        })
        .collect())
}

/// A blue -> cyan -> green -> yellow -> red ramp for p in [0, 1].
pub fn colour(p: f32) -> [u8; 3] {
    const STOPS: [[f32; 3]; 5] = [[0., 0., 255.], [0., 255., 255.], [0., 255., 0.], [255., 255., 0.], [255., 0., 0.]];
    let x = p.clamp(0.0, 1.0) * 4.0;
    let i = (x.floor() as usize).min(3);
    let f = x - i as f32;
    let mut c = [0u8; 3];
    for (ch, v) in c.iter_mut().enumerate() {
        *v = (STOPS[i][ch] * (1.0 - f) + STOPS[i + 1][ch] * f).round() as u8;
    }
    c
}

/// The image with the map blended over it (`alpha` of the colour); pixels no cell covers are dimmed.
pub fn overlay(img: &RgbImage, map: &Heatmap, alpha: f32) -> RgbImage {
    let mut out = img.clone();
    for (x, y, px) in out.enumerate_pixels_mut() {
        match map.at_pixel(x, y) {
            Some(p) => {
                for (v, c) in px.0.iter_mut().zip(colour(p)) {
                    *v = (*v as f32 * (1.0 - alpha) + c as f32 * alpha).round() as u8;
                }
            }
            None => px.0.iter_mut().for_each(|v| *v /= 2),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn d4_elements_and_inverses() {
        let g: Vec<f32> = (0..9).map(|v| v as f32).collect();
        // One quarter turn counter-clockwise, as np.rot90: first row becomes the last column.
        assert_eq!(d4(&g, 3, 1, 1), vec![2., 5., 8., 1., 4., 7., 0., 3., 6.]);
        for t in 0..8 {
            assert_eq!(d4(&d4(&g, 3, 1, t), 3, 1, d4_inverse(t)), g, "element {t}");
        }
        let all: std::collections::HashSet<Vec<u32>> = (0..8).map(|t| d4(&g, 3, 1, t).iter().map(|v| *v as u32).collect()).collect();
        assert_eq!(all.len(), 8);
    }

    #[test]
    fn colour_ramp_ends() {
        assert_eq!(colour(0.0), [0, 0, 255]);
        assert_eq!(colour(1.0), [255, 0, 0]);
        assert_eq!(colour(0.5), [0, 255, 0]);
    }
}
