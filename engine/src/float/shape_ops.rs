//! The ops exporters emit around shapes, and two cheap spatial ones: Cast, Gather,
//! Where, Range, ConstantOfShape, Expand (torch's dynamic-batch shape arithmetic,
//! which the compiler folds into constants), constant-mode Pad and nearest-neighbour
//! Resize / Upsample (a U-Net's padding and upsampling left in float).
//!
//! Integer inputs (indices, shapes, sizes) arrive as f32 holding integers and are read
//! with `as i64`; every result that is an integer tensor in ONNX is one here too.

use edgemed_onnx::{attr, pb};

use crate::error::Result;
use crate::ndarray::{ArrayD, Axis, IxDyn, Slice, Zip};

use super::elementwise::broadcast_shape;
use super::{norm_axis, unsupported, CastTo, Coordinates, Nearest, Resize};

fn ints(a: &ArrayD<f32>) -> Vec<i64> {
    a.iter().map(|&v| v as i64).collect()
}

/// A shape input (ConstantOfShape, Expand): non-negative integers.
fn dims(a: &ArrayD<f32>, what: &str) -> Result<Vec<usize>> {
    ints(a).into_iter().map(|d| usize::try_from(d).map_err(|_| unsupported(format!("{what}: negative dim {d}")))).collect()
}

pub(super) fn cast(x: &ArrayD<f32>, to: CastTo) -> ArrayD<f32> {
    match to {
        CastTo::Float => x.clone(),
        // NaN has no integer: 0, as Rust's `as` gives.
        CastTo::Int => x.mapv(|v| if v.is_nan() { 0.0 } else { v.trunc() }),
        CastTo::Bool => x.mapv(|v| f32::from(u8::from(v != 0.0))),
    }
}

/// out[..., i..., ...] = x[..., indices[i...], ...] along `axis`: the output's shape is
/// x's with that axis replaced by the indices' shape (a scalar index drops it).
pub(super) fn gather(x: &ArrayD<f32>, indices: &ArrayD<f32>, axis: i64) -> Result<ArrayD<f32>> {
    if x.ndim() == 0 {
        return Err(unsupported("Gather from a scalar"));
    }
    let a = norm_axis(axis, x.ndim())?;
    let dim = x.shape()[a] as i64;
    let picks: Vec<usize> = ints(indices)
        .into_iter()
        .map(|i| {
            let j = if i < 0 { i + dim } else { i };
            if (0..dim).contains(&j) {
                Ok(j as usize)
            } else {
                Err(unsupported(format!("Gather: index {i} out of range for dim {dim}")))
            }
        })
        .collect::<Result<_>>()?;
    let picked = x.select(Axis(a), &picks);
    let mut shape = x.shape()[..a].to_vec();
    shape.extend_from_slice(indices.shape());
    shape.extend_from_slice(&x.shape()[a + 1..]);
    picked.as_standard_layout().into_owned().into_shape_with_order(IxDyn(&shape)).map_err(|e| unsupported(e.to_string()))
}

/// x where the condition is not 0, else y; the three broadcast together.
pub(super) fn where_(cond: &ArrayD<f32>, x: &ArrayD<f32>, y: &ArrayD<f32>) -> Result<ArrayD<f32>> {
    let shape = broadcast_shape(&broadcast_shape(cond.shape(), x.shape())?, y.shape())?;
    let missing = || unsupported("Where: operands do not broadcast");
    let target = IxDyn(&shape);
    let (c, xv, yv) = (
        cond.broadcast(target.clone()).ok_or_else(missing)?,
        x.broadcast(target.clone()).ok_or_else(missing)?,
        y.broadcast(target).ok_or_else(missing)?,
    );
    let mut out = ArrayD::zeros(IxDyn(&shape));
    Zip::from(&mut out).and(&c).and(&xv).and(&yv).for_each(|o, &c, &x, &y| *o = if c != 0.0 { x } else { y });
    Ok(out)
}

