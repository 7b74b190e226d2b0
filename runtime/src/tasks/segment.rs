//! Volume segmentation (the 3-D U-Net paper's inference): a segmentation network
//! run by sliding window over a volume ([`crate::sliding_window`]), argmax over its
//! class channels slab by slab (so only a slab of logits is ever held), the largest
//! connected component kept per class as MONAI's `KeepLargestConnectedComponent`
//! does, and Dice against a label map.

use std::collections::VecDeque;

use crate::backend::{self, BackendOptions};
use crate::error::{Error, Result};
use crate::formats::volume::Volume;
use crate::model::{Dim, OnnxModel};
use crate::ndarray::{Array3, ArrayView3, ArrayViewD, Axis};
use crate::tasks::sliding_window::SlidingWindow;

pub struct SegmentOptions {
    pub window: SlidingWindow,
    /// Keep only the largest 26-connected component of each class (MONAI's default connectivity).
    pub largest_component: bool,
    pub backend: BackendOptions,
    /// Threads for the whole volume: with a backend that can run side by side (the
    /// INT8 engine, tract) that many windows at once, each on one thread (a volume of
    /// one window splits that window's ops instead); ONNX Runtime's ops split over them.
    pub threads: usize,
}

#[derive(Debug)]
pub struct Segmentation {
    pub labels: Array3<u8>,
    /// Output channels of the model, background (class 0) included.
    pub classes: usize,
    pub windows: usize,
    /// Voxels per class after post-processing.
    pub voxels: Vec<usize>,
    /// Voxels removed by the largest-component filter.
    pub removed: usize,
}

/// The model's window: its spatial input dims when they are fixed, else `roi`.
/// A fixed dim that disagrees with `roi` is an error naming both.
pub fn model_window(model: &OnnxModel, roi: Option<&[usize]>) -> Result<Vec<usize>> {
    let dims = model.spatial_input()?;
    if let Dim::Fixed(c) = dims[1] {
        if c != 1 {
            return Err(Error::NotAnImageModel { path: model.path.clone(), reason: format!("input has {c} channels; one volume gives 1") });
        }
    }
    let spatial = &dims[2..];
    if let Some(r) = roi {
        if r.len() != spatial.len() {
            return Err(Error::Invalid(format!("--roi has {} sizes, the model {} spatial dims", r.len(), spatial.len())));
        }
    }
    let mut out = Vec::new();
    for (d, dim) in spatial.iter().enumerate() {
        match (dim, roi.map(|r| r[d])) {
            (Dim::Fixed(n), Some(r)) if *n != r => {
                return Err(Error::Invalid(format!("--roi {r} in dimension {d}, but the model's input is fixed at {n} there")))
            }
            (Dim::Fixed(n), _) => out.push(*n),
            (Dim::Symbolic(_), Some(r)) => out.push(r),
            (Dim::Symbolic(s), None) => {
                return Err(Error::Invalid(format!("the model's spatial input dimension {d} is free ({s}); give the window with --roi")))
            }
        }
    }
    Ok(out)
}

/// Segments `volume`; `progress(done, total)` after every window.
pub fn segment(model: &OnnxModel, volume: &Volume, opts: &SegmentOptions, progress: impl FnMut(usize, usize)) -> Result<Segmentation> {
    let roi = &opts.window.roi;
    if roi.len() != 3 {
        return Err(Error::Invalid(format!("a 3-D window is needed for a volume, got {roi:?}")));
    }
    let input_shape: Vec<usize> = [&[1usize, 1][..], roi].concat();
    let [x, y, z] = volume.shape();
    let plan = opts.window.plan(&[x, y, z])?;
    let (net, side) = backend::create_side_by_side(model, &input_shape, &opts.backend, opts.threads, plan.num_windows())?;
    let mut labels = Array3::<u8>::zeros((x, y, z));
    let mut classes = 0usize;
    let input = volume.data.view().insert_axis(Axis(0)).into_dyn();
    opts.window.run_streaming_side_by_side(
        input,
        side,
        |w| {
            let mut out = net.run(w)?;
            if out.is_empty() {
                return Err(Error::Invalid("the model has no output".into()));
            }
            Ok(out.swap_remove(0))
        },
        |row, slab| {
            classes = slab.shape()[0];
            if classes > 255 {
                return Err(Error::Invalid(format!("the model has {classes} output channels; at most 255 classes fit a label map")));
            }
            argmax_into(slab, &mut labels, row);
            Ok(())
        },
        progress,
    )?;
    let removed = if opts.largest_component { keep_largest_components(&mut labels, classes) } else { 0 };
    let mut voxels = vec![0usize; classes.max(1)];
    labels.iter().for_each(|&l| voxels[l as usize] += 1);
    Ok(Segmentation { labels, classes, windows: plan.num_windows(), voxels, removed })
}

/// Class of highest score per voxel of `[classes, rows, Y, Z]`, into `labels` from `first_row`
/// (the first of equal scores wins, as torch.argmax).
pub fn argmax_into(slab: ArrayViewD<f32>, labels: &mut Array3<u8>, first_row: usize) {
    let rows = slab.shape()[1];
    let mut best = slab.index_axis(Axis(0), 0).to_owned();
    let mut target = labels.slice_axis_mut(Axis(0), (first_row..first_row + rows).into());
    target.fill(0);
    for c in 1..slab.shape()[0] {
        let scores = slab.index_axis(Axis(0), c);
        for ((b, s), l) in best.iter_mut().zip(scores.iter()).zip(target.iter_mut()) {
            if *s > *b {
                *b = *s;
                *l = c as u8;
            }
        }
    }
}

