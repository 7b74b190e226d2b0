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
//! Conv, ConvTranspose), [`shape_ops`] (what exporters emit to compute shapes: Gather,
//! Range, ConstantOfShape, Expand, Where, Cast, and Pad and nearest Resize).
//!
//! Values are f32 whatever their ONNX type. Integer tensors (int64 shapes, bools) are
//! exact up to 2^24, far above any size the engine plans; ops whose integer semantics
//! differ from float ones have their own variant ([`Binary::IntDiv`], [`FloatOp::Cast`]),
//! which the compiler picks when it folds integer-typed constants.

mod elementwise;
mod linear;
mod movement;
mod reduce;

pub use reduce::{instance_apply, instance_stats};
mod shape_ops;
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
    /// Div of integer tensors: truncates toward zero (ONNX Div on int64).
    IntDiv,
    Min,
    Max,
    /// Comparisons give bools as 1.0 / 0.0.
    Equal,
    Less,
    Greater,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unary {
    Exp,
    Log,
    Neg,
    Sqrt,
    Tanh,
    Abs,
    Floor,
    Ceil,
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
    /// Reshape; `true`: allowzero (a 0 in the shape is an empty dim, not "keep").
    Reshape(bool),
    Flatten(i64),
    Transpose(Option<Vec<usize>>),
    Concat(i64),
    /// Starts, ends, axes, steps: from inputs 1-4 (opset >= 10) or these attributes.
    Slice(Option<(Vec<i64>, Vec<i64>, Vec<i64>)>),
    /// Axes (from an input when None); true: squeeze.
    Squeeze(Option<Vec<i64>>, bool),
    InstanceNorm(f32),
    /// Inference-mode batch norm (epsilon): per channel, from the running statistics.
    BatchNorm(f32),
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
    /// Transposed convolution, 1-D to 3-D: strides, pads (begin..., end...),
    /// dilations, output padding, group. Weights are [Cin, Cout / group, k...].
    ConvTranspose {
        strides: Vec<usize>,
        pads: Vec<usize>,
        dilations: Vec<usize>,
        output_padding: Vec<usize>,
        group: usize,
    },
    Cast(CastTo),
    /// Gather along the axis with indices from input 1 (negative ones count from the end).
    Gather(i64),
    /// Where(condition, x, y), the three broadcast together.
    Where,
    Range,
    /// The fill value (ConstantOfShape's `value`, 0 by default).
    ConstantOfShape(f32),
    Expand,
    /// Constant-mode Pad (or `edge`: the border value repeated): pads and value from
    /// attributes (opset < 11) or inputs 1-3.
    Pad {
        pads: Option<Vec<i64>>,
        value: f32,
        edge: bool,
    },
    /// MaxPool over the spatial axes (1-D to 3-D): kernel, strides, pads (begins then ends).
    MaxPool {
        kernel: Vec<usize>,
        strides: Vec<usize>,
        pads: Vec<usize>,
    },
    /// Nearest-neighbour Resize / Upsample; scales from the attribute (Upsample-7) or inputs.
    Resize(Resize),
}

/// What a Cast converts to: floats keep their value (float16 is not rounded), integers
/// truncate toward zero, bools are 1.0 where the value is not 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CastTo {
    Float,
    Int,
    Bool,
}

/// How Resize maps an output coordinate to the input (`coordinate_transformation_mode`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Coordinates {
    HalfPixel,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfHalfPixelForNn,
}

/// How a fractional input coordinate picks its neighbour (`nearest_mode`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Nearest {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Resize {
    pub coordinates: Coordinates,
    pub nearest: Nearest,
    /// Upsample-7's `scales` attribute; otherwise scales or sizes come from the inputs.
    pub scales: Option<Vec<f32>>,
    /// Where the scales input is (Resize-10 and Upsample-9: 1; Resize-11 and later: 2,
    /// with sizes at 3).
    pub scales_input: usize,
}

