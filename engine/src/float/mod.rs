//! The float ops of an INT8 plan: what runs between integer ops in float (instance
//! normalisation, PReLU, sigmoid and exp of a flow's couplings, the squeeze's
//! slices and transposes, a classifier head after the last quantised tensor), run
//! by a small interpreter on NCHW (NCDHW) arrays. Most are a few thousand flops,
//! where tract's per-run bookkeeping cost as much as a whole integer part. The loops
//! are plain scalar code in a fixed order without fused multiply-adds, so the float
//! ops give the same bits on x86-64, aarch64 and armv7. A graph with a float op the
//! interpreter does not know is [`Error::Unsupported`] (the caller may run it elsewhere).
//!
//! This file reads a node into a [`FloatOp`] ([`float_op`]) and dispatches [`eval`];
//! the arithmetic lives by family: [`elementwise`] (broadcast arithmetic, activations,
//! float quantisation), [`movement`] (reshape, transpose, concat, slice, squeeze),
//! [`reduce`] (reductions, pooling, softmax, instance norm), [`linear`] (Gemm, MatMul,
//! Conv).

mod elementwise;
mod linear;
mod movement;
mod reduce;
#[cfg(test)]
mod tests;

use edgemed_onnx::{attr, pb};

use crate::error::{Error, Result};
use crate::ndarray::ArrayD;

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

/// Input `i` of an op, or an error naming it.
fn arg<'a>(args: &[&'a ArrayD<f32>], i: usize) -> Result<&'a ArrayD<f32>> {
    args.get(i).copied().ok_or_else(|| unsupported(format!("missing input {i}")))
}

/// Runs `op` on its inputs (constants included, in the node's input order).
pub fn eval(op: &FloatOp, args: &[&ArrayD<f32>]) -> Result<ArrayD<f32>> {
    let x = arg(args, 0)?;
    let opt = |i: usize| args.get(i).copied();
    match op {
        FloatOp::Binary(k) => elementwise::binary(*k, x, arg(args, 1)?),
        FloatOp::Unary(k) => Ok(elementwise::unary(*k, x)),
        FloatOp::Relu => Ok(x.mapv(|v| v.max(0.0))),
        FloatOp::Sigmoid => Ok(x.mapv(|v| 1.0 / (1.0 + (-v).exp()))),
        FloatOp::LeakyRelu(alpha) => Ok(x.mapv(|v| if v < 0.0 { alpha * v } else { v })),
        FloatOp::PRelu => elementwise::zip_broadcast(x, arg(args, 1)?, |v, s| if v < 0.0 { s * v } else { v }),
        FloatOp::Clip => Ok(elementwise::clip(x, args)),
        FloatOp::Identity => Ok(x.clone()),
        FloatOp::Quantize { lo, hi, axis } => elementwise::quantize(x, args, *lo, *hi, *axis),
        FloatOp::Dequantize { axis } => elementwise::dequantize(x, args, *axis),
        FloatOp::Reshape => movement::reshape(x, arg(args, 1)?),
        FloatOp::Flatten(axis) => movement::flatten(x, *axis),
        FloatOp::Transpose(perm) => movement::transpose(x, perm.as_deref()),
        FloatOp::Concat(axis) => movement::concat(args, *axis),
        FloatOp::Slice(attrs) => movement::slice(x, args, attrs.as_ref()),
        FloatOp::Squeeze(axes, squeeze) => movement::squeeze(x, args, axes.as_deref(), *squeeze),
        FloatOp::Reduce(kind, axes, keepdims) => reduce::reduce_axes(x, *kind, axes.as_deref(), *keepdims),
        FloatOp::GlobalPool(kind) => Ok(reduce::global_pool(x, *kind)),
        FloatOp::Softmax(axis) => reduce::softmax(x, *axis),
        FloatOp::InstanceNorm(eps) => reduce::instance_norm(x, arg(args, 1)?, arg(args, 2)?, *eps),
        FloatOp::Gemm { alpha, beta, trans_a, trans_b } => linear::gemm(x, arg(args, 1)?, opt(2), *alpha, *beta, *trans_a, *trans_b),
        FloatOp::MatMul => linear::matmul2(x, arg(args, 1)?),
        FloatOp::Conv { strides, pads, dilations, group } => {
            linear::conv(x, arg(args, 1)?, opt(2).filter(|b| !b.is_empty()), strides, pads, dilations, *group)
        }
    }
}