fn neighbours(shape: [usize; 3], (i, j, k): (usize, usize, usize), mut f: impl FnMut((usize, usize, usize))) {
    for di in -1i64..=1 {
        for dj in -1i64..=1 {
            for dk in -1i64..=1 {
                if di == 0 && dj == 0 && dk == 0 {
                    continue;
                }
                let (a, b, c) = (i as i64 + di, j as i64 + dj, k as i64 + dk);
                if a >= 0 && b >= 0 && c >= 0 && (a as usize) < shape[0] && (b as usize) < shape[1] && (c as usize) < shape[2] {
                    f((a as usize, b as usize, c as usize));
                }
            }
        }
    }
}

/// Size of the 26-connected component of `class` at `seed`, marking it in `seen` with `mark`.
fn flood(labels: &Array3<u8>, seen: &mut Array3<u8>, seed: (usize, usize, usize), class: u8, mark: u8) -> usize {
    let shape = [labels.shape()[0], labels.shape()[1], labels.shape()[2]];
    let mut queue = VecDeque::from([seed]);
    seen[seed] = mark;
    let mut size = 0;
    while let Some(p) = queue.pop_front() {
        size += 1;
        neighbours(shape, p, |q| {
            if labels[q] == class && seen[q] != mark {
                seen[q] = mark;
                queue.push_back(q);
            }
        });
    }
    size
}

/// Keeps the largest 26-connected component of every non-zero class, setting the rest
/// to background (ties: the component met first in C order, as skimage's labelling
/// with MONAI's argmax over component sizes). Returns the number of voxels removed.
pub fn keep_largest_components(labels: &mut Array3<u8>, classes: usize) -> usize {
    let mut removed = 0;
    let mut seen = Array3::<u8>::zeros(labels.raw_dim());
    for class in 1..classes.min(256) as u16 {
        let class = class as u8;
        seen.fill(0);
        let mut largest: Option<((usize, usize, usize), usize)> = None;
        let total = labels.iter().filter(|&&l| l == class).count();
        if total == 0 {
            continue;
        }
        for (p, &l) in labels.indexed_iter() {
            if l == class && seen[p] == 0 {
                let size = flood(labels, &mut seen, p, class, 1);
                if largest.is_none_or(|(_, s)| size > s) {
                    largest = Some((p, size));
                }
            }
        }
        let (seed, size) = largest.expect("the class has voxels");
        if size == total {
            continue;
        }
        flood(labels, &mut seen, seed, class, 2);
        for (l, s) in labels.iter_mut().zip(seen.iter()) {
            if *l == class && *s != 2 {
                *l = 0;
                removed += 1;
            }
        }
    }
    removed
}

/// Dice of one class between a prediction and a reference label map; None when the
/// class is in neither.
pub fn dice(pred: ArrayView3<u8>, reference: ArrayView3<u8>, class: u8) -> Option<f64> {
    let (mut both, mut p, mut r) = (0usize, 0usize, 0usize);
    for (&a, &b) in pred.iter().zip(reference.iter()) {
        let (ia, ib) = (a == class, b == class);
        both += (ia && ib) as usize;
        p += ia as usize;
        r += ib as usize;
    }
    (p + r > 0).then(|| 2.0 * both as f64 / (p + r) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ndarray::{ArrayD, IxDyn};

    #[test]
    fn argmax_first_of_ties() {
        let slab = ArrayD::from_shape_vec(IxDyn(&[3, 1, 1, 3]), vec![1.0, 0.0, 2.0, 1.0, 5.0, 2.0, 0.0, 5.0, 2.0]).unwrap();
        let mut labels = Array3::from_elem((2, 1, 3), 9u8);
        argmax_into(slab.view(), &mut labels, 1);
        assert_eq!(labels.as_slice().unwrap(), &[9, 9, 9, 0, 1, 0]);
    }

    #[test]
    fn largest_component_per_class_with_diagonal_connectivity() {
        let mut l = Array3::<u8>::zeros((5, 5, 5));
        // Class 1: a diagonal chain of 3 (one component under 26-connectivity) and a lone voxel.
        l[[0, 0, 0]] = 1;
        l[[1, 1, 1]] = 1;
        l[[2, 2, 2]] = 1;
        l[[4, 0, 4]] = 1;
        // Class 2: two blocks of 2 and 4.
        l[[0, 4, 0]] = 2;
        l[[0, 4, 1]] = 2;
        for k in 0..4 {
            l[[4, 4, k]] = 2;
        }
        let removed = keep_largest_components(&mut l, 3);
        assert_eq!(removed, 3);
        assert_eq!(l[[4, 0, 4]], 0);
        assert_eq!(l[[2, 2, 2]], 1);
        assert_eq!(l[[0, 4, 0]], 0);
        assert_eq!(l[[4, 4, 3]], 2);
    }

    #[test]
    fn dice_counts() {
        let a = Array3::from_shape_vec((1, 1, 4), vec![1u8, 1, 0, 2]).unwrap();
        let b = Array3::from_shape_vec((1, 1, 4), vec![1u8, 0, 0, 0]).unwrap();
        assert_eq!(dice(a.view(), b.view(), 1), Some(2.0 / 3.0));
        assert_eq!(dice(a.view(), b.view(), 2), Some(0.0));
        assert_eq!(dice(a.view(), b.view(), 3), None);
    }
}
