//! The float tail of an INT8 plan (a classifier head after the last quantised
//! tensor: group pooling, global average pooling, the logits' Gemm, softmax), run by
//! a small interpreter instead of tract. These heads are a few thousand flops, where
//! tract's per-run bookkeeping cost as much as the whole integer part. The loops are
//! plain scalar code in a fixed order without fused multiply-adds, so the tail gives
//! the same bits on x86-64, aarch64 and armv7. Graphs with an op it does not know keep
//! tract for the tail.

use std::collections::HashMap;

use tract_onnx::pb;

use super::compile::decode;
use crate::error::{Error, Result};
use crate::ndarray::{ArrayD, Axis, IxDyn};

/// A compiled tail: steps over numbered values, constants folded at load time.
#[derive(Debug, Clone)]
pub struct FloatTail {
    steps: Vec<Step>,
    n_values: usize,
    outputs: Vec<usize>,
}

#[derive(Debug, Clone)]
enum Operand {
    Value(usize),
    Const(ArrayD<f32>),
}

#[derive(Debug, Clone)]
struct Step {
    op: TailOp,
    inputs: Vec<Operand>,
    output: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Min,
    Max,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Reduce {
    Max,
    Min,
    Sum,
    Mean,
}

#[derive(Debug, Clone)]
enum TailOp {
    Binary(Binary),
    Relu,
    Sigmoid,
    Clip,
    Identity,
    Reshape,
    Flatten(i64),
    /// Axes (None: all), keepdims.
    Reduce(Reduce, Option<Vec<i64>>, bool),
    GlobalPool(Reduce),
    Gemm {
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    },
    MatMul,
    Softmax(i64),
    /// Saturation bounds of the quantised type, axis for per-axis parameters.
    Quantize {
        lo: f32,
        hi: f32,
        axis: i64,
    },
    Dequantize {
        axis: i64,
    },
}

fn unsupported(reason: impl Into<String>) -> Error {
    Error::Invalid(reason.into())
}

fn attr<'a>(n: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

impl FloatTail {
    /// Compiles `graph` (one float input, the tail of a plan); Err names the op it does not know.
    pub fn new(graph: &pb::GraphProto, opset: i64) -> Result<Self> {
        let input = graph.input.first().ok_or_else(|| unsupported("float tail without an input"))?;
        let mut consts: HashMap<&str, ArrayD<f32>> = HashMap::new();
        for t in &graph.initializer {
            let (shape, d) = decode(t)?;
            consts.insert(t.name.as_str(), ArrayD::from_shape_vec(IxDyn(&shape), d.as_f32()).expect("decode checks the size"));
        }
        let mut ids: HashMap<&str, usize> = HashMap::new();
        ids.insert(input.name.as_str(), 0);
        let mut steps = Vec::new();
        for n in &graph.node {
            let op = Self::op(n, opset, graph)?;
            let mut inputs = Vec::new();
            for name in &n.input {
                inputs.push(if name.is_empty() {
                    Operand::Const(ArrayD::from_elem(IxDyn(&[0]), 0.0))
                } else if let Some(&id) = ids.get(name.as_str()) {
                    Operand::Value(id)
                } else if let Some(c) = consts.get(name.as_str()) {
                    Operand::Const(c.clone())
                } else {
                    return Err(unsupported(format!("{}: input {name:?} is not defined before it", n.name)));
                });
            }
            let out = n.output.first().ok_or_else(|| unsupported(format!("{}: no output", n.name)))?;
            if inputs.iter().all(|i| matches!(i, Operand::Const(_))) {
                // Constant folding (weights' DequantizeLinear, shapes) with the same code.
                let args: Vec<&ArrayD<f32>> = inputs.iter().map(|i| if let Operand::Const(c) = i { c } else { unreachable!() }).collect();
                consts.insert(out.as_str(), eval(&op, &args).map_err(|e| unsupported(format!("{}: {e}", n.name)))?);
            } else {
                let id = ids.len();
                ids.insert(out.as_str(), id);
                steps.push(Step { op, inputs, output: id });
            }
        }
        let outputs = graph
            .output
            .iter()
            .map(|o| ids.get(o.name.as_str()).copied().ok_or_else(|| unsupported(format!("output {} is a constant", o.name))))
            .collect::<Result<_>>()?;
        Ok(FloatTail { steps, n_values: ids.len(), outputs })
    }

