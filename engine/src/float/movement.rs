//! Float ops that only move values (Reshape, Flatten, Transpose, Concat, Slice,
//! Squeeze/Unsqueeze). The compiler also runs them on index arrays to turn data
//! movement on u8 tensors into byte copies, so they must be exact on any f32.

use crate::error::Result;
use crate::ndarray::{ArrayD, Axis, IxDyn, Slice};

use super::{norm_axis, unsupported};

/// Reshape to `spec` (0 keeps the input's dim, -1 takes what is left). With
/// `allowzero` a 0 would be an empty dim, which the engine's tensors never have.
pub(super) fn reshape(x: &ArrayD<f32>, spec: &ArrayD<f32>, allowzero: bool) -> Result<ArrayD<f32>> {
    let spec: Vec<i64> = spec.iter().map(|&v| v as i64).collect();
    if allowzero && spec.contains(&0) {
        return Err(unsupported(format!("Reshape (allowzero) of {:?} to an empty shape {spec:?}", x.shape())));
    }
    let mut shape: Vec<usize> = spec.iter().enumerate().map(|(i, &d)| if d == 0 { x.shape()[i] } else { d.max(1) as usize }).collect();
    if let Some(p) = spec.iter().position(|&d| d == -1) {
        let known: usize = shape.iter().enumerate().filter(|(i, _)| *i != p).map(|(_, d)| d).product();
        shape[p] = x.len().checked_div(known).unwrap_or(0);
    }
    if shape.iter().product::<usize>() != x.len() {
        return Err(unsupported(format!("cannot reshape {:?} to {spec:?}", x.shape())));
    }
    x.as_standard_layout().to_owned().into_shape_with_order(IxDyn(&shape)).map_err(|e| unsupported(e.to_string()))
}

pub(super) fn flatten(x: &ArrayD<f32>, axis: i64) -> Result<ArrayD<f32>> {
    let a = if axis < 0 { axis + x.ndim() as i64 } else { axis } as usize;
    let outer: usize = x.shape()[..a.min(x.ndim())].iter().product();
    let flat = x.as_standard_layout().to_owned();
    flat.into_shape_with_order(IxDyn(&[outer, x.len() / outer.max(1)])).map_err(|e| unsupported(e.to_string()))
}

/// Transpose by `perm` (None: reverse the axes).
pub(super) fn transpose(x: &ArrayD<f32>, perm: Option<&[usize]>) -> Result<ArrayD<f32>> {
    let perm: Vec<usize> = perm.map_or_else(|| (0..x.ndim()).rev().collect(), <[usize]>::to_vec);
    let mut sorted = perm.clone();
    sorted.sort_unstable();
    if sorted != (0..x.ndim()).collect::<Vec<_>>() {
        return Err(unsupported(format!("Transpose: perm {perm:?} for rank {}", x.ndim())));
    }
    Ok(x.clone().permuted_axes(IxDyn(&perm)).as_standard_layout().into_owned())
}

pub(super) fn concat(args: &[&ArrayD<f32>], axis: i64) -> Result<ArrayD<f32>> {
    let x = super::arg(args, 0)?;
    let a = norm_axis(axis, x.ndim())?;
    let views: Vec<_> = args.iter().map(|v| v.view()).collect();
    Ok(crate::ndarray::concatenate(Axis(a), &views).map_err(|e| unsupported(format!("Concat: {e}")))?.as_standard_layout().into_owned())
}

/// Slice with starts, ends, axes from `attrs` (opset < 10) or inputs 1-4 (with steps).
pub(super) fn slice(x: &ArrayD<f32>, args: &[&ArrayD<f32>], attrs: Option<&(Vec<i64>, Vec<i64>, Vec<i64>)>) -> Result<ArrayD<f32>> {
    let list = |i: usize| -> Option<Vec<i64>> { args.get(i).filter(|a| !a.is_empty()).map(|a| a.iter().map(|&v| v as i64).collect()) };
    let (starts, ends, axes, steps) = match attrs {
        Some((s, e, a)) => (s.clone(), e.clone(), a.clone(), vec![1; s.len()]),
        None => {
            let (s, e) = (list(1).unwrap_or_default(), list(2).unwrap_or_default());
            let a = list(3).unwrap_or_else(|| (0..s.len() as i64).collect());
            let st = list(4).unwrap_or_else(|| vec![1; s.len()]);
            (s, e, a, st)
        }
    };
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(unsupported("Slice: starts, ends, axes and steps of different lengths"));
    }
    let mut v = x.view();
    for i in 0..starts.len() {
        let ax = norm_axis(axes[i], x.ndim())?;
        if steps[i] == 0 {
            return Err(unsupported("Slice: a step of 0"));
        }
        let dim = x.shape()[ax] as i64;
        if steps[i] < 0 {
            // Backwards from start (clamped to [0, dim - 1]) while above end (clamped to
            // [-1, dim - 1]): ndarray walks [end + 1, start + 1) from its far end.
            let s = (if starts[i] < 0 { starts[i] + dim } else { starts[i] }).clamp(0, dim - 1);
            let e = (if ends[i] < 0 { ends[i].saturating_add(dim) } else { ends[i] }).clamp(-1, dim - 1);
            let (lo, hi) = if e >= s { (0, 0) } else { (e + 1, s + 1) };
            v.slice_axis_inplace(Axis(ax), Slice::new(lo as isize, Some(hi as isize), steps[i] as isize));
            continue;
        }
        let clampi = |p: i64| (if p < 0 { p + dim } else { p }).clamp(0, dim);
        let (b, e) = (clampi(starts[i]), clampi(ends[i]).max(clampi(starts[i])));
        v.slice_axis_inplace(Axis(ax), Slice::new(b as isize, Some(e as isize), steps[i] as isize));
    }
    Ok(v.as_standard_layout().into_owned())
}

/// Squeeze (`squeeze`) or Unsqueeze `axes` (None: from input 1).
pub(super) fn squeeze(x: &ArrayD<f32>, args: &[&ArrayD<f32>], axes: Option<&[i64]>, squeeze: bool) -> Result<ArrayD<f32>> {
    let axes: Vec<i64> = match axes {
        Some(a) => a.to_vec(),
        None => args.get(1).map(|a| a.iter().map(|&v| v as i64).collect()).unwrap_or_default(),
    };
    let shape: Vec<usize> = if squeeze {
        let ax: Vec<usize> = if axes.is_empty() {
            (0..x.ndim()).filter(|&i| x.shape()[i] == 1).collect()
        } else {
            axes.iter().map(|&a| norm_axis(a, x.ndim())).collect::<Result<_>>()?
        };
        if ax.iter().any(|&a| x.shape()[a] != 1) {
            return Err(unsupported(format!("Squeeze: axes {axes:?} of {:?} are not 1", x.shape())));
        }
        x.shape().iter().enumerate().filter(|(i, _)| !ax.contains(i)).map(|(_, &d)| d).collect()
    } else {
        let rank = x.ndim() + axes.len();
        let ax: Vec<usize> = axes.iter().map(|&a| norm_axis(a, rank)).collect::<Result<_>>()?;
        let mut rest = x.shape().iter();
        (0..rank).map(|i| if ax.contains(&i) { 1 } else { *rest.next().unwrap_or(&1) }).collect()
    };
    x.as_standard_layout().into_owned().into_shape_with_order(IxDyn(&shape)).map_err(|e| unsupported(e.to_string()))
}