/// start, start + delta, ... while before limit: max(ceil((limit - start) / delta), 0)
/// values, computed in f64 so integer ranges are exact.
pub(super) fn range(start: &ArrayD<f32>, limit: &ArrayD<f32>, delta: &ArrayD<f32>) -> Result<ArrayD<f32>> {
    let scalar = |a: &ArrayD<f32>, what: &str| -> Result<f64> {
        match a.len() {
            1 => Ok(f64::from(*a.iter().next().expect("one value"))),
            n => Err(unsupported(format!("Range: {what} has {n} values, not one"))),
        }
    };
    let (s, l, d) = (scalar(start, "start")?, scalar(limit, "limit")?, scalar(delta, "delta")?);
    if d == 0.0 || !(s.is_finite() && l.is_finite() && d.is_finite()) {
        return Err(unsupported(format!("Range({s}, {l}, {d}): no finite number of values")));
    }
    let n = ((l - s) / d).ceil().max(0.0);
    if n > (1u64 << 24) as f64 {
        return Err(unsupported(format!("Range({s}, {l}, {d}): {n} values")));
    }
    let v: Vec<f32> = (0..n as usize).map(|i| (s + i as f64 * d) as f32).collect();
    Ok(ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).expect("sized"))
}

pub(super) fn constant_of_shape(shape: &ArrayD<f32>, value: f32) -> Result<ArrayD<f32>> {
    Ok(ArrayD::from_elem(IxDyn(&dims(shape, "ConstantOfShape")?), value))
}

/// x broadcast against `shape` both ways (numpy's rule: a 1 in `shape` keeps x's dim).
pub(super) fn expand(x: &ArrayD<f32>, shape: &ArrayD<f32>) -> Result<ArrayD<f32>> {
    let target = broadcast_shape(x.shape(), &dims(shape, "Expand")?)?;
    let v = x.broadcast(IxDyn(&target)).ok_or_else(|| unsupported(format!("Expand: {:?} to {target:?}", x.shape())))?;
    Ok(v.as_standard_layout().into_owned())
}

/// Constant-mode Pad: `pads` is [begin..., end...] over `axes` (input 3, else all);
/// negative pads (crops) are not read.
pub(super) fn pad(x: &ArrayD<f32>, args: &[&ArrayD<f32>], pads: Option<&[i64]>, value: f32, edge: bool) -> Result<ArrayD<f32>> {
    let input = |i: usize| args.get(i).copied().filter(|a| !a.is_empty());
    let pads: Vec<i64> = match pads {
        Some(p) => p.to_vec(),
        None => input(1).map(ints).unwrap_or_default(),
    };
    let value = input(2).and_then(|v| v.iter().next().copied()).unwrap_or(value);
    let axes: Vec<usize> = match input(3) {
        Some(a) => ints(a).into_iter().map(|v| norm_axis(v, x.ndim())).collect::<Result<_>>()?,
        None => (0..x.ndim()).collect(),
    };
    if pads.len() != 2 * axes.len() || pads.iter().any(|&p| p < 0) {
        return Err(unsupported(format!("Pad: pads {pads:?} for axes {axes:?} (negative pads are not read)")));
    }
    let (mut begin, mut shape) = (vec![0usize; x.ndim()], x.shape().to_vec());
    for (i, &a) in axes.iter().enumerate() {
        begin[a] = pads[i] as usize;
        shape[a] += pads[i] as usize + pads[i + axes.len()] as usize;
    }
    if edge {
        if x.is_empty() && shape.iter().product::<usize>() > 0 {
            return Err(unsupported("Pad (edge) of an empty tensor"));
        }
        // Each output index reads the input at its index minus the begin pad, clamped.
        return Ok(ArrayD::from_shape_fn(IxDyn(&shape), |i| {
            let src: Vec<usize> = (0..x.ndim()).map(|a| i[a].saturating_sub(begin[a]).min(x.shape()[a] - 1)).collect();
            x[IxDyn(&src)]
        }));
    }
    let mut out = ArrayD::from_elem(IxDyn(&shape), value);
    out.slice_each_axis_mut(|ax| Slice::from(begin[ax.axis.0]..begin[ax.axis.0] + x.shape()[ax.axis.0])).assign(x);
    Ok(out)
}