    fn op(n: &pb::NodeProto, opset: i64, graph: &pb::GraphProto) -> Result<TailOp> {
        let int = |name: &str, default: i64| attr(n, name).map_or(default, |a| a.i);
        let float = |name: &str, default: f32| attr(n, name).map_or(default, |a| a.f);
        Ok(match n.op_type.as_str() {
            "Add" => TailOp::Binary(Binary::Add),
            "Sub" => TailOp::Binary(Binary::Sub),
            "Mul" => TailOp::Binary(Binary::Mul),
            "Div" => TailOp::Binary(Binary::Div),
            "Min" if n.input.len() == 2 => TailOp::Binary(Binary::Min),
            "Max" if n.input.len() == 2 => TailOp::Binary(Binary::Max),
            "Relu" => TailOp::Relu,
            "Sigmoid" => TailOp::Sigmoid,
            "Clip" if opset >= 11 => TailOp::Clip,
            "Identity" | "Dropout" => TailOp::Identity,
            "Reshape" if int("allowzero", 0) == 0 => TailOp::Reshape,
            "Flatten" => TailOp::Flatten(int("axis", 1)),
            "ReduceMax" | "ReduceMin" | "ReduceSum" | "ReduceMean" => {
                let kind = match n.op_type.as_str() {
                    "ReduceMax" => Reduce::Max,
                    "ReduceMin" => Reduce::Min,
                    "ReduceSum" => Reduce::Sum,
                    _ => Reduce::Mean,
                };
                // Axes as an input (ReduceSum from opset 13, the rest from 18) are not read here.
                if n.input.len() > 1 || int("noop_with_empty_axes", 0) != 0 {
                    return Err(unsupported(format!("{}: axes as an input", n.name)));
                }
                TailOp::Reduce(kind, attr(n, "axes").map(|a| a.ints.clone()), int("keepdims", 1) != 0)
            }
            "GlobalAveragePool" => TailOp::GlobalPool(Reduce::Mean),
            "GlobalMaxPool" => TailOp::GlobalPool(Reduce::Max),
            "Gemm" => TailOp::Gemm {
                alpha: float("alpha", 1.0),
                beta: float("beta", 1.0),
                trans_a: int("transA", 0) != 0,
                trans_b: int("transB", 0) != 0,
            },
            "MatMul" => TailOp::MatMul,
            "Softmax" => TailOp::Softmax(int("axis", if opset >= 13 { -1 } else { 1 })),
            "QuantizeLinear" => {
                // The zero point's type decides the saturation (uint8 without one).
                let signed = match n.input.get(2).filter(|z| !z.is_empty()) {
                    None => false,
                    Some(z) => match graph.initializer.iter().find(|t| &t.name == z) {
                        Some(t) if t.data_type == pb::tensor_proto::DataType::Int8 as i32 => true,
                        Some(t) if t.data_type == pb::tensor_proto::DataType::Uint8 as i32 => false,
                        _ => return Err(unsupported(format!("{}: zero point {z} is not an 8-bit initializer", n.name))),
                    },
                };
                let (lo, hi) = if signed { (-128.0, 127.0) } else { (0.0, 255.0) };
                TailOp::Quantize { lo, hi, axis: int("axis", 1) }
            }
            "DequantizeLinear" => TailOp::Dequantize { axis: int("axis", 1) },
            other => return Err(unsupported(format!("{}: {other} is not an op of the float tail", n.name))),
        })
    }