impl FloatOp {
    /// The ONNX operator it runs, for profiles.
    pub fn name(&self) -> &'static str {
        match self {
            FloatOp::Binary(b) => match b {
                Binary::Add => "Add",
                Binary::Sub => "Sub",
                Binary::Mul => "Mul",
                Binary::Div | Binary::IntDiv => "Div",
                Binary::Min => "Min",
                Binary::Max => "Max",
                Binary::Equal => "Equal",
                Binary::Less => "Less",
                Binary::Greater => "Greater",
            },
            FloatOp::Unary(u) => match u {
                Unary::Exp => "Exp",
                Unary::Log => "Log",
                Unary::Neg => "Neg",
                Unary::Sqrt => "Sqrt",
                Unary::Tanh => "Tanh",
                Unary::Abs => "Abs",
                Unary::Floor => "Floor",
                Unary::Ceil => "Ceil",
            },
            FloatOp::Relu => "Relu",
            FloatOp::LeakyRelu(_) => "LeakyRelu",
            FloatOp::PRelu => "PRelu",
            FloatOp::Sigmoid => "Sigmoid",
            FloatOp::Clip => "Clip",
            FloatOp::Identity => "Identity",
            FloatOp::Reshape(_) => "Reshape",
            FloatOp::Flatten(_) => "Flatten",
            FloatOp::Transpose(_) => "Transpose",
            FloatOp::Concat(_) => "Concat",
            FloatOp::Slice(_) => "Slice",
            FloatOp::Squeeze(_, true) => "Squeeze",
            FloatOp::Squeeze(_, false) => "Unsqueeze",
            FloatOp::InstanceNorm(_) => "InstanceNormalization",
            FloatOp::BatchNorm(_) => "BatchNormalization",
            FloatOp::Conv { .. } => "Conv",
            FloatOp::Reduce(..) => "Reduce",
            FloatOp::GlobalPool(Reduce::Max) => "GlobalMaxPool",
            FloatOp::GlobalPool(_) => "GlobalAveragePool",
            FloatOp::Gemm { .. } => "Gemm",
            FloatOp::MatMul => "MatMul",
            FloatOp::Softmax(_) => "Softmax",
            FloatOp::Quantize { .. } => "QuantizeLinear",
            FloatOp::Dequantize { .. } => "DequantizeLinear",
            FloatOp::ConvTranspose { .. } => "ConvTranspose",
            FloatOp::Cast(_) => "Cast",
            FloatOp::Gather(_) => "Gather",
            FloatOp::Where => "Where",
            FloatOp::Range => "Range",
            FloatOp::ConstantOfShape(_) => "ConstantOfShape",
            FloatOp::Expand => "Expand",
            FloatOp::Pad { .. } => "Pad",
            FloatOp::MaxPool { .. } => "MaxPool",
            FloatOp::Resize(_) => "Resize",
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
        "Floor" => FloatOp::Unary(Unary::Floor),
        "Ceil" => FloatOp::Unary(Unary::Ceil),
        "Equal" => FloatOp::Binary(Binary::Equal),
        "Less" => FloatOp::Binary(Binary::Less),
        "Greater" => FloatOp::Binary(Binary::Greater),
        "Relu" => FloatOp::Relu,
        "LeakyRelu" => FloatOp::LeakyRelu(float("alpha", 0.01)),
        "PRelu" => FloatOp::PRelu,
        "Sigmoid" => FloatOp::Sigmoid,
        "Clip" if opset >= 11 => FloatOp::Clip,
        "Identity" | "Dropout" => FloatOp::Identity,
        "Reshape" => FloatOp::Reshape(int("allowzero", 0) != 0),
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
        // Inference mode (one output: nodes with several are refused above).
        "BatchNormalization" => FloatOp::BatchNorm(float("epsilon", 1e-5)),
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
            // Axes as an input (ReduceSum from opset 13, the rest from 18) are input 1 of
            // `eval` (None here); without them, noop_with_empty_axes would make it an identity.
            if int("noop_with_empty_axes", 0) != 0 {
                return Err(unsupported(format!("{}: noop_with_empty_axes", n.name)));
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
        "ConvTranspose" => {
            if attr::attr(n, "auto_pad").is_some_and(|a| !a.s.is_empty() && a.s != b"NOTSET") || attr::attr(n, "output_shape").is_some() {
                return Err(unsupported(format!("{}: ConvTranspose with auto_pad or output_shape", n.name)));
            }
            let u = |v: Vec<i64>| v.iter().map(|&x| x.max(0) as usize).collect::<Vec<_>>();
            FloatOp::ConvTranspose {
                strides: u(ints("strides").unwrap_or_default()),
                pads: u(ints("pads").unwrap_or_default()),
                dilations: u(ints("dilations").unwrap_or_default()),
                output_padding: u(ints("output_padding").unwrap_or_default()),
                group: int("group", 1).max(1) as usize,
            }
        }
        "Cast" => {
            use pb::tensor_proto::DataType as T;
            match T::try_from(int("to", 0) as i32) {
                Ok(T::Float | T::Double | T::Float16 | T::Bfloat16) => FloatOp::Cast(CastTo::Float),
                Ok(T::Bool) => FloatOp::Cast(CastTo::Bool),
                Ok(T::Int8 | T::Uint8 | T::Int16 | T::Uint16 | T::Int32 | T::Uint32 | T::Int64 | T::Uint64) => FloatOp::Cast(CastTo::Int),
                _ => return Err(unsupported(format!("{}: Cast to type {}", n.name, int("to", 0)))),
            }
        }
        "Gather" => FloatOp::Gather(int("axis", 0)),
        "Where" => FloatOp::Where,
        "Range" => FloatOp::Range,
        "ConstantOfShape" => {
            let value = match attr::attr(n, "value").and_then(|a| a.t.as_ref()) {
                None => 0.0,
                Some(t) => match edgemed_onnx::tensor::decode(t) {
                    Ok(d) if d.values.len() == 1 => d.values.to_f32()[0],
                    _ => return Err(unsupported(format!("{}: ConstantOfShape value of an unread type", n.name))),
                },
            };
            FloatOp::ConstantOfShape(value)
        }
        "Expand" => FloatOp::Expand,
        "Pad" => {
            let mode = attr::attr(n, "mode").map(|a| a.s.clone()).unwrap_or_default();
            let edge = mode == b"edge";
            if !mode.is_empty() && mode != b"constant" && !edge {
                return Err(unsupported(format!("{}: Pad mode {}", n.name, String::from_utf8_lossy(&mode))));
            }
            if opset < 11 {
                FloatOp::Pad { pads: Some(ints("pads").unwrap_or_default()), value: float("value", 0.0), edge }
            } else {
                FloatOp::Pad { pads: None, value: 0.0, edge }
            }
        }
        "MaxPool" => {
            let kernel: Vec<usize> = ints("kernel_shape").unwrap_or_default().iter().map(|&k| k.max(0) as usize).collect();
            let sp = kernel.len();
            let strides = ints("strides").unwrap_or(vec![1; sp]).iter().map(|&v| v.max(0) as usize).collect::<Vec<_>>();
            let pads = ints("pads").unwrap_or(vec![0; 2 * sp]).iter().map(|&v| v.max(0) as usize).collect::<Vec<_>>();
            let auto_pad = attr::attr(n, "auto_pad").is_some_and(|a| !a.s.is_empty() && a.s != b"NOTSET");
            let dilated = ints("dilations").is_some_and(|d| d.iter().any(|&v| v != 1));
            if sp == 0 || kernel.contains(&0) || strides.len() != sp || strides.contains(&0) || pads.len() != 2 * sp {
                return Err(Error::Invalid(format!("{}: MaxPool kernel {kernel:?}, strides {strides:?}, pads {pads:?}", n.name)));
            }
            if auto_pad || dilated || int("ceil_mode", 0) != 0 || n.output.iter().filter(|o| !o.is_empty()).count() > 1 {
                return Err(unsupported(format!("{}: MaxPool with auto_pad, dilations, ceil_mode or indices", n.name)));
            }
            FloatOp::MaxPool { kernel, strides, pads }
        }
        "Resize" | "Upsample" => FloatOp::Resize(shape_ops::resize_op(n, opset)?),
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
        FloatOp::Reshape(allowzero) => movement::reshape(x, arg(args, 1)?, *allowzero),
        FloatOp::Flatten(axis) => movement::flatten(x, *axis),
        FloatOp::Transpose(perm) => movement::transpose(x, perm.as_deref()),
        FloatOp::Concat(axis) => movement::concat(args, *axis),
        FloatOp::Slice(attrs) => movement::slice(x, args, attrs.as_ref()),
        FloatOp::Squeeze(axes, squeeze) => movement::squeeze(x, args, axes.as_deref(), *squeeze),
        FloatOp::Reduce(kind, axes, keepdims) => {
            // Axes from input 1 where the node has them as an input (absent or empty: all).
            let from_input: Option<Vec<i64>> = opt(1).filter(|a| !a.is_empty()).map(|a| a.iter().map(|&v| v as i64).collect());
            reduce::reduce_axes(x, *kind, axes.as_deref().or(from_input.as_deref()), *keepdims)
        }
        FloatOp::GlobalPool(kind) => Ok(reduce::global_pool(x, *kind)),
        FloatOp::Softmax(axis) => reduce::softmax(x, *axis),
        FloatOp::InstanceNorm(eps) => reduce::instance_norm(x, arg(args, 1)?, arg(args, 2)?, *eps),
        FloatOp::BatchNorm(eps) => reduce::batch_norm(x, [arg(args, 1)?, arg(args, 2)?, arg(args, 3)?, arg(args, 4)?], *eps),
        FloatOp::Gemm { alpha, beta, trans_a, trans_b } => linear::gemm(x, arg(args, 1)?, opt(2), *alpha, *beta, *trans_a, *trans_b),
        FloatOp::MatMul => linear::matmul2(x, arg(args, 1)?),
        FloatOp::Conv { strides, pads, dilations, group } => {
            linear::conv(x, arg(args, 1)?, opt(2).filter(|b| !b.is_empty()), strides, pads, dilations, *group)
        }
        FloatOp::ConvTranspose { strides, pads, dilations, output_padding, group } => {
            let geometry = linear::TransposedGeometry { strides, pads, dilations, output_padding, group: *group };
            linear::conv_transpose(x, arg(args, 1)?, opt(2).filter(|b| !b.is_empty()), &geometry)
        }
        FloatOp::Cast(to) => Ok(shape_ops::cast(x, *to)),
        FloatOp::Gather(axis) => shape_ops::gather(x, arg(args, 1)?, *axis),
        FloatOp::Where => shape_ops::where_(x, arg(args, 1)?, arg(args, 2)?),
        FloatOp::Range => shape_ops::range(x, arg(args, 1)?, arg(args, 2)?),
        FloatOp::ConstantOfShape(value) => shape_ops::constant_of_shape(x, *value),
        FloatOp::Expand => shape_ops::expand(x, arg(args, 1)?),
        FloatOp::Pad { pads, value, edge } => shape_ops::pad(x, args, pads.as_deref(), *value, *edge),
        FloatOp::MaxPool { kernel, strides, pads } => reduce::max_pool(x, kernel, strides, pads),
        FloatOp::Resize(r) => shape_ops::resize(x, args, r),
    }
}
