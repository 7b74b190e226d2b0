//! Reductions: ReduceMax/Min/Sum/Mean, global pooling, Softmax and instance
//! normalisation, each summing in a fixed order so every machine gets the same bits.

use crate::error::Result;
use crate::ndarray::{ArrayD, Axis, IxDyn};

use super::{norm_axis, unsupported, Reduce};

/// `kind` over `axes` (None: all), keeping the reduced axes as 1 when `keepdims`.
pub(super) fn reduce_axes(x: &ArrayD<f32>, kind: Reduce, axes: Option<&[i64]>, keepdims: bool) -> Result<ArrayD<f32>> {
    let axes: Vec<usize> = match axes {
        None => (0..x.ndim()).collect(),
        Some(a) => a.iter().map(|&v| norm_axis(v, x.ndim())).collect::<Result<_>>()?,
    };
    Ok(reduce(x, kind, &axes, keepdims))
}

/// `kind` over every spatial axis, kept as 1 (GlobalAveragePool, GlobalMaxPool).
pub(super) fn global_pool(x: &ArrayD<f32>, kind: Reduce) -> ArrayD<f32> {
    let axes: Vec<usize> = (2..x.ndim()).collect();
    reduce(x, kind, &axes, true)
}

pub(super) fn softmax(x: &ArrayD<f32>, axis: i64) -> Result<ArrayD<f32>> {
    let a = norm_axis(axis, x.ndim())?;
    let mut y = x.clone();
    for mut lane in y.lanes_mut(Axis(a)) {
        let m = lane.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        lane.mapv_inplace(|v| (v - m).exp());
        let s = lane.sum();
        lane.mapv_inplace(|v| v / s);
    }
    Ok(y)
}

/// Reduces `axes` one at a time as [outer, axis, inner] on contiguous data, k in order.
fn reduce(x: &ArrayD<f32>, kind: Reduce, axes: &[usize], keepdims: bool) -> ArrayD<f32> {
    let mut shape = x.shape().to_vec();
    let mut data = x.as_standard_layout().into_owned().into_raw_vec_and_offset().0;
    let mut sorted = axes.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut count = 1usize;
    let init = match kind {
        Reduce::Max => f32::NEG_INFINITY,
        Reduce::Min => f32::INFINITY,
        Reduce::Sum | Reduce::Mean => 0.0,
    };
    for &a in sorted.iter().rev() {
        let (outer, len, inner): (usize, usize, usize) = (shape[..a].iter().product(), shape[a], shape[a + 1..].iter().product());
        count *= len;
        let mut out = vec![init; outer * inner];
        for o in 0..outer {
            let dst = &mut out[o * inner..(o + 1) * inner];
            for k in 0..len {
                let src = &data[(o * len + k) * inner..(o * len + k + 1) * inner];
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d = match kind {
                        Reduce::Max => d.max(v),
                        Reduce::Min => d.min(v),
                        Reduce::Sum | Reduce::Mean => *d + v,
                    };
                }
            }
        }
        data = out;
        shape[a] = 1;
    }
    if kind == Reduce::Mean {
        data.iter_mut().for_each(|s| *s /= count as f32);
    }
    if !keepdims {
        shape = shape.iter().enumerate().filter(|(i, _)| !sorted.contains(i)).map(|(_, &d)| d).collect();
    }
    ArrayD::from_shape_vec(IxDyn(&shape), data).expect("sized")
}

/// y = scale (x - mean) / sqrt(var + eps) + bias over each [n, c] plane; statistics
/// from exact sums ([`instance_stats`]), the normalisation in f32.
pub(super) fn instance_norm(x: &ArrayD<f32>, scale: &ArrayD<f32>, bias: &ArrayD<f32>, eps: f32) -> Result<ArrayD<f32>> {
    if x.ndim() < 3 || scale.len() != x.shape()[1] || bias.len() != x.shape()[1] {
        return Err(unsupported(format!("InstanceNormalization of {:?} with {} scales and {} biases", x.shape(), scale.len(), bias.len())));
    }
    let c = x.shape()[1];
    let plane: usize = x.shape()[2..].iter().product();
    let mut y = x.as_standard_layout().into_owned();
    let (scale, bias): (Vec<f32>, Vec<f32>) = (scale.iter().copied().collect(), bias.iter().copied().collect());
    let data = y.as_slice_mut().expect("standard layout");
    for (i, p) in data.chunks_exact_mut(plane.max(1)).enumerate() {
        let ch = i % c;
        let (mean, inv) = instance_stats(p, eps);
        instance_apply(p, mean, inv, scale[ch], bias[ch]);
    }
    Ok(y)
}