    /// Runs the tail on its input (NCHW).
    pub fn run(&self, x: ArrayD<f32>) -> Result<Vec<ArrayD<f32>>> {
        let mut values: Vec<Option<ArrayD<f32>>> = vec![None; self.n_values];
        values[0] = Some(x);
        for s in &self.steps {
            let args: Vec<&ArrayD<f32>> = s
                .inputs
                .iter()
                .map(|i| match i {
                    Operand::Value(v) => values[*v].as_ref().expect("computed before use"),
                    Operand::Const(c) => c,
                })
                .collect();
            values[s.output] = Some(eval(&s.op, &args)?);
        }
        let outputs: Vec<ArrayD<f32>> = self.outputs.iter().map(|&o| values[o].clone().expect("computed")).collect();
        // The integer part hands over finite values; only the tail's own float
        // arithmetic (overflow, 0/0) could make a non-finite output.
        if !outputs.iter().all(|y| all_finite(y.iter())) {
            return Err(Error::NonFinite { what: "float tail output".into() });
        }
        Ok(outputs)
    }
}

/// Without an early exit, so that it vectorises.
pub(crate) fn all_finite<'a>(v: impl IntoIterator<Item = &'a f32>) -> bool {
    v.into_iter().fold(true, |ok, x| ok & x.is_finite())
}

fn norm_axis(axis: i64, rank: usize) -> Result<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a as usize >= rank.max(1) {
        return Err(unsupported(format!("axis {axis} out of range for rank {rank}")));
    }
    Ok(a as usize)
}

/// numpy broadcasting of two shapes.
fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
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
fn zip_broadcast(a: &ArrayD<f32>, b: &ArrayD<f32>, f: impl Fn(f32, f32) -> f32) -> Result<ArrayD<f32>> {
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

/// acc[m][n] = Σ_k a[m][k] b[k][n], in k order (no fused multiply-add).
fn matmul2(a: &ArrayD<f32>, b: &ArrayD<f32>) -> Result<ArrayD<f32>> {
    let (sa, sb) = (a.shape(), b.shape());
    if sa.len() != 2 || sb.len() != 2 || sa[1] != sb[0] {
        return Err(unsupported(format!("matrix product of {sa:?} and {sb:?}")));
    }
    let (m, k, n) = (sa[0], sa[1], sb[1]);
    let mut out = ArrayD::zeros(IxDyn(&[m, n]));
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f32;
            for kk in 0..k {
                s += a[[i, kk]] * b[[kk, j]];
            }
            out[[i, j]] = s;
        }
    }
    Ok(out)
}

