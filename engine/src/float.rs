//! The float ops of an INT8 plan: what runs between integer ops in float (instance
//! normalisation, PReLU, sigmoid and exp of a flow's couplings, the squeeze's
//! slices and transposes, a classifier head after the last quantised tensor), run
//! by a small interpreter on NCHW (NCDHW) arrays. Most are a few thousand flops,
//! where tract's per-run bookkeeping cost as much as a whole integer part. The loops
//! are plain scalar code in a fixed order without fused multiply-adds, so the float
//! ops give the same bits on x86-64, aarch64 and armv7. A graph with a float op the
//! interpreter does not know is left to tract whole.

use edgemed_onnx::{attr, pb};

use crate::error::{Error, Result};
use crate::ndarray::{ArrayD, Axis, IxDyn, Slice};

/// An input of a float op: a value computed by the plan, or a constant folded at load time.
#[derive(Debug, Clone)]
pub enum Operand {
    Value(usize),
    Const(ArrayD<f32>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Min,
    Max,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unary {
    Exp,
    Log,
    Neg,
    Sqrt,
    Tanh,
    Abs,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reduce {
    Max,
    Min,
    Sum,
    Mean,
}

#[derive(Debug, Clone)]
pub enum FloatOp {
    Binary(Binary),
    Unary(Unary),
    Relu,
    LeakyRelu(f32),
    PRelu,
    Sigmoid,
    Clip,
    Identity,
    Reshape,
    Flatten(i64),
    Transpose(Option<Vec<usize>>),
    Concat(i64),
    /// Starts, ends, axes, steps: from inputs 1-4 (opset >= 10) or these attributes.
    Slice(Option<(Vec<i64>, Vec<i64>, Vec<i64>)>),
    /// Axes (from an input when None); true: squeeze.
    Squeeze(Option<Vec<i64>>, bool),
    InstanceNorm(f32),
    /// Strides, pads (begin..., end...), dilations, group; 1-D to 3-D.
    Conv {
        strides: Vec<usize>,
        pads: Vec<usize>,
        dilations: Vec<usize>,
        group: usize,
    },
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

impl FloatOp {
    /// The ONNX operator it runs, for profiles.
    pub fn name(&self) -> &'static str {
        match self {
            FloatOp::Binary(b) => match b {
                Binary::Add => "Add",
                Binary::Sub => "Sub",
                Binary::Mul => "Mul",
                Binary::Div => "Div",
                Binary::Min => "Min",
                Binary::Max => "Max",
            },
            FloatOp::Unary(u) => match u {
                Unary::Exp => "Exp",
                Unary::Log => "Log",
                Unary::Neg => "Neg",
                Unary::Sqrt => "Sqrt",
                Unary::Tanh => "Tanh",
                Unary::Abs => "Abs",
            },
            FloatOp::Relu => "Relu",
            FloatOp::LeakyRelu(_) => "LeakyRelu",
            FloatOp::PRelu => "PRelu",
            FloatOp::Sigmoid => "Sigmoid",
            FloatOp::Clip => "Clip",
            FloatOp::Identity => "Identity",
            FloatOp::Reshape => "Reshape",
            FloatOp::Flatten(_) => "Flatten",
            FloatOp::Transpose(_) => "Transpose",
            FloatOp::Concat(_) => "Concat",
            FloatOp::Slice(_) => "Slice",
            FloatOp::Squeeze(_, true) => "Squeeze",
            FloatOp::Squeeze(_, false) => "Unsqueeze",
            FloatOp::InstanceNorm(_) => "InstanceNormalization",
            FloatOp::Conv { .. } => "Conv",
            FloatOp::Reduce(..) => "Reduce",
            FloatOp::GlobalPool(Reduce::Max) => "GlobalMaxPool",
            FloatOp::GlobalPool(_) => "GlobalAveragePool",
            FloatOp::Gemm { .. } => "Gemm",
            FloatOp::MatMul => "MatMul",
            FloatOp::Softmax(_) => "Softmax",
            FloatOp::Quantize { .. } => "QuantizeLinear",
            FloatOp::Dequantize { .. } => "DequantizeLinear",
        }
    }
}

fn unsupported(reason: impl Into<String>) -> Error {
    Error::Unsupported(reason.into())
}

/// The float op of node `n`; Err names an op (or a form of it) the interpreter does not know.
pub fn float_op(n: &pb::NodeProto, opset: i64, graph: &pb::GraphProto) -> Result<FloatOp> {
    let int = |name: &str, default: i64| attr::int(n, name, default);
    let float = |name: &str, default: f32| attr::float(n, name, default);
    let ints = |name: &str| attr::ints(n, name);
    if n.output.iter().filter(|o| !o.is_empty()).count() > 1 && !matches!(n.op_type.as_str(), "Dropout") {
        return Err(unsupported(format!("{}: {} with several outputs", n.name, n.op_type)));
    }
    Ok(match n.op_type.as_str() {
        "Add" => FloatOp::Binary(Binary::Add),
        "Sub" => FloatOp::Binary(Binary::Sub),
        "Mul" => FloatOp::Binary(Binary::Mul),
        "Div" => FloatOp::Binary(Binary::Div),
        "Min" if n.input.len() == 2 => FloatOp::Binary(Binary::Min),
        "Max" if n.input.len() == 2 => FloatOp::Binary(Binary::Max),
        "Exp" => FloatOp::Unary(Unary::Exp),
        "Log" => FloatOp::Unary(Unary::Log),
        "Neg" => FloatOp::Unary(Unary::Neg),
        "Sqrt" => FloatOp::Unary(Unary::Sqrt),
        "Tanh" => FloatOp::Unary(Unary::Tanh),
        "Abs" => FloatOp::Unary(Unary::Abs),
        "Relu" => FloatOp::Relu,
        "LeakyRelu" => FloatOp::LeakyRelu(float("alpha", 0.01)),
        "PRelu" => FloatOp::PRelu,
        "Sigmoid" => FloatOp::Sigmoid,
        "Clip" if opset >= 11 => FloatOp::Clip,
        "Identity" | "Dropout" => FloatOp::Identity,
        "Reshape" if int("allowzero", 0) == 0 => FloatOp::Reshape,
        "Flatten" => FloatOp::Flatten(int("axis", 1)),
        "Transpose" => FloatOp::Transpose(ints("perm").map(|p| p.iter().map(|&v| v.max(0) as usize).collect())),
        "Concat" => FloatOp::Concat(int("axis", 0)),
        "Slice" if opset >= 10 => FloatOp::Slice(None),
        "Slice" => {
            let (starts, ends) = (ints("starts").unwrap_or_default(), ints("ends").unwrap_or_default());
            let axes = ints("axes").unwrap_or_else(|| (0..starts.len() as i64).collect());
            FloatOp::Slice(Some((starts, ends, axes)))
        }
        "Squeeze" | "Unsqueeze" => FloatOp::Squeeze(if opset >= 13 { None } else { ints("axes") }, n.op_type == "Squeeze"),
        "InstanceNormalization" => FloatOp::InstanceNorm(float("epsilon", 1e-5)),
        "Conv" => {
            if attr::attr(n, "auto_pad").is_some_and(|a| !a.s.is_empty() && a.s != b"NOTSET") {
                return Err(unsupported(format!("{}: Conv with auto_pad", n.name)));
            }
            let u = |v: Vec<i64>| v.iter().map(|&x| x.max(0) as usize).collect::<Vec<_>>();
            FloatOp::Conv {
                strides: u(ints("strides").unwrap_or_default()),
                pads: u(ints("pads").unwrap_or_default()),
                dilations: u(ints("dilations").unwrap_or_default()),
                group: int("group", 1).max(1) as usize,
            }
        }
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
            FloatOp::Reduce(kind, ints("axes"), int("keepdims", 1) != 0)
        }
        "GlobalAveragePool" => FloatOp::GlobalPool(Reduce::Mean),
        "GlobalMaxPool" => FloatOp::GlobalPool(Reduce::Max),
        "Gemm" => FloatOp::Gemm {
            alpha: float("alpha", 1.0),
            beta: float("beta", 1.0),
            trans_a: int("transA", 0) != 0,
            trans_b: int("transB", 0) != 0,
        },
        "MatMul" => FloatOp::MatMul,
        "Softmax" => FloatOp::Softmax(int("axis", if opset >= 13 { -1 } else { 1 })),
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
            FloatOp::Quantize { lo, hi, axis: int("axis", 1) }
        }
        "DequantizeLinear" => FloatOp::Dequantize { axis: int("axis", 1) },
        other => return Err(unsupported(format!("{}: {other} is not a float op edgemed's interpreter knows", n.name))),
    })
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

pub fn eval(op: &FloatOp, args: &[&ArrayD<f32>]) -> Result<ArrayD<f32>> {
    let arg = |i: usize| args.get(i).copied().ok_or_else(|| unsupported(format!("missing input {i}")));
    let x = arg(0)?;
    Ok(match op {
        FloatOp::Binary(k) => {
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
        FloatOp::Relu => x.mapv(|v| v.max(0.0)),
        FloatOp::Sigmoid => x.mapv(|v| 1.0 / (1.0 + (-v).exp())),
        FloatOp::Clip => {
            let bound = |i: usize, d: f32| args.get(i).and_then(|c| c.iter().next().copied()).unwrap_or(d);
            let (lo, hi) = (bound(1, f32::NEG_INFINITY), bound(2, f32::INFINITY));
            x.mapv(|v| v.max(lo).min(hi))
        }
        FloatOp::Identity => x.clone(),
        FloatOp::Reshape => {
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
        FloatOp::Flatten(axis) => {
            let a = if *axis < 0 { axis + x.ndim() as i64 } else { *axis } as usize;
            let outer: usize = x.shape()[..a.min(x.ndim())].iter().product();
            let flat = x.as_standard_layout().to_owned();
            flat.into_shape_with_order(IxDyn(&[outer, x.len() / outer.max(1)])).map_err(|e| unsupported(e.to_string()))?
        }
        FloatOp::Reduce(kind, axes, keepdims) => {
            let axes: Vec<usize> = match axes {
                None => (0..x.ndim()).collect(),
                Some(a) => a.iter().map(|&v| norm_axis(v, x.ndim())).collect::<Result<_>>()?,
            };
            reduce(x, *kind, &axes, *keepdims)
        }
        FloatOp::GlobalPool(kind) => {
            let axes: Vec<usize> = (2..x.ndim()).collect();
            reduce(x, *kind, &axes, true)
        }
        FloatOp::Unary(k) => match k {
            Unary::Exp => x.mapv(f32::exp),
            Unary::Log => x.mapv(f32::ln),
            Unary::Neg => x.mapv(|v| -v),
            Unary::Sqrt => x.mapv(f32::sqrt),
            Unary::Tanh => x.mapv(f32::tanh),
            Unary::Abs => x.mapv(f32::abs),
        },
        FloatOp::LeakyRelu(alpha) => x.mapv(|v| if v < 0.0 { alpha * v } else { v }),
        FloatOp::PRelu => zip_broadcast(x, arg(1)?, |v, s| if v < 0.0 { s * v } else { v })?,
        FloatOp::Transpose(perm) => {
            let perm: Vec<usize> = perm.clone().unwrap_or_else(|| (0..x.ndim()).rev().collect());
            let mut sorted = perm.clone();
            sorted.sort_unstable();
            if sorted != (0..x.ndim()).collect::<Vec<_>>() {
                return Err(unsupported(format!("Transpose: perm {perm:?} for rank {}", x.ndim())));
            }
            x.clone().permuted_axes(IxDyn(&perm)).as_standard_layout().into_owned()
        }
        FloatOp::Concat(axis) => {
            let a = norm_axis(*axis, x.ndim())?;
            let views: Vec<_> = args.iter().map(|v| v.view()).collect();
            crate::ndarray::concatenate(Axis(a), &views).map_err(|e| unsupported(format!("Concat: {e}")))?.as_standard_layout().into_owned()
        }
        FloatOp::Slice(attrs) => {
            let list =
                |i: usize| -> Option<Vec<i64>> { args.get(i).filter(|a| !a.is_empty()).map(|a| a.iter().map(|&v| v as i64).collect()) };
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
                if steps[i] <= 0 {
                    return Err(unsupported("Slice: only positive steps"));
                }
                let dim = x.shape()[ax] as i64;
                let clampi = |p: i64| (if p < 0 { p + dim } else { p }).clamp(0, dim);
                let (b, e) = (clampi(starts[i]), clampi(ends[i]).max(clampi(starts[i])));
                v.slice_axis_inplace(Axis(ax), Slice::new(b as isize, Some(e as isize), steps[i] as isize));
            }
            v.as_standard_layout().into_owned()
        }
        FloatOp::Squeeze(axes, squeeze) => {
            let axes: Vec<i64> = match axes {
                Some(a) => a.clone(),
                None => args.get(1).map(|a| a.iter().map(|&v| v as i64).collect()).unwrap_or_default(),
            };
            let shape: Vec<usize> = if *squeeze {
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
            x.as_standard_layout().into_owned().into_shape_with_order(IxDyn(&shape)).map_err(|e| unsupported(e.to_string()))?
        }
        FloatOp::InstanceNorm(eps) => instance_norm(x, arg(1)?, arg(2)?, *eps)?,
        FloatOp::Conv { strides, pads, dilations, group } => {
            conv(x, arg(1)?, args.get(2).copied().filter(|b| !b.is_empty()), strides, pads, dilations, *group)?
        }
        FloatOp::Gemm { alpha, beta, trans_a, trans_b } => {
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
        FloatOp::MatMul => matmul2(x, arg(1)?)?,
        FloatOp::Softmax(axis) => {
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
        FloatOp::Quantize { lo, hi, .. } if args.get(1).is_some_and(|s| s.len() == 1) && args.get(2).is_none_or(|z| z.len() == 1) => {
            let s = arg(1)?.iter().next().copied().expect("one value");
            let z = args.get(2).and_then(|z| z.iter().next().copied()).unwrap_or(0.0);
            x.mapv(|v| (super::kernels::round_half_even(v / s) + z).max(*lo).min(*hi))
        }
        FloatOp::Dequantize { .. } if args.get(1).is_some_and(|s| s.len() == 1) && args.get(2).is_none_or(|z| z.len() == 1) => {
            let s = arg(1)?.iter().next().copied().expect("one value");
            let z = args.get(2).and_then(|z| z.iter().next().copied()).unwrap_or(0.0);
            x.mapv(|q| (q - z) * s)
        }
        FloatOp::Quantize { lo, hi, axis } => {
            let scale = along_axis(arg(1)?, x, *axis)?;
            let zp = match args.get(2) {
                Some(z) => along_axis(z, x, *axis)?,
                None => ArrayD::from_elem(IxDyn(&[]), 0.0),
            };
            let q = zip_broadcast(x, &scale, |v, s| super::kernels::round_half_even(v / s))?;
            zip_broadcast(&q, &zp, |q, z| (q + z).max(*lo).min(*hi))?
        }
        FloatOp::Dequantize { axis } => {
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

/// y = scale (x - mean) / sqrt(var + eps) + bias over each [n, c] plane; sums in f64
/// (a 32^3 plane has 32k terms), the normalisation in f32.
fn instance_norm(x: &ArrayD<f32>, scale: &ArrayD<f32>, bias: &ArrayD<f32>, eps: f32) -> Result<ArrayD<f32>> {
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
        let mean = p.iter().map(|&v| v as f64).sum::<f64>() / plane as f64;
        let var = p.iter().map(|&v| (v as f64 - mean) * (v as f64 - mean)).sum::<f64>() / plane as f64;
        let (mean, inv) = (mean as f32, 1.0 / (var as f32 + eps).sqrt());
        for v in p.iter_mut() {
            *v = (*v - mean) * inv * scale[ch] + bias[ch];
        }
    }
    Ok(y)
}

/// A direct float convolution, 1-D to 3-D (as 3-D with unit depth/height), for convs a
/// QDQ graph leaves in float. Sums in a fixed order, without fused multiply-adds.
fn conv(
    x: &ArrayD<f32>,
    w: &ArrayD<f32>,
    bias: Option<&ArrayD<f32>>,
    strides: &[usize],
    pads: &[usize],
    dilations: &[usize],
    group: usize,
) -> Result<ArrayD<f32>> {
    let r = x.ndim();
    if !(3..=5).contains(&r) || w.ndim() != r || x.shape()[0] != 1 {
        return Err(unsupported(format!("float Conv of {:?} with weights {:?}", x.shape(), w.shape())));
    }
    let sp = r - 2;
    let get = |v: &[usize], i: usize, d: usize| v.get(i).copied().unwrap_or(d);
    // Spatial sizes padded to 3 axes in front.
    let lift = |s: &[usize]| -> [usize; 3] {
        let mut o = [1; 3];
        o[3 - s.len()..].copy_from_slice(s);
        o
    };
    let (cin, cout) = (x.shape()[1], w.shape()[0]);
    let cin_g = w.shape()[1];
    if group == 0 || cin != cin_g * group || cout % group != 0 || bias.is_some_and(|b| b.len() != cout) {
        return Err(unsupported(format!("float Conv: {cin} input channels, weights {:?}, group {group}", w.shape())));
    }
    let inp = lift(&x.shape()[2..]);
    let k = lift(&w.shape()[2..]);
    let (mut st, mut pb, mut pe, mut dl) = ([1; 3], [0; 3], [0; 3], [1; 3]);
    for i in 0..sp {
        let a = 3 - sp + i;
        st[a] = get(strides, i, 1).max(1);
        dl[a] = get(dilations, i, 1).max(1);
        pb[a] = get(pads, i, 0);
        pe[a] = get(pads, i + sp, 0);
    }
    let mut out = [1usize; 3];
    for a in 0..3 {
        let span = dl[a] * (k[a] - 1) + 1;
        let padded = inp[a] + pb[a] + pe[a];
        if padded < span {
            return Err(unsupported("float Conv: kernel larger than the padded input"));
        }
        out[a] = (padded - span) / st[a] + 1;
    }
    let (xs, ws) = (x.as_standard_layout(), w.as_standard_layout());
    let (xd, wd) = (xs.as_slice().expect("standard"), ws.as_slice().expect("standard"));
    let cout_g = cout / group;
    let kvol = k[0] * k[1] * k[2];
    let ivol = inp[0] * inp[1] * inp[2];
    let ovol = out[0] * out[1] * out[2];
    let mut y = vec![0f32; cout * ovol];
    for oc in 0..cout {
        let g = oc / cout_g;
        let b = bias.map_or(0.0, |b| b.as_slice().map_or_else(|| b.iter().nth(oc).copied().unwrap_or(0.0), |s| s[oc]));
        for oz in 0..out[0] {
            for oy in 0..out[1] {
                for ox in 0..out[2] {
                    let mut s = 0f32;
                    for ic in 0..cin_g {
                        let xc = &xd[(g * cin_g + ic) * ivol..][..ivol];
                        let wk = &wd[(oc * cin_g + ic) * kvol..][..kvol];
                        for a in 0..k[0] {
                            let iz = (oz * st[0] + a * dl[0]) as isize - pb[0] as isize;
                            if iz < 0 || iz >= inp[0] as isize {
                                continue;
                            }
                            for bb in 0..k[1] {
                                let iy = (oy * st[1] + bb * dl[1]) as isize - pb[1] as isize;
                                if iy < 0 || iy >= inp[1] as isize {
                                    continue;
                                }
                                for cc in 0..k[2] {
                                    let ix = (ox * st[2] + cc * dl[2]) as isize - pb[2] as isize;
                                    if ix < 0 || ix >= inp[2] as isize {
                                        continue;
                                    }
                                    s += xc[(iz as usize * inp[1] + iy as usize) * inp[2] + ix as usize] * wk[(a * k[1] + bb) * k[2] + cc];
                                }
                            }
                        }
                    }
                    y[(oc * out[0] + oz) * out[1] * out[2] + oy * out[2] + ox] = s + b;
                }
            }
        }
    }
    let mut shape = vec![1, cout];
    shape.extend_from_slice(&out[3 - sp..]);
    Ok(ArrayD::from_shape_vec(IxDyn(&shape), y).expect("sized"))
}