/// A Resize (opset 10 and later) or Upsample node as nearest-neighbour resampling.
pub(super) fn resize_op(n: &pb::NodeProto, opset: i64) -> Result<Resize> {
    let s = |name: &str| attr::string(n, name);
    let mode = s("mode").unwrap_or_else(|| "nearest".into());
    if mode != "nearest" {
        return Err(unsupported(format!("{}: {} mode {mode} (only nearest is read)", n.name, n.op_type)));
    }
    if attr::int(n, "antialias", 0) != 0 || attr::attr(n, "axes").is_some() || s("keep_aspect_ratio_policy").is_some_and(|p| p != "stretch")
    {
        return Err(unsupported(format!("{}: Resize with antialias, axes or a keep_aspect_ratio_policy", n.name)));
    }
    // Upsample and Resize-10 map coordinates as Resize-11's asymmetric with floor.
    if n.op_type == "Upsample" || opset < 11 {
        let scales = attr::attr(n, "scales").map(|a| a.floats.clone());
        return Ok(Resize { coordinates: Coordinates::Asymmetric, nearest: Nearest::Floor, scales, scales_input: 1 });
    }
    let coordinates = match s("coordinate_transformation_mode").as_deref().unwrap_or("half_pixel") {
        "half_pixel" => Coordinates::HalfPixel,
        "pytorch_half_pixel" => Coordinates::PytorchHalfPixel,
        "align_corners" => Coordinates::AlignCorners,
        "asymmetric" => Coordinates::Asymmetric,
        "tf_half_pixel_for_nn" => Coordinates::TfHalfPixelForNn,
        other => return Err(unsupported(format!("{}: Resize coordinate_transformation_mode {other}", n.name))),
    };
    let nearest = match s("nearest_mode").as_deref().unwrap_or("round_prefer_floor") {
        "round_prefer_floor" => Nearest::RoundPreferFloor,
        "round_prefer_ceil" => Nearest::RoundPreferCeil,
        "floor" => Nearest::Floor,
        "ceil" => Nearest::Ceil,
        other => return Err(unsupported(format!("{}: Resize nearest_mode {other}", n.name))),
    };
    Ok(Resize { coordinates, nearest, scales: None, scales_input: 2 })
}

/// Nearest-neighbour resampling: output size floor(in * scale) from the scales, or the
/// sizes input (scale = out / in); each output coordinate maps back to the input by
/// the coordinate mode and picks its neighbour by the nearest mode, clamped inside.
pub(super) fn resize(x: &ArrayD<f32>, args: &[&ArrayD<f32>], r: &Resize) -> Result<ArrayD<f32>> {
    let input = |i: usize| args.get(i).copied().filter(|a| !a.is_empty());
    let rank = x.ndim();
    let (scales, out): (Vec<f64>, Vec<usize>) = if let Some(sizes) = input(r.scales_input + 1) {
        let out = dims(sizes, "Resize sizes")?;
        let scales = out.iter().zip(x.shape()).map(|(&o, &i)| o as f64 / i as f64).collect();
        (scales, out)
    } else {
        let scales: Vec<f64> = match (&r.scales, input(r.scales_input)) {
            (Some(s), _) => s.iter().map(|&v| f64::from(v)).collect(),
            (None, Some(s)) => s.iter().map(|&v| f64::from(v)).collect(),
            (None, None) => return Err(unsupported("Resize: neither scales nor sizes")),
        };
        let out = scales.iter().zip(x.shape()).map(|(&s, &i)| (i as f64 * s).floor() as usize).collect();
        (scales, out)
    };
    if scales.len() != rank || out.len() != rank || scales.iter().any(|&s| !(s > 0.0 && s.is_finite())) {
        return Err(unsupported(format!("Resize: scales {scales:?} for rank {rank}")));
    }
    // The input index each output index reads, per axis.
    let picks: Vec<Vec<usize>> = (0..rank)
        .map(|a| {
            let (len_in, len_out, s) = (x.shape()[a], out[a], scales[a]);
            (0..len_out)
                .map(|o| {
                    let o = o as f64;
                    let c = match r.coordinates {
                        Coordinates::HalfPixel => (o + 0.5) / s - 0.5,
                        Coordinates::PytorchHalfPixel if len_out > 1 => (o + 0.5) / s - 0.5,
                        Coordinates::PytorchHalfPixel => 0.0,
                        Coordinates::AlignCorners if len_out > 1 => o * (len_in as f64 - 1.0) / (len_out as f64 - 1.0),
                        Coordinates::AlignCorners => 0.0,
                        Coordinates::Asymmetric => o / s,
                        Coordinates::TfHalfPixelForNn => (o + 0.5) / s,
                    };
                    let i = match r.nearest {
                        Nearest::Floor => c.floor(),
                        Nearest::Ceil => c.ceil(),
                        Nearest::RoundPreferFloor if c.fract().abs() == 0.5 => c.floor(),
                        Nearest::RoundPreferCeil if c.fract().abs() == 0.5 => c.ceil(),
                        _ => c.round(),
                    };
                    i.clamp(0.0, len_in.saturating_sub(1) as f64) as usize
                })
                .collect()
        })
        .collect();
    let mut y = x.to_owned();
    for (a, p) in picks.iter().enumerate() {
        y = y.select(Axis(a), p);
    }
    Ok(y.as_standard_layout().into_owned())
}