fn eval(op: &TailOp, args: &[&ArrayD<f32>]) -> Result<ArrayD<f32>> {
    let arg = |i: usize| args.get(i).copied().ok_or_else(|| unsupported(format!("missing input {i}")));
    let x = arg(0)?;
    Ok(match op {
        TailOp::Binary(k) => {
            let f = match k {
                Binary::Add => |a: f32, b: f32| a + b,
                Binary::Sub => |a: f32, b: f32| a - b,
                Binary::Mul => |a: f32, b: f32| a * b,
                Binary::Div => |a: f32, b: f32| a / b,
                Binary::Min => |a: f32, b: f32| a.min(b),
                Binary::Max => |a: f32, b: f32| a.max(b),
            };
            zip_broadcast(x, arg(1)?, f)?
        }
        TailOp::Relu => x.mapv(|v| v.max(0.0)),
        TailOp::Sigmoid => x.mapv(|v| 1.0 / (1.0 + (-v).exp())),
        TailOp::Clip => {
            let bound = |i: usize, d: f32| args.get(i).and_then(|c| c.iter().next().copied()).unwrap_or(d);
            let (lo, hi) = (bound(1, f32::NEG_INFINITY), bound(2, f32::INFINITY));
            x.mapv(|v| v.max(lo).min(hi))
        }
        TailOp::Identity => x.clone(),
        TailOp::Reshape => {
            let spec: Vec<i64> = arg(1)?.iter().map(|&v| v as i64).collect();
            let mut shape: Vec<usize> =
                spec.iter().enumerate().map(|(i, &d)| if d == 0 { x.shape()[i] } else { d.max(1) as usize }).collect();
            if let Some(p) = spec.iter().position(|&d| d == -1) {
                let known: usize = shape.iter().enumerate().filter(|(i, _)| *i != p).map(|(_, d)| d).product();
                shape[p] = x.len().checked_div(known).unwrap_or(0);
            }
            if shape.iter().product::<usize>() != x.len() {
                return Err(unsupported(format!("cannot reshape {:?} to {spec:?}", x.shape())));
            }
            x.as_standard_layout().to_owned().into_shape_with_order(IxDyn(&shape)).map_err(|e| unsupported(e.to_string()))?
        }
        TailOp::Flatten(axis) => {
            let a = if *axis < 0 { axis + x.ndim() as i64 } else { *axis } as usize;
            let outer: usize = x.shape()[..a.min(x.ndim())].iter().product();
            let flat = x.as_standard_layout().to_owned();
            flat.into_shape_with_order(IxDyn(&[outer, x.len() / outer.max(1)])).map_err(|e| unsupported(e.to_string()))?
        }
        TailOp::Reduce(kind, axes, keepdims) => {
            let axes: Vec<usize> = match axes {
                None => (0..x.ndim()).collect(),
                Some(a) => a.iter().map(|&v| norm_axis(v, x.ndim())).collect::<Result<_>>()?,
            };
            reduce(x, *kind, &axes, *keepdims)
        }
        TailOp::GlobalPool(kind) => {
            let axes: Vec<usize> = (2..x.ndim()).collect();
            reduce(x, *kind, &axes, true)
        }
        TailOp::Gemm { alpha, beta, trans_a, trans_b } => {
            let a = if *trans_a { x.t().to_owned() } else { x.clone() };
            let b = arg(1)?;
            let b = if *trans_b { b.t().to_owned() } else { b.clone() };
            let mut y = matmul2(&a, &b)?;
            if *alpha != 1.0 {
                y.mapv_inplace(|v| v * alpha);
            }
            match args.get(2).filter(|c| !c.is_empty()) {
                Some(c) => zip_broadcast(&y, c, |v, c| v + beta * c)?,
                None => y,
            }
        }
        TailOp::MatMul => matmul2(x, arg(1)?)?,
        TailOp::Softmax(axis) => {
            let a = norm_axis(*axis, x.ndim())?;
            let mut y = x.clone();
            for mut lane in y.lanes_mut(Axis(a)) {
                let m = lane.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                lane.mapv_inplace(|v| (v - m).exp());
                let s = lane.sum();
                lane.mapv_inplace(|v| v / s);
            }
            y
        }
        TailOp::Quantize { lo, hi, .. } if args.get(1).is_some_and(|s| s.len() == 1) && args.get(2).is_none_or(|z| z.len() == 1) => {
            let s = arg(1)?.iter().next().copied().expect("one value");
            let z = args.get(2).and_then(|z| z.iter().next().copied()).unwrap_or(0.0);
            x.mapv(|v| (super::kernels::round_half_even(v / s) + z).max(*lo).min(*hi))
        }
        TailOp::Dequantize { .. } if args.get(1).is_some_and(|s| s.len() == 1) && args.get(2).is_none_or(|z| z.len() == 1) => {
            let s = arg(1)?.iter().next().copied().expect("one value");
            let z = args.get(2).and_then(|z| z.iter().next().copied()).unwrap_or(0.0);
            x.mapv(|q| (q - z) * s)
        }
        TailOp::Quantize { lo, hi, axis } => {
            let scale = along_axis(arg(1)?, x, *axis)?;
            let zp = match args.get(2) {
                Some(z) => along_axis(z, x, *axis)?,
                None => ArrayD::from_elem(IxDyn(&[]), 0.0),
            };
            let q = zip_broadcast(x, &scale, |v, s| super::kernels::round_half_even(v / s))?;
            zip_broadcast(&q, &zp, |q, z| (q + z).max(*lo).min(*hi))?
        }
        TailOp::Dequantize { axis } => {
            let scale = along_axis(arg(1)?, x, *axis)?;
            let zp = match args.get(2) {
                Some(z) => along_axis(z, x, *axis)?,
                None => ArrayD::from_elem(IxDyn(&[]), 0.0),
            };
            let centred = zip_broadcast(x, &zp, |q, z| q - z)?;
            zip_broadcast(&centred, &scale, |v, s| v * s)?
        }
    })
}
