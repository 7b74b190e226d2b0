//! Element-wise float ops with numpy broadcasting: arithmetic, unary functions,
//! activations, and quantisation as float arithmetic (QuantizeLinear and
//! DequantizeLinear left in float: per-axis parameters, int8 outputs).

use crate::error::Result;
use crate::kernels::round_half_even;
use crate::ndarray::{ArrayD, IxDyn};

use super::{norm_axis, unsupported, Binary, Unary};

pub(super) fn binary(k: Binary, a: &ArrayD<f32>, b: &ArrayD<f32>) -> Result<ArrayD<f32>> {
    let f = match k {
        Binary::Add => |a: f32, b: f32| a + b,
        Binary::Sub => |a: f32, b: f32| a - b,
        Binary::Mul => |a: f32, b: f32| a * b,
        Binary::Div => |a: f32, b: f32| a / b,
        // Integer operands are exact in f32; their quotient in f64 is never rounded
        // across an integer, so truncating it gives the integer quotient (ONNX leaves
        // division by zero undefined: this gives NaN or ±inf).
        Binary::IntDiv => |a: f32, b: f32| (f64::from(a) / f64::from(b)).trunc() as f32,
        Binary::Min => |a: f32, b: f32| a.min(b),
        Binary::Max => |a: f32, b: f32| a.max(b),
        Binary::Equal => |a: f32, b: f32| f32::from(u8::from(a == b)),
        Binary::Less => |a: f32, b: f32| f32::from(u8::from(a < b)),
        Binary::Greater => |a: f32, b: f32| f32::from(u8::from(a > b)),
    };
    zip_broadcast(a, b, f)
}

pub(super) fn unary(k: Unary, x: &ArrayD<f32>) -> ArrayD<f32> {
    match k {
        Unary::Exp => x.mapv(f32::exp),
        Unary::Log => x.mapv(f32::ln),
        Unary::Neg => x.mapv(|v| -v),
        Unary::Sqrt => x.mapv(f32::sqrt),
        Unary::Tanh => x.mapv(f32::tanh),
        Unary::Abs => x.mapv(f32::abs),
        Unary::Floor => x.mapv(f32::floor),
        Unary::Ceil => x.mapv(f32::ceil),
    }
}

/// Clip with its bounds from inputs 1 and 2 (absent: unbounded).
pub(super) fn clip(x: &ArrayD<f32>, args: &[&ArrayD<f32>]) -> ArrayD<f32> {
    let bound = |i: usize, d: f32| args.get(i).and_then(|c| c.iter().next().copied()).unwrap_or(d);
    let (lo, hi) = (bound(1, f32::NEG_INFINITY), bound(2, f32::INFINITY));
    x.mapv(|v| v.max(lo).min(hi))
}

/// The zero point (input 2, absent: 0) as one value when the parameters are per tensor.
fn per_tensor(args: &[&ArrayD<f32>]) -> Option<(f32, f32)> {
    let s = args.get(1).filter(|s| s.len() == 1)?.iter().next().copied()?;
    match args.get(2) {
        None => Some((s, 0.0)),
        Some(z) if z.len() == 1 => Some((s, z.iter().next().copied()?)),
        Some(_) => None,
    }
}

/// The per-axis zero point (input 2), 0 where absent.
fn zero_point(args: &[&ArrayD<f32>], x: &ArrayD<f32>, axis: i64) -> Result<ArrayD<f32>> {
    match args.get(2) {
        Some(z) => along_axis(z, x, axis),
        None => Ok(ArrayD::from_elem(IxDyn(&[]), 0.0)),
    }
}

/// q = clamp(round_half_even(x / s) + z, lo, hi), per tensor or along `axis`.
pub(super) fn quantize(x: &ArrayD<f32>, args: &[&ArrayD<f32>], lo: f32, hi: f32, axis: i64) -> Result<ArrayD<f32>> {
    if let Some((s, z)) = per_tensor(args) {
        return Ok(x.mapv(|v| (round_half_even(v / s) + z).max(lo).min(hi)));
    }
    let scale = along_axis(super::arg(args, 1)?, x, axis)?;
    let zp = zero_point(args, x, axis)?;
    let q = zip_broadcast(x, &scale, |v, s| round_half_even(v / s))?;
    zip_broadcast(&q, &zp, |q, z| (q + z).max(lo).min(hi))
}

/// x = (q - z) * s, per tensor or along `axis`.
pub(super) fn dequantize(x: &ArrayD<f32>, args: &[&ArrayD<f32>], axis: i64) -> Result<ArrayD<f32>> {
    if let Some((s, z)) = per_tensor(args) {
        return Ok(x.mapv(|q| (q - z) * s));
    }
    let scale = along_axis(super::arg(args, 1)?, x, axis)?;
    let zp = zero_point(args, x, axis)?;
    let centred = zip_broadcast(x, &zp, |q, z| q - z)?;
    zip_broadcast(&centred, &scale, |v, s| v * s)
}