/// The mean and 1 / sqrt(var + eps) of one plane of [`instance_norm`]: exact sums
/// ([`crate::norms::ChannelSums`]), so a plane summed in parts (threads, or the tiles
/// of a streamed volume) gives the same bits; NaN for a non-finite or empty plane.
pub fn instance_stats(p: &[f32], eps: f32) -> (f32, f32) {
    crate::norms::plane_stats(p, eps).unwrap_or((f32::NAN, f32::NAN))
}

/// y = (x - mean) inv scale + bias over (any run of) one plane of [`instance_norm`].
pub fn instance_apply(p: &mut [f32], mean: f32, inv: f32, scale: f32, bias: f32) {
    for v in p.iter_mut() {
        *v = (*v - mean) * inv * scale + bias;
    }
}

/// Inference-mode batch norm: y = scale (x - mean) / sqrt(var + eps) + bias per channel
/// (axis 1), from the node's running statistics `[scale, bias, mean, var]`.
pub(super) fn batch_norm(x: &ArrayD<f32>, params: [&ArrayD<f32>; 4], eps: f32) -> Result<ArrayD<f32>> {
    let c = if x.ndim() >= 2 { x.shape()[1] } else { 0 };
    if c == 0 || params.iter().any(|p| p.len() != c) {
        let lens: Vec<usize> = params.iter().map(|p| p.len()).collect();
        return Err(unsupported(format!("BatchNormalization of {:?} with parameters of lengths {lens:?}", x.shape())));
    }
    let [scale, bias, mean, var] = params.map(|p| p.iter().copied().collect::<Vec<f32>>());
    let plane: usize = x.shape()[2..].iter().product();
    let mut y = x.as_standard_layout().into_owned();
    let data = y.as_slice_mut().expect("standard layout");
    for (i, p) in data.chunks_exact_mut(plane.max(1)).enumerate() {
        let ch = i % c;
        let k = scale[ch] / (var[ch] + eps).sqrt();
        for v in p.iter_mut() {
            *v = (*v - mean[ch]) * k + bias[ch];
        }
    }
    Ok(y)
}

/// MaxPool of an NC... tensor over its spatial axes; padding never wins (it is -inf).
pub(super) fn max_pool(x: &ArrayD<f32>, kernel: &[usize], strides: &[usize], pads: &[usize]) -> Result<ArrayD<f32>> {
    let sp = kernel.len();
    if x.ndim() != sp + 2 {
        return Err(unsupported(format!("MaxPool: kernel {kernel:?} on a rank-{} input", x.ndim())));
    }
    let mut out_shape = x.shape()[..2].to_vec();
    for a in 0..sp {
        let padded = x.shape()[a + 2] + pads[a] + pads[a + sp];
        match padded.checked_sub(kernel[a]) {
            Some(d) => out_shape.push(d / strides[a] + 1),
            None => return Err(unsupported(format!("MaxPool: kernel {kernel:?} larger than the padded input {:?}", x.shape()))),
        }
    }
    let x = x.as_standard_layout();
    let taps: usize = kernel.iter().product();
    Ok(ArrayD::from_shape_fn(IxDyn(&out_shape), |o| {
        let mut best = f32::NEG_INFINITY;
        let mut idx = vec![0usize; sp + 2];
        idx[0] = o[0];
        idx[1] = o[1];
        'taps: for t in 0..taps {
            let mut rest = t;
            for a in (0..sp).rev() {
                let k = rest % kernel[a];
                rest /= kernel[a];
                let pos = (o[a + 2] * strides[a] + k) as isize - pads[a] as isize;
                if pos < 0 || pos as usize >= x.shape()[a + 2] {
                    continue 'taps;
                }
                idx[a + 2] = pos as usize;
            }
            best = best.max(x[IxDyn(&idx)]);
        }
        best
    }))
}