/// numpy broadcasting of two shapes.
pub(super) fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let da = if i + a.len() >= r { a[i + a.len() - r] } else { 1 };
            let db = if i + b.len() >= r { b[i + b.len() - r] } else { 1 };
            match (da, db) {
                (x, y) if x == y => Ok(x),
                (1, y) => Ok(y),
                (x, 1) => Ok(x),
                _ => Err(unsupported(format!("shapes {a:?} and {b:?} do not broadcast"))),
            }
        })
        .collect()
}

/// A per-axis (or per-tensor) quantisation parameter broadcast against `x`.
fn along_axis(p: &ArrayD<f32>, x: &ArrayD<f32>, axis: i64) -> Result<ArrayD<f32>> {
    if p.len() <= 1 {
        return Ok(ArrayD::from_elem(IxDyn(&[]), p.iter().next().copied().unwrap_or(0.0)));
    }
    let ax = norm_axis(axis, x.ndim())?;
    let mut shape = vec![1; x.ndim()];
    shape[ax] = p.len();
    p.clone().into_shape_with_order(IxDyn(&shape)).map_err(|e| unsupported(e.to_string()))
}

/// f(a, b) element-wise with numpy broadcasting. IxDyn iterators cost several
/// nanoseconds an element, so this walks contiguous data with an odometer instead.
pub(super) fn zip_broadcast(a: &ArrayD<f32>, b: &ArrayD<f32>, f: impl Fn(f32, f32) -> f32) -> Result<ArrayD<f32>> {
    let shape = broadcast_shape(a.shape(), b.shape())?;
    let (a, b) = (a.as_standard_layout(), b.as_standard_layout());
    let (da, db) = (a.as_slice().expect("standard layout"), b.as_slice().expect("standard layout"));
    let n: usize = shape.iter().product();
    let out: Vec<f32> = if a.shape() == b.shape() {
        da.iter().zip(db).map(|(&x, &y)| f(x, y)).collect()
    } else if db.len() == 1 && a.shape() == shape.as_slice() {
        da.iter().map(|&x| f(x, db[0])).collect()
    } else if da.len() == 1 && b.shape() == shape.as_slice() {
        db.iter().map(|&y| f(da[0], y)).collect()
    } else {
        // Strides of each operand over the output's axes (0 where it broadcasts).
        let strides = |s: &[usize]| -> Vec<usize> {
            let r = shape.len();
            let mut st = vec![0; r];
            let mut acc = 1;
            for i in (0..s.len()).rev() {
                let o = i + r - s.len();
                st[o] = if s[i] == 1 { 0 } else { acc };
                acc *= s[i];
            }
            st
        };
        let (mut sa, mut sb) = (strides(a.shape()), strides(b.shape()));
        // Merge an axis into the next when both operands run on contiguously across
        // them (a [1, C, 5, 5] by [1, 1, 5, 5] product runs 25 at a time, not 5).
        let mut shape = shape.clone();
        let mut ax = shape.len() - 1;
        while ax > 0 {
            let merges = |st: &[usize]| st[ax - 1] == st[ax] * shape[ax];
            if merges(&sa) && merges(&sb) {
                shape[ax - 1] *= shape[ax];
                sa[ax - 1] = sa[ax];
                sb[ax - 1] = sb[ax];
                shape.remove(ax);
                sa.remove(ax);
                sb.remove(ax);
            }
            ax -= 1;
        }
        let last = shape.len() - 1;
        let inner = shape[last];
        let mut idx = vec![0usize; shape.len()];
        let (mut oa, mut ob) = (0usize, 0usize);
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match (sa[last], sb[last]) {
                (1, 1) => out.extend(da[oa..oa + inner].iter().zip(&db[ob..ob + inner]).map(|(&x, &y)| f(x, y))),
                (1, 0) => out.extend(da[oa..oa + inner].iter().map(|&x| f(x, db[ob]))),
                (0, 1) => out.extend(db[ob..ob + inner].iter().map(|&y| f(da[oa], y))),
                (s1, s2) => out.extend((0..inner).map(|j| f(da[oa + j * s1], db[ob + j * s2]))),
            }
            // Advance the odometer over the outer axes.
            let mut ax = last;
            while ax > 0 {
                ax -= 1;
                idx[ax] += 1;
                oa += sa[ax];
                ob += sb[ax];
                if idx[ax] < shape[ax] {
                    break;
                }
                oa -= sa[ax] * shape[ax];
                ob -= sb[ax] * shape[ax];
                idx[ax] = 0;
            }
        }
        out
    };
    Ok(ArrayD::from_shape_vec(IxDyn(&shape), out).expect("sized"))
}
