//! From a QDQ ONNX graph (what `edgemed quantize` writes, and ONNX Runtime's QDQ
//! format) to a plan of fused integer ops with float ops between them. Patterns
//! recognised, in graph order:
//!
//! - `QuantizeLinear(f)` of a float value (the model input, or the output of a float
//!   op): f quantised to a u8 tensor, channels last (NCHW -> NHWC, NCDHW -> NDHWC).
//! - `DequantizeLinear(q)` of a u8 tensor: a float view of it, free while only
//!   integer ops read it.
//! - `Conv(DQ(x), DQ(w int8), bias) [-> Relu] [-> Min(bound) | Clip] -> QuantizeLinear`:
//!   one fused conv (2-D dense or depthwise, 3-D, or transposed), int32 accumulation,
//!   requantisation, the activation as a clamp in the quantised domain (exact:
//!   quantisation is monotone).
//! - `DQ(q) -> Relu / Min / Clip ... -> QuantizeLinear`: a per-channel lookup table
//!   (256 entries), computed with the same float operations, so it is exact.
//! - `Add(DQ(a), DQ(b)) -> QuantizeLinear`: an element-wise quantised add.
//! - `Gemm` / `MatMul` of a [1, K] tensor by int8 weights: a pointwise conv on one pixel.
//! - Data movement (`Concat`, `Reshape`, `Transpose`, `Slice`, `Flatten`, `Squeeze`,
//!   `Unsqueeze`) of DQ views: byte copies, found by running the ops on index arrays
//!   at load time; a chain re-quantised with its own parameters between ops (a pixel
//!   shuffle's Reshape, Transpose, Reshape through rank-8 values) is one copy.
//! - `GlobalAveragePool` (exact integer sums), `ReduceMax` (group pooling: the max of
//!   bytes, since dequantisation is monotone), `Mul` by a constant (a circular mask: one
//!   table per distinct factor).
//!
//! Every other node is a float op ([`super::float`]) on NCHW arrays: the u8 tensors
//! it reads are dequantised where it needs them, a conv whose output it reads is
//! computed in integers and dequantised with its bias and activation, and a
//! QuantizeLinear of its output makes a u8 tensor again. Instance normalisation and
//! PReLU between a U-Net's convs, a flow's coupling arithmetic, a classifier head all
//! run this way. A graph with a float op the interpreter does not know, or a form of
//! quantisation the engine does not read, is refused with the reason, and the caller
//! falls back to tract for the whole model.

use std::collections::{HashMap, HashSet};

use edgemed_onnx::{attr, pb, tensor};

use super::float::{self, FloatOp, Operand};
use super::kernels::{self, ConvGeometry, DepthwiseWeights, Isa, PackedWeights, Requant};
use crate::error::{Error, Result};
use crate::model::OnnxModel;
use crate::ndarray::{ArrayD, IxDyn};

/// A float initializer or a folded DequantizeLinear of one.
#[derive(Debug, Clone)]
struct Const {
    shape: Vec<usize>,
    data: Vec<f32>,
    /// The int8 values, scales and scale axis when it is DQ(int8 initializer) (a quantised weight).
    int8: Option<(Vec<i8>, Vec<f32>, usize)>,
}

/// A u8 tensor of the plan, channels last. 3-D volumes keep depth x height in `h`
/// (the plan's `shapes` has the NC... shape); the integer ops that care (3-D convs)
/// carry their own geometry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QTensor {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub scale: f32,
    pub zp: u8,
}

impl QTensor {
    pub fn len(&self) -> usize {
        self.c * self.h * self.w
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn deq(&self, q: u8) -> f32 {
        (q as i32 - self.zp as i32) as f32 * self.scale
    }

    /// The table taking this tensor's bytes to bytes quantised with (s, z): the
    /// dequantise-then-quantise of a QDQ pair; None where the parameters are the same.
    fn requant_table(&self, s: f32, z: u8) -> Option<Vec<u8>> {
        (self.scale != s || self.zp != z).then(|| (0..=255u8).map(|q| kernels::quantize_u8(self.deq(q), s, z)).collect())
    }

    /// The tensor holding a float value of `shape` ([1, C, spatial...], rank 2 to 5).
    fn of_shape(shape: &[usize], scale: f32, zp: u8) -> Option<QTensor> {
        if !(2..=5).contains(&shape.len()) || shape[0] != 1 {
            return None;
        }
        let (h, w) = match shape.len() {
            2 => (1, 1),
            3 => (1, shape[2]),
            _ => (shape[2..shape.len() - 1].iter().product(), shape[shape.len() - 1]),
        };
        Some(QTensor { c: shape[1], h, w, scale, zp })
    }
}

#[derive(Debug, Clone)]
pub enum ConvKind {
    Dense(PackedWeights),
    Depthwise(DepthwiseWeights),
}

/// Sizes of a 3-D convolution (a transposed one: input and output swap roles in the
/// index arithmetic, o = i * stride - pad + tap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry3 {
    pub input: [usize; 3],
    pub cin: usize,
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    /// Padding before each axis (the output sizes fix the rest).
    pub pads: [usize; 3],
    pub output: [usize; 3],
}

impl Geometry3 {
    pub fn taps(&self) -> usize {
        self.kernel.iter().product()
    }
}

/// How a convolution's int32 sums are formed from the 2-D kernels.
#[derive(Debug, Clone)]
pub enum ConvLayout {
    /// A 2-D convolution (or a 1x1x1 one) on the channels-last input, read in place.
    Direct(ConvGeometry),
    /// A 3-D convolution: each output plane's patches gathered into rows (padding as
    /// the zero point), then multiplied as a pointwise conv on the rows (`plane`).
    Planes { g: Geometry3, plane: ConvGeometry },
    /// A transposed convolution: every input pixel times every tap's weights (a
    /// pointwise product with taps x cout columns, `cols`), each tap's columns then
    /// added into the output pixel it lands on, less zp * Σw for that tap.
    Transposed { g: Geometry3, cols: ConvGeometry, col_offset: Vec<i32> },
}

impl ConvLayout {
    /// Output pixels (voxels).
    pub fn pixels(&self) -> usize {
        match self {
            ConvLayout::Direct(g) => g.oh * g.ow,
            ConvLayout::Planes { g, .. } | ConvLayout::Transposed { g, .. } => g.output.iter().product(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            ConvLayout::Direct(g) => format!("{}x{}/{}", g.kh, g.kw, g.stride[0]),
            ConvLayout::Planes { g, .. } => format!("{}x{}x{}/{} 3-D", g.kernel[0], g.kernel[1], g.kernel[2], g.stride[0]),
            ConvLayout::Transposed { g, .. } => format!("{}x{}x{}/{} transposed", g.kernel[0], g.kernel[1], g.kernel[2], g.stride[0]),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConvOp {
    pub src: usize,
    pub dst: usize,
    pub layout: ConvLayout,
    pub kind: ConvKind,
    pub requant: Requant,
    pub name: String,
    pub macs: u64,
}

#[derive(Debug, Clone)]
pub enum Op {
    Conv(Box<ConvOp>),
    /// dst[.., c] = table[c * 256 + src[.., c]]
    Lut {
        src: usize,
        dst: usize,
        table: Vec<u8>,
    },
    Add {
        a: usize,
        b: usize,
        dst: usize,
    },
    /// Data movement (Concat, Reshape, Transpose, Slice, Flatten...): byte copies.
    Gather(Box<GatherOp>),
    /// GlobalAveragePool: an exact integer sum per channel, requantised.
    MeanPool {
        src: usize,
        dst: usize,
    },
    /// ReduceMax (a group pooling over each field's rotations): dst byte j is the
    /// largest of src bytes `index[j * group..(j + 1) * group]`, through `table`
    /// where dst's parameters differ (dequantisation is monotone, so the max commutes).
    GatherMax {
        src: usize,
        dst: usize,
        group: usize,
        index: Vec<u32>,
        table: Option<Vec<u8>>,
    },
    /// Multiplication by a constant (a circular mask): dst byte j is
    /// `tables[select[j] * 256 + src[j]]`, one table per distinct factor, each
    /// computed with the float ops' dequantise, multiply, quantise (so exact).
    Multiply {
        src: usize,
        dst: usize,
        tables: Vec<u8>,
        select: Vec<u8>,
    },
}

/// dst = bytes of `srcs` copied as `copies` says, each source through its
/// requantisation table where its scale or zero point differs from dst's (the same
/// dequantise-then-quantise a float op would do, so exact).
#[derive(Debug, Clone)]
pub struct GatherOp {
    pub srcs: Vec<usize>,
    pub dst: usize,
    pub copies: Copies,
    pub tables: Vec<Option<Vec<u8>>>,
    /// The ONNX ops it replaces, e.g. `Reshape+Transpose+Reshape`.
    pub what: String,
}

#[derive(Debug, Clone)]
pub enum Copies {
    /// Runs of consecutive bytes (a channel concat, a slice of channels), covering dst in order.
    Runs(Vec<GatherRun>),
    /// Byte by byte, per source (dst byte, source byte): channels-last transposes
    /// (a pixel shuffle, fields regrouped) move single bytes.
    Bytes(Vec<Vec<(u32, u32)>>),
}

/// `len` bytes of source `src` (an index into [`GatherOp::srcs`]) from byte `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatherRun {
    pub src: u32,
    pub from: u32,
    pub len: u32,
}

impl Op {
    /// Tensors the op reads.
    pub fn sources(&self) -> Vec<usize> {
        match self {
            Op::Conv(c) => vec![c.src],
            Op::Lut { src, .. } => vec![*src],
            Op::Add { a, b, .. } => vec![*a, *b],
            Op::Gather(g) => g.srcs.clone(),
            Op::MeanPool { src, .. } | Op::GatherMax { src, .. } | Op::Multiply { src, .. } => vec![*src],
        }
    }

    /// The tensor the op writes.
    pub fn destination(&self) -> usize {
        match self {
            Op::Conv(c) => c.dst,
            Op::Lut { dst, .. } | Op::Add { dst, .. } | Op::MeanPool { dst, .. } | Op::GatherMax { dst, .. } | Op::Multiply { dst, .. } => {
                *dst
            }
            Op::Gather(g) => g.dst,
        }
    }

    pub fn macs(&self) -> u64 {
        match self {
            Op::Conv(c) => c.macs,
            _ => 0,
        }
    }
}

/// A convolution with a float output: f = clamp((acc - offset) * mult + bias, lo, hi),
/// mult = s_x s_w, exactly the DequantizeLinear -> Conv -> activation of the graph
/// (with an exact integer sum where a float conv would round as it adds). While
/// compiling, a conv awaiting its QuantizeLinear (which turns it into a [`ConvOp`]);
/// in a plan, a conv whose output a float op reads.
#[derive(Debug, Clone)]
pub struct FloatConv {
    pub src: usize,
    pub layout: ConvLayout,
    pub kind: ConvKind,
    pub offset: Vec<i32>,
    pub mult: Vec<f32>,
    pub bias: Vec<f32>,
    /// Activation bounds so far (Relu, Min, Clip).
    pub lo: Vec<f32>,
    pub hi: Vec<f32>,
    /// The output's NC... shape.
    pub shape: Vec<usize>,
    pub name: String,
    pub macs: u64,
}

/// One step of a plan. Integer tensors live in reused buffers (the engine's memory
/// plan), float values in arrays dropped after their last reader.
#[derive(Debug, Clone)]
pub enum Step {
    Int(Op),
    /// Float value `src` (NC...) quantised into tensor `dst`.
    Quantize {
        src: usize,
        dst: usize,
    },
    /// Tensor `src` dequantised into float value `dst` (NC...).
    Dequantize {
        src: usize,
        dst: usize,
    },
    /// A convolution run in integers whose output a float op reads.
    ConvToFloat {
        conv: Box<FloatConv>,
        dst: usize,
    },
    Float {
        op: FloatOp,
        inputs: Vec<Operand>,
        dst: usize,
        name: String,
    },
}

impl Step {
    pub fn macs(&self) -> u64 {
        match self {
            Step::Int(op) => op.macs(),
            Step::ConvToFloat { conv, .. } => conv.macs,
            _ => 0,
        }
    }

    /// Tensors the step reads.
    pub fn tensor_sources(&self) -> Vec<usize> {
        match self {
            Step::Int(op) => op.sources(),
            Step::Dequantize { src, .. } => vec![*src],
            Step::ConvToFloat { conv, .. } => vec![conv.src],
            _ => vec![],
        }
    }

    /// The tensor the step writes.
    pub fn tensor_destination(&self) -> Option<usize> {
        match self {
            Step::Int(op) => Some(op.destination()),
            Step::Quantize { dst, .. } => Some(*dst),
            _ => None,
        }
    }

    /// Float values the step reads.
    pub fn float_sources(&self) -> Vec<usize> {
        match self {
            Step::Quantize { src, .. } => vec![*src],
            Step::Float { inputs, .. } => inputs
                .iter()
                .filter_map(|i| match i {
                    Operand::Value(v) => Some(*v),
                    Operand::Const(_) => None,
                })
                .collect(),
            _ => vec![],
        }
    }
}

/// A compiled model.
#[derive(Debug, Clone)]
pub struct Plan {
    pub tensors: Vec<QTensor>,
    /// The NC... shape of each tensor (batch 1).
    pub shapes: Vec<Vec<usize>>,
    /// The shape of each float value; value 0 is the model input.
    pub float_shapes: Vec<Vec<usize>>,
    pub steps: Vec<Step>,
    /// Float values returned, in the graph's output order.
    pub outputs: Vec<usize>,
    pub macs: u64,
}

impl Plan {
    pub fn input_shape(&self) -> &[usize] {
        &self.float_shapes[0]
    }

    /// Integer steps (ops on u8 tensors, conversions excluded) and float ops.
    pub fn counts(&self) -> (usize, usize) {
        let int = self.steps.iter().filter(|s| matches!(s, Step::Int(_) | Step::ConvToFloat { .. })).count();
        let float = self.steps.iter().filter(|s| matches!(s, Step::Float { .. })).count();
        (int, float)
    }

    /// A one-line description of `step` for profiles, e.g. `conv 3x3/2 depthwise 48 -> 48 at 11x11`.
    pub fn label(&self, step: &Step) -> String {
        let t = |i: usize| self.tensors[i];
        let at = |i: usize| self.shapes[i][2..].iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
        let conv_label = |layout: &ConvLayout, kind: &ConvKind, cin: usize, cout: usize| {
            let k = match (layout, kind) {
                (ConvLayout::Direct(g), ConvKind::Dense(_)) if g.is_pointwise() => "pointwise",
                (_, ConvKind::Dense(_)) => "dense",
                (_, ConvKind::Depthwise(_)) => "depthwise",
            };
            format!("conv {} {k} {cin} -> {cout}", layout.describe())
        };
        match step {
            Step::Int(Op::Conv(c)) => format!("{} at {}", conv_label(&c.layout, &c.kind, t(c.src).c, t(c.dst).c), at(c.dst)),
            Step::Int(Op::Lut { dst, .. }) => format!("table (activation) {} at {}", t(*dst).c, at(*dst)),
            Step::Int(Op::Add { dst, .. }) => format!("add {} at {}", t(*dst).c, at(*dst)),
            Step::Int(Op::Gather(g)) => format!("move ({}) {} at {}", g.what, t(g.dst).c, at(g.dst)),
            Step::Int(Op::MeanPool { src, dst }) => format!("global average pool {} at {}", t(*dst).c, at(*src)),
            Step::Int(Op::GatherMax { dst, group, .. }) => format!("max of {group} {} at {}", t(*dst).c, at(*dst)),
            Step::Int(Op::Multiply { dst, tables, .. }) => {
                format!("multiply ({} factors) {} at {}", tables.len() / 256, t(*dst).c, at(*dst))
            }
            Step::Quantize { dst, .. } => format!("quantize {} at {}", t(*dst).c, at(*dst)),
            Step::Dequantize { src, .. } => format!("dequantize {} at {}", t(*src).c, at(*src)),
            Step::ConvToFloat { conv, .. } => {
                format!("{} to float at {:?}", conv_label(&conv.layout, &conv.kind, t(conv.src).c, conv.mult.len()), &conv.shape[2..])
            }
            Step::Float { op, dst, .. } => format!("float {} -> {:?}", op.name(), self.float_shapes[*dst]),
        }
    }
}

#[derive(Debug, Clone)]
enum Val {
    Const(Const),
    /// A u8 tensor (the output of a QuantizeLinear) or its DequantizeLinear view.
    Int(usize),
    /// A float value of the plan.
    Float(usize),
    /// A float value awaiting its QuantizeLinear: a conv with its activation bounds so far.
    PendingConv {
        conv: Box<FloatConv>,
    },
    /// Element-wise float ops on a u8 tensor's view, awaiting QuantizeLinear.
    PendingMap {
        src: usize,
        steps: Vec<MapStep>,
    },
    PendingAdd {
        a: usize,
        b: usize,
    },
    /// Data movement on u8 tensors' views, awaiting QuantizeLinear.
    PendingMove(Box<Move>),
    /// A QuantizeLinear of pending data movement with its sources' scale and zero point
    /// (so the same bytes): kept pending, so that a chain of moves (a pixel shuffle's
    /// Reshape, Transpose, Reshape, with rank-8 values between) is one gather.
    QuantizedMove(Box<Move>),
    /// GlobalAveragePool of a u8 tensor's view, awaiting QuantizeLinear.
    PendingMeanPool {
        src: usize,
    },
    /// ReduceMax (`op`) of data movement on u8 tensors, awaiting QuantizeLinear.
    PendingMax {
        m: Box<Move>,
        op: FloatOp,
    },
    /// A u8 tensor's view times a constant, awaiting QuantizeLinear.
    PendingMul {
        src: usize,
        factor: ArrayD<f32>,
    },
}

/// Ops that only move values: on u8 tensors they are byte copies (a U-Net's Concat, a
/// pixel shuffle's Reshape/Transpose, a flow's Slice, a classifier's Flatten).
const DATA_MOVEMENT: &[&str] = &["Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Concat"];

/// A tree of data-movement ops whose leaves are u8 tensors.
#[derive(Debug, Clone)]
enum Move {
    Tensor(usize),
    Op { op: FloatOp, args: Vec<MoveArg>, name: String },
}

#[derive(Debug, Clone)]
enum MoveArg {
    Move(Move),
    /// A shape, starts and ends, axes.
    Const(ArrayD<f32>),
}

impl Move {
    /// The tensors it reads, each once, in first-read order.
    fn tensors(&self, out: &mut Vec<usize>) {
        match self {
            Move::Tensor(t) if !out.contains(t) => out.push(*t),
            Move::Tensor(_) => {}
            Move::Op { args, .. } => args.iter().for_each(|a| {
                if let MoveArg::Move(m) = a {
                    m.tensors(out)
                }
            }),
        }
    }

    fn names(&self) -> Vec<&'static str> {
        match self {
            Move::Tensor(_) => vec![],
            Move::Op { op, args, .. } => {
                let mut v: Vec<&'static str> =
                    args.iter().filter_map(|a| if let MoveArg::Move(m) = a { Some(m.names()) } else { None }).flatten().collect();
                v.push(op.name());
                v
            }
        }
    }
}

#[derive(Debug, Clone)]
enum MapStep {
    Relu,
    /// Per channel (or one value for all).
    Min(Vec<f32>),
    Clip(f32, f32),
}

fn unsupported(reason: impl Into<String>) -> Error {
    Error::Unsupported(reason.into())
}

struct Compiler<'m> {
    graph: &'m pb::GraphProto,
    opset: i64,
    inits: HashMap<&'m str, &'m pb::TensorProto>,
    vals: HashMap<String, Val>,
    tensors: Vec<QTensor>,
    shapes: Vec<Vec<usize>>,
    float_shapes: Vec<Vec<usize>>,
    steps: Vec<Step>,
    uses: HashMap<&'m str, usize>,
    /// Names of DequantizeLinear views (float values) of u8 tensors.
    float_views: HashSet<String>,
    /// The float value each tensor was dequantised into (once, however many float ops read it).
    dequantised: HashMap<usize, usize>,
    /// MACs of convolutions left in float (weights not int8, grouped 3-D...).
    float_macs: u64,
    /// The kernels the weights are packed for.
    isa: Isa,
}

impl<'m> Compiler<'m> {
    fn konst(&self, name: &str) -> Option<Const> {
        match self.vals.get(name) {
            Some(Val::Const(c)) => Some(c.clone()),
            Some(_) => None,
            None => {
                let t = self.inits.get(name)?;
                let d = tensor::decode(t).ok()?;
                Some(Const { shape: d.shape, data: d.values.to_f32(), int8: None })
            }
        }
    }

    /// Scale and zero point of a Q/DQ node when the engine's u8 tensors can carry
    /// them (per tensor, u8 zero point); None: the node stays a float op.
    fn qparams(&self, n: &pb::NodeProto) -> Option<(f32, u8)> {
        let s = n.input.get(1).and_then(|s| self.konst(s))?;
        if s.data.len() != 1 || !(s.data[0] > 0.0 && s.data[0].is_finite()) {
            return None;
        }
        let zp = match n.input.get(2).filter(|z| !z.is_empty()) {
            None => 0,
            Some(z) => {
                let t = self.inits.get(z.as_str())?;
                if t.data_type != pb::tensor_proto::DataType::Uint8 as i32 {
                    return None;
                }
                tensor::decode(t).ok()?.values.to_f32().first().copied().unwrap_or(0.0) as u8
            }
        };
        Some((s.data[0], zp))
    }

    /// The u8 tensor `name` is (or is a view of). Data movement still pending is done
    /// here, when its sources share one scale and zero point.
    fn int_of(&mut self, name: &str) -> Option<usize> {
        match self.vals.get(name).cloned() {
            Some(Val::Int(t)) => Some(t),
            Some(Val::PendingMove(m) | Val::QuantizedMove(m)) => {
                let (s, z) = self.move_params(&m)?;
                let dst = self.gather(&m, s, z).ok()??;
                if matches!(self.vals.get(name), Some(Val::PendingMove(_))) {
                    self.float_views.insert(name.to_string());
                }
                self.vals.insert(name.to_string(), Val::Int(dst));
                Some(dst)
            }
            _ => None,
        }
    }

    /// The scale and zero point of every tensor `m` reads, if they share them.
    fn move_params(&self, m: &Move) -> Option<(f32, u8)> {
        let mut srcs = Vec::new();
        m.tensors(&mut srcs);
        let p = |t: usize| (self.tensors[t].scale, self.tensors[t].zp);
        let first = p(*srcs.first()?);
        srcs.iter().all(|&t| p(t) == first).then_some(first)
    }

    fn new_tensor(&mut self, t: QTensor, shape: Vec<usize>) -> usize {
        self.tensors.push(t);
        self.shapes.push(shape);
        self.tensors.len() - 1
    }

    fn new_float(&mut self, shape: Vec<usize>) -> usize {
        self.float_shapes.push(shape);
        self.float_shapes.len() - 1
    }

    /// The float value of tensor `t`, dequantised (NC...) the first time a float op reads it.
    fn dequantised(&mut self, t: usize) -> usize {
        if let Some(&f) = self.dequantised.get(&t) {
            return f;
        }
        let f = self.new_float(self.shapes[t].clone());
        self.steps.push(Step::Dequantize { src: t, dst: f });
        self.dequantised.insert(t, f);
        f
    }

    /// Appends a float op; its output's shape is found by running it on zeros.
    fn push_float(&mut self, op: FloatOp, inputs: Vec<Operand>, name: &str) -> Result<usize> {
        let zeros: Vec<ArrayD<f32>> = inputs
            .iter()
            .map(|i| match i {
                Operand::Value(v) => ArrayD::zeros(IxDyn(&self.float_shapes[*v])),
                Operand::Const(c) => c.clone(),
            })
            .collect();
        let args: Vec<&ArrayD<f32>> = zeros.iter().collect();
        let shape = float::eval(&op, &args).map_err(|e| unsupported(format!("{name}: {e}")))?.shape().to_vec();
        // Each output element takes one weight per input channel and tap, or per k.
        let per_output = match op {
            FloatOp::Conv { .. } => args.get(1).map_or(0, |w| w.len() / w.shape().first().copied().unwrap_or(1).max(1)),
            FloatOp::Gemm { .. } | FloatOp::MatMul => args.get(1).map_or(0, |b| b.len() / shape.last().copied().unwrap_or(1).max(1)),
            _ => 0,
        };
        self.float_macs += (shape.iter().product::<usize>() * per_output) as u64;
        let dst = self.new_float(shape);
        self.steps.push(Step::Float { op, inputs, dst, name: name.to_string() });
        Ok(dst)
    }

    /// The float value `name`, computing what the integer part kept pending: a conv
    /// (in integers, dequantised), a table's float ops, an add.
    fn float_of(&mut self, name: &str) -> Result<usize> {
        let f = match self.vals.get(name).cloned() {
            Some(Val::Float(f)) => return Ok(f),
            Some(Val::Int(t)) if self.float_views.contains(name) => return Ok(self.dequantised(t)),
            Some(Val::Int(_) | Val::QuantizedMove(_)) => {
                return Err(unsupported(format!("{name}: a u8 tensor read by a float op without DequantizeLinear")))
            }
            Some(Val::PendingConv { conv }) => {
                let f = self.new_float(conv.shape.clone());
                self.steps.push(Step::ConvToFloat { conv, dst: f });
                f
            }
            Some(Val::PendingMap { src, steps }) => {
                let mut f = self.dequantised(src);
                let rank = self.shapes[src].len();
                for s in steps {
                    let scalar = |v: f32| Operand::Const(ArrayD::from_elem(IxDyn(&[]), v));
                    let (op, extra) = match s {
                        MapStep::Relu => (FloatOp::Relu, vec![]),
                        MapStep::Clip(lo, hi) => (FloatOp::Clip, vec![scalar(lo), scalar(hi)]),
                        MapStep::Min(b) if b.len() == 1 => (FloatOp::Binary(float::Binary::Min), vec![scalar(b[0])]),
                        MapStep::Min(b) => {
                            let mut shape = vec![1; rank];
                            shape[1] = b.len();
                            (
                                FloatOp::Binary(float::Binary::Min),
                                vec![Operand::Const(ArrayD::from_shape_vec(IxDyn(&shape), b).expect("sized"))],
                            )
                        }
                    };
                    let inputs = std::iter::once(Operand::Value(f)).chain(extra).collect();
                    f = self.push_float(op, inputs, name)?;
                }
                f
            }
            Some(Val::PendingAdd { a, b }) => {
                let (fa, fb) = (self.dequantised(a), self.dequantised(b));
                self.push_float(FloatOp::Binary(float::Binary::Add), vec![Operand::Value(fa), Operand::Value(fb)], name)?
            }
            // Bytes move faster than floats: gathered, then dequantised (exact, where
            // the sources share their parameters), else moved in float.
            Some(Val::PendingMove(m)) => match self.int_of(name) {
                Some(t) => return Ok(self.dequantised(t)),
                None => self.move_to_float(&m)?,
            },
            Some(Val::PendingMeanPool { src }) => {
                let f = self.dequantised(src);
                self.push_float(FloatOp::GlobalPool(float::Reduce::Mean), vec![Operand::Value(f)], name)?
            }
            Some(Val::PendingMax { m, op, .. }) => {
                let f = self.move_to_float(&m)?;
                self.push_float(op, vec![Operand::Value(f)], name)?
            }
            Some(Val::PendingMul { src, factor }) => {
                let f = self.dequantised(src);
                self.push_float(FloatOp::Binary(float::Binary::Mul), vec![Operand::Value(f), Operand::Const(factor)], name)?
            }
            Some(Val::Const(_)) | None => return Err(unsupported(format!("{name}: not a value the engine computes"))),
        };
        self.vals.insert(name.to_string(), Val::Float(f));
        Ok(f)
    }

    /// Data movement `m` run as float ops on dequantised tensors (for a float op that reads it).
    fn move_to_float(&mut self, m: &Move) -> Result<usize> {
        match m {
            Move::Tensor(t) => Ok(self.dequantised(*t)),
            Move::Op { op, args, name } => {
                let mut inputs = Vec::with_capacity(args.len());
                for a in args {
                    inputs.push(match a {
                        MoveArg::Const(c) => Operand::Const(c.clone()),
                        MoveArg::Move(m) => Operand::Value(self.move_to_float(m)?),
                    });
                }
                self.push_float(op.clone(), inputs, name)
            }
        }
    }

    /// A data-movement node whose data inputs are u8 tensors' views (or pending moves
    /// of them) and whose other inputs are constants: a pending move. Ok(false): a float op.
    fn data_movement(&mut self, n: &pb::NodeProto) -> Result<bool> {
        let Ok(op) = float::float_op(n, self.opset, self.graph) else { return Ok(false) };
        let data_inputs = if n.op_type == "Concat" { n.input.len() } else { 1 };
        let mut args = Vec::with_capacity(n.input.len());
        for (i, name) in n.input.iter().enumerate() {
            args.push(if i < data_inputs {
                match self.move_of(name) {
                    Some(m) => MoveArg::Move(m),
                    None => return Ok(false),
                }
            } else if name.is_empty() {
                MoveArg::Const(ArrayD::zeros(IxDyn(&[0])))
            } else {
                match self.konst(name) {
                    Some(c) => {
                        MoveArg::Const(ArrayD::from_shape_vec(IxDyn(&c.shape), c.data).map_err(|e| unsupported(format!("{name}: {e}")))?)
                    }
                    None => return Ok(false),
                }
            });
        }
        let out = n.output.first().cloned().unwrap_or_default();
        self.vals.insert(out, Val::PendingMove(Box::new(Move::Op { op, args, name: n.name.clone() })));
        Ok(true)
    }

    /// Runs `m` on index arrays: each element of the result says which byte of which
    /// source tensor it is (channels-last offsets after each tensor's base).
    fn move_indices(&self, m: &Move, srcs: &[usize], bases: &[usize]) -> Result<ArrayD<f32>> {
        match m {
            Move::Tensor(t) => {
                let k = srcs.iter().position(|s| s == t).expect("listed by Move::tensors");
                let (c, pixels) = (self.tensors[*t].c, self.tensors[*t].h * self.tensors[*t].w);
                // NC... order: element (ch, p) is byte p * c + ch of the channels-last tensor.
                let v: Vec<f32> = (0..c).flat_map(|ch| (0..pixels).map(move |p| (bases[k] + p * c + ch) as f32)).collect();
                Ok(ArrayD::from_shape_vec(IxDyn(&self.shapes[*t]), v).expect("sized"))
            }
            Move::Op { op, args, name } => {
                let mut vals = Vec::with_capacity(args.len());
                for a in args {
                    vals.push(match a {
                        MoveArg::Const(c) => c.clone(),
                        MoveArg::Move(m) => self.move_indices(m, srcs, bases)?,
                    });
                }
                float::eval(op, &vals.iter().collect::<Vec<_>>()).map_err(|e| unsupported(format!("{name}: {e}")))
            }
        }
    }

    /// Data movement `m` quantised with (s, z): byte copies into a new tensor. None
    /// where the result is no tensor of the plan, or too large for exact f32 indices.
    fn gather(&mut self, m: &Move, s: f32, z: u8) -> Result<Option<usize>> {
        let mut srcs = Vec::new();
        m.tensors(&mut srcs);
        let mut bases = Vec::with_capacity(srcs.len());
        let mut total = 0usize;
        for &t in &srcs {
            bases.push(total);
            total += self.tensors[t].len();
        }
        // Every index below 2^24 is an exact f32.
        if total >= 1 << 24 {
            return Ok(None);
        }
        let idx = self.move_indices(m, &srcs, &bases)?;
        let shape = idx.shape().to_vec();
        let Some(t) = QTensor::of_shape(&shape, s, z) else { return Ok(None) };
        let idx = idx.as_standard_layout();
        let idx = idx.as_slice().expect("standard layout");
        let (c, pixels) = (t.c, t.h * t.w);
        let mut runs: Vec<GatherRun> = Vec::new();
        for p in 0..pixels {
            for ch in 0..c {
                let g = idx[ch * pixels + p] as usize;
                let k = bases.partition_point(|&b| b <= g) - 1;
                let from = (g - bases[k]) as u32;
                match runs.last_mut() {
                    Some(r) if r.src == k as u32 && r.from + r.len == from => r.len += 1,
                    _ => runs.push(GatherRun { src: k as u32, from, len: 1 }),
                }
            }
        }
        let tables = srcs.iter().map(|&src| self.tensors[src].requant_table(s, z)).collect();
        // A run costs a call to memcpy: short runs go byte by byte.
        let copies = if runs.len() * 16 > t.len() {
            let mut bytes = vec![Vec::new(); srcs.len()];
            let mut o = 0u32;
            for r in &runs {
                bytes[r.src as usize].extend((0..r.len).map(|i| (o + i, r.from + i)));
                o += r.len;
            }
            Copies::Bytes(bytes)
        } else {
            Copies::Runs(runs)
        };
        let dst = self.new_tensor(t, shape);
        let what = m.names().join("+");
        self.steps.push(Step::Int(Op::Gather(Box::new(GatherOp { srcs, dst, copies, tables, what }))));
        Ok(Some(dst))
    }

    /// A data input of a node as data movement: a u8 tensor's view or a pending move.
    fn move_of(&self, name: &str) -> Option<Move> {
        match self.vals.get(name) {
            Some(Val::Int(t)) if self.float_views.contains(name) => Some(Move::Tensor(*t)),
            Some(Val::PendingMove(m)) => Some((**m).clone()),
            _ => None,
        }
    }

    /// ReduceMax `op` of `m` quantised with (s, z), or None (several sources, indices
    /// too large for f32, axes out of range, a result that is no tensor of the plan).
    fn gather_max(&mut self, m: &Move, op: &FloatOp, s: f32, z: u8) -> Result<Option<usize>> {
        let FloatOp::Reduce(float::Reduce::Max, axes, keepdims) = op else { unreachable!("a ReduceMax") };
        let mut srcs = Vec::new();
        m.tensors(&mut srcs);
        let [src] = srcs[..] else { return Ok(None) };
        let st = self.tensors[src];
        if st.len() >= 1 << 24 {
            return Ok(None);
        }
        let idx = self.move_indices(m, &srcs, &[0])?;
        // Reduced axes last: each output element's group is then contiguous, in the
        // output's order (with or without keepdims).
        let rank = idx.ndim();
        let axes: Vec<usize> = match axes {
            None => (0..rank).collect(),
            Some(a) => a.iter().map(|&v| if v < 0 { v + rank as i64 } else { v } as usize).collect(),
        };
        if axes.iter().any(|&a| a >= rank) {
            return Ok(None);
        }
        let axes = &axes[..];
        let kept: Vec<usize> = (0..rank).filter(|a| !axes.contains(a)).collect();
        let order: Vec<usize> = kept.iter().chain(axes).copied().collect();
        let group: usize = axes.iter().map(|&a| idx.shape()[a]).product();
        let shape: Vec<usize> = match *keepdims {
            true => (0..rank).map(|a| if axes.contains(&a) { 1 } else { idx.shape()[a] }).collect(),
            false => kept.iter().map(|&a| idx.shape()[a]).collect(),
        };
        let grouped = idx.permuted_axes(IxDyn(&order)).as_standard_layout().into_owned();
        let grouped = grouped.as_slice().expect("standard layout");
        let Some(t) = QTensor::of_shape(&shape, s, z) else { return Ok(None) };
        let (c, pixels) = (t.c, t.h * t.w);
        let mut index = Vec::with_capacity(t.len() * group);
        for p in 0..pixels {
            for ch in 0..c {
                let nc = ch * pixels + p;
                index.extend(grouped[nc * group..(nc + 1) * group].iter().map(|&v| v as u32));
            }
        }
        let table = st.requant_table(s, z);
        let dst = self.new_tensor(t, shape);
        self.steps.push(Step::Int(Op::GatherMax { src, dst, group, index, table }));
        Ok(Some(dst))
    }

    /// `src` times `factor` quantised with (s, z): one table per distinct factor, or None
    /// where there are more than 256 of them.
    fn multiply(&mut self, src: usize, factor: &ArrayD<f32>, s: f32, z: u8) -> Result<Option<usize>> {
        let st = self.tensors[src];
        let shape = self.shapes[src].clone();
        let Some(f) = factor.broadcast(IxDyn(&shape)) else { return Ok(None) };
        let f = f.as_standard_layout();
        let f = f.as_slice().expect("standard layout");
        let (c, pixels) = (st.c, st.h * st.w);
        let mut ids: HashMap<u32, u8> = HashMap::new();
        let mut tables = Vec::new();
        let mut select = Vec::with_capacity(st.len());
        for p in 0..pixels {
            for ch in 0..c {
                let v = f[ch * pixels + p];
                let id = match ids.get(&v.to_bits()) {
                    Some(&id) => id,
                    None if ids.len() < 256 => {
                        let id = ids.len() as u8;
                        ids.insert(v.to_bits(), id);
                        tables.extend((0..=255u8).map(|q| kernels::quantize_u8(st.deq(q) * v, s, z)));
                        id
                    }
                    None => return Ok(None),
                };
                select.push(id);
            }
        }
        let dst = self.new_tensor(QTensor { scale: s, zp: z, ..st }, shape);
        self.steps.push(Step::Int(Op::Multiply { src, dst, tables, select }));
        Ok(Some(dst))
    }

    /// `Gemm(DQ(x), DQ(w int8), c)` or `MatMul(DQ(x), DQ(w int8))` on a [1, K] tensor: a
    /// pending pointwise conv on one pixel. Ok(false): a float op.
    fn gemm(&mut self, n: &pb::NodeProto) -> Result<bool> {
        let inp = |i: usize| n.input.get(i).map(|s| s.as_str()).unwrap_or("");
        let Some(src) = self.int_of(inp(0)) else { return Ok(false) };
        let Some(w) = self.konst(inp(1)) else { return Ok(false) };
        let Some((wq, wscale, waxis)) = w.int8.clone() else { return Ok(false) };
        let x = self.tensors[src];
        let is_gemm = n.op_type == "Gemm";
        let trans_b = is_gemm && attr::int_opt(n, "transB").unwrap_or(0) != 0;
        let plain = !is_gemm
            || attr::int_opt(n, "transA").unwrap_or(0) == 0
                && n.attribute.iter().find(|a| a.name == "alpha").is_none_or(|a| a.f == 1.0)
                && n.attribute.iter().find(|a| a.name == "beta").is_none_or(|a| a.f == 1.0);
        if !plain || self.shapes[src].len() != 2 || w.shape.len() != 2 {
            return Ok(false);
        }
        let k = x.c;
        let (cout, wk) = if trans_b { (w.shape[0], w.shape[1]) } else { (w.shape[1], w.shape[0]) };
        // Per-channel scales must run along the output features.
        if wk != k || (wscale.len() > 1 && waxis != if trans_b { 0 } else { 1 }) {
            return Ok(false);
        }
        let bias = match n.input.get(2).filter(|b| is_gemm && !b.is_empty()) {
            None => vec![0.0; cout],
            Some(b) => match self.konst(b) {
                Some(c) if c.data.len() == cout && c.shape.iter().rev().skip(1).all(|&d| d == 1) => c.data,
                Some(c) if c.data.len() == 1 => vec![c.data[0]; cout],
                _ => return Ok(false),
            },
        };
        let rows: Vec<i8> = (0..cout * k).map(|i| if trans_b { wq[i] } else { wq[(i % k) * cout + i / k] }).collect();
        let pw = PackedWeights::new(self.isa, rows, cout, 1, k);
        let zp = x.zp as i32;
        let offset = pw.sums().iter().map(|s| s * zp).collect();
        let sw = |c: usize| if wscale.len() == 1 { wscale[0] } else { wscale[c] };
        let conv = FloatConv {
            src,
            layout: ConvLayout::Direct(ConvGeometry::new(1, 1, k, 1, 1, [1, 1], [0; 4]).expect("1x1 fits")),
            kind: ConvKind::Dense(pw),
            offset,
            mult: (0..cout).map(|c| x.scale * sw(c)).collect(),
            bias,
            lo: vec![f32::NEG_INFINITY; cout],
            hi: vec![f32::INFINITY; cout],
            shape: vec![1, cout],
            name: n.name.clone(),
            macs: (k * cout) as u64,
        };
        let out = n.output.first().cloned().unwrap_or_default();
        self.vals.insert(out, Val::PendingConv { conv: Box::new(conv) });
        Ok(true)
    }

    /// Node `n` as a float op (constants folded).
    fn float_node(&mut self, n: &pb::NodeProto) -> Result<()> {
        let op = float::float_op(n, self.opset, self.graph)?;
        let mut inputs = Vec::with_capacity(n.input.len());
        for name in &n.input {
            inputs.push(if name.is_empty() {
                Operand::Const(ArrayD::zeros(IxDyn(&[0])))
            } else if let Some(c) = self.konst(name) {
                Operand::Const(ArrayD::from_shape_vec(IxDyn(&c.shape), c.data).map_err(|e| unsupported(format!("{name}: {e}")))?)
            } else {
                Operand::Value(self.float_of(name)?)
            });
        }
        let out = n.output.first().cloned().ok_or_else(|| unsupported(format!("{}: no output", n.name)))?;
        if inputs.iter().all(|i| matches!(i, Operand::Const(_))) {
            // Constant folding (shapes, weights' arithmetic) with the same code.
            let args: Vec<&ArrayD<f32>> = inputs.iter().filter_map(|i| if let Operand::Const(c) = i { Some(c) } else { None }).collect();
            let v = float::eval(&op, &args).map_err(|e| unsupported(format!("{}: {e}", n.name)))?;
            let shape = v.shape().to_vec();
            self.vals.insert(out, Val::Const(Const { shape, data: v.iter().copied().collect(), int8: None }));
        } else {
            let f = self.push_float(op, inputs, &n.name)?;
            self.vals.insert(out, Val::Float(f));
        }
        Ok(())
    }

    /// Handles one node as (part of) an integer pattern; Ok(false): a float op.
    fn node(&mut self, n: &pb::NodeProto) -> Result<bool> {
        let out = n.output.first().cloned().unwrap_or_default();
        let inp = |i: usize| n.input.get(i).map(|s| s.as_str()).unwrap_or("");
        match n.op_type.as_str() {
            "DequantizeLinear" => {
                if let Some(t) = self.inits.get(inp(0)) {
                    // A constant: fold (int8 weights keep their integers and scales).
                    let tensor::Tensor { shape, values: d, .. } = tensor::decode(t)?;
                    let s = self.konst(inp(1)).ok_or_else(|| unsupported(format!("{}: scale is not a constant", n.name)))?;
                    let zp = match n.input.get(2).filter(|z| !z.is_empty()) {
                        Some(z) => self.konst(z).map(|c| c.data).unwrap_or_default(),
                        None => vec![],
                    };
                    let axis = attr::int_opt(n, "axis").unwrap_or(1);
                    let vals = d.to_f32();
                    let per = s.data.len();
                    let ax = if axis < 0 { axis + shape.len() as i64 } else { axis }.max(0) as usize;
                    let inner =
                        if per == 1 || shape.is_empty() { vals.len() } else { shape[ax.min(shape.len() - 1) + 1..].iter().product() };
                    if per > 1 && (ax >= shape.len() || shape[ax] != per) {
                        return Err(unsupported(format!("{}: {per} scales for axis {axis} of {shape:?}", n.name)));
                    }
                    let data: Vec<f32> = vals
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| {
                            let c = if per == 1 { 0 } else { (i / inner) % per };
                            (v - zp.get(c).copied().unwrap_or(0.0)) * s.data[c]
                        })
                        .collect();
                    let int8 = if t.data_type == pb::tensor_proto::DataType::Int8 as i32 && zp.iter().all(|&z| z == 0.0) {
                        Some((vals.iter().map(|&v| v as i8).collect(), s.data.clone(), if per == 1 { 0 } else { ax }))
                    } else {
                        None
                    };
                    self.vals.insert(out, Val::Const(Const { shape, data, int8 }));
                    return Ok(true);
                }
                if let Some(Val::QuantizedMove(m)) = self.vals.get(inp(0)) {
                    if self.qparams(n).is_some() && self.qparams(n) == self.move_params(m) {
                        self.vals.insert(out, Val::PendingMove(m.clone()));
                        return Ok(true);
                    }
                }
                let Some(t) = self.int_of(inp(0)) else { return Ok(false) };
                if self.qparams(n) != Some((self.tensors[t].scale, self.tensors[t].zp)) {
                    return Ok(false);
                }
                self.float_views.insert(out.clone());
                self.vals.insert(out, Val::Int(t));
                Ok(true)
            }
            "QuantizeLinear" => {
                let Some((s, z)) = self.qparams(n) else { return Ok(false) };
                let src = inp(0).to_string();
                match self.vals.get(&src).cloned() {
                    Some(Val::PendingConv { conv }) => {
                        let p = *conv;
                        let t = QTensor::of_shape(&p.shape, s, z).expect("conv outputs are [1, C, ...]");
                        let dst = self.new_tensor(t, p.shape.clone());
                        let q = |v: f32| kernels::quantize_u8(v, s, z);
                        let requant = Requant {
                            offset: p.offset,
                            mult: p.mult.iter().map(|m| m / s).collect(),
                            bias: p.bias.iter().map(|b| b / s).collect(),
                            out_zp: z as f32,
                            lo: p.lo.iter().map(|&v| if v == f32::NEG_INFINITY { 0 } else { q(v) }).collect(),
                            hi: p.hi.iter().map(|&v| if v == f32::INFINITY { 255 } else { q(v) }).collect(),
                        };
                        let op = ConvOp { src: p.src, dst, layout: p.layout, kind: p.kind, requant, name: p.name, macs: p.macs };
                        self.steps.push(Step::Int(Op::Conv(Box::new(op))));
                        self.vals.insert(out, Val::Int(dst));
                        return Ok(true);
                    }
                    Some(Val::PendingMap { src, steps }) => {
                        let st = self.tensors[src];
                        let dst = self.new_tensor(QTensor { scale: s, zp: z, ..st }, self.shapes[src].clone());
                        let mut table = vec![0u8; st.c * 256];
                        for c in 0..st.c {
                            for qv in 0..256usize {
                                let mut v = st.deq(qv as u8);
                                for step in &steps {
                                    v = match step {
                                        MapStep::Relu => v.max(0.0),
                                        MapStep::Min(b) => v.min(if b.len() == 1 { b[0] } else { b[c] }),
                                        MapStep::Clip(lo, hi) => v.clamp(*lo, *hi),
                                    };
                                }
                                table[c * 256 + qv] = kernels::quantize_u8(v, s, z);
                            }
                        }
                        self.steps.push(Step::Int(Op::Lut { src, dst, table }));
                        self.vals.insert(out, Val::Int(dst));
                        return Ok(true);
                    }
                    Some(Val::PendingAdd { a, b }) => {
                        let ta = self.tensors[a];
                        let dst = self.new_tensor(QTensor { scale: s, zp: z, ..ta }, self.shapes[a].clone());
                        self.steps.push(Step::Int(Op::Add { a, b, dst }));
                        self.vals.insert(out, Val::Int(dst));
                        return Ok(true);
                    }
                    Some(Val::PendingMove(m)) => {
                        if self.move_params(&m) == Some((s, z)) {
                            self.vals.insert(out, Val::QuantizedMove(m));
                            return Ok(true);
                        }
                        if let Some(dst) = self.gather(&m, s, z)? {
                            self.vals.insert(out, Val::Int(dst));
                            return Ok(true);
                        }
                    }
                    Some(Val::PendingMax { m, op }) => {
                        if let Some(dst) = self.gather_max(&m, &op, s, z)? {
                            self.vals.insert(out, Val::Int(dst));
                            return Ok(true);
                        }
                    }
                    Some(Val::PendingMul { src, factor }) => {
                        if let Some(dst) = self.multiply(src, &factor, s, z)? {
                            self.vals.insert(out, Val::Int(dst));
                            return Ok(true);
                        }
                    }
                    Some(Val::PendingMeanPool { src }) => {
                        let mut shape = self.shapes[src].clone();
                        shape[2..].iter_mut().for_each(|d| *d = 1);
                        let dst = self.new_tensor(QTensor { h: 1, w: 1, scale: s, zp: z, ..self.tensors[src] }, shape);
                        self.steps.push(Step::Int(Op::MeanPool { src, dst }));
                        self.vals.insert(out, Val::Int(dst));
                        return Ok(true);
                    }
                    Some(Val::Int(t)) if self.tensors[t].scale == s && self.tensors[t].zp == z => {
                        self.vals.insert(out, Val::Int(t));
                        return Ok(true);
                    }
                    _ => {}
                }
                // A float value (the model input, a float op's output, a tensor dequantised
                // with other parameters): quantised into a new tensor.
                let Ok(f) = self.float_of(&src) else { return Ok(false) };
                let shape = self.float_shapes[f].clone();
                let Some(t) = QTensor::of_shape(&shape, s, z) else { return Ok(false) };
                let dst = self.new_tensor(t, shape);
                self.steps.push(Step::Quantize { src: f, dst });
                self.vals.insert(out, Val::Int(dst));
                Ok(true)
            }
            op if DATA_MOVEMENT.contains(&op) => self.data_movement(n),
            "Gemm" | "MatMul" => self.gemm(n),
            "ReduceMax" => {
                let Ok(op) = float::float_op(n, self.opset, self.graph) else { return Ok(false) };
                if !matches!(op, FloatOp::Reduce(float::Reduce::Max, ..)) {
                    return Ok(false);
                }
                let Some(m) = self.move_of(inp(0)) else { return Ok(false) };
                // Axes are resolved against the input's rank when the indices are built.
                self.vals.insert(out, Val::PendingMax { m: Box::new(m), op });
                Ok(true)
            }
            "Mul" => {
                let mut view = |i: usize| self.int_of(inp(i)).filter(|_| self.float_views.contains(inp(i)));
                let (src, factor) = match (view(0), view(1)) {
                    (Some(t), None) => (t, self.konst(inp(1))),
                    (None, Some(t)) => (t, self.konst(inp(0))),
                    _ => return Ok(false),
                };
                let Some(factor) = factor else { return Ok(false) };
                let Ok(factor) = ArrayD::from_shape_vec(IxDyn(&factor.shape), factor.data) else { return Ok(false) };
                // Only a factor that broadcasts to the tensor's own shape keeps it a tensor.
                if factor.ndim() > self.shapes[src].len() || factor.broadcast(IxDyn(&self.shapes[src])).is_none() {
                    return Ok(false);
                }
                self.vals.insert(out, Val::PendingMul { src, factor });
                Ok(true)
            }
            "GlobalAveragePool" => match self.int_of(inp(0)) {
                Some(src) if self.float_views.contains(inp(0)) && self.shapes[src].len() >= 3 => {
                    self.vals.insert(out, Val::PendingMeanPool { src });
                    Ok(true)
                }
                _ => Ok(false),
            },
            "Conv" => self.conv(n, false),
            "ConvTranspose" => self.conv(n, true),
            "Relu" | "Min" | "Clip" => {
                let v = self.vals.get(inp(0)).cloned();
                let step = match n.op_type.as_str() {
                    "Relu" => MapStep::Relu,
                    "Min" => match (n.input.len(), self.konst(inp(1))) {
                        (2, Some(b)) => MapStep::Min(b.data),
                        _ => return Ok(false),
                    },
                    _ => {
                        let bound = |i: usize, none: f32| {
                            if inp(i).is_empty() {
                                Some(none)
                            } else {
                                self.konst(inp(i)).and_then(|c| if c.data.len() == 1 { Some(c.data[0]) } else { None })
                            }
                        };
                        match (bound(1, f32::NEG_INFINITY), bound(2, f32::INFINITY)) {
                            (Some(lo), Some(hi)) if !lo.is_nan() && !hi.is_nan() => MapStep::Clip(lo, hi),
                            _ => return Ok(false),
                        }
                    }
                };
                let single_use = self.uses.get(inp(0)) == Some(&1);
                match v {
                    Some(Val::PendingConv { mut conv }) if single_use => {
                        let cout = conv.mult.len();
                        match &step {
                            MapStep::Relu => conv.lo.iter_mut().for_each(|l| *l = l.max(0.0)),
                            MapStep::Min(b) if b.len() == 1 || b.len() == cout => {
                                conv.hi.iter_mut().enumerate().for_each(|(c, h)| *h = h.min(if b.len() == 1 { b[0] } else { b[c] }))
                            }
                            MapStep::Clip(lo, hi) => conv.lo.iter_mut().zip(conv.hi.iter_mut()).for_each(|(l, h)| {
                                *l = l.max(*lo);
                                *h = h.min(*hi);
                            }),
                            _ => return Ok(false),
                        }
                        self.vals.insert(out, Val::PendingConv { conv });
                        Ok(true)
                    }
                    Some(Val::Int(t)) if self.float_views.contains(inp(0)) => {
                        if let MapStep::Min(b) = &step {
                            if b.len() != 1 && b.len() != self.tensors[t].c {
                                return Ok(false);
                            }
                        }
                        self.vals.insert(out, Val::PendingMap { src: t, steps: vec![step] });
                        Ok(true)
                    }
                    Some(Val::PendingMap { src, mut steps }) if single_use => {
                        if let MapStep::Min(b) = &step {
                            if b.len() != 1 && b.len() != self.tensors[src].c {
                                return Ok(false);
                            }
                        }
                        steps.push(step);
                        self.vals.insert(out, Val::PendingMap { src, steps });
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            }
            "Add" => {
                let (Some(a), Some(b)) = (self.int_of(inp(0)), self.int_of(inp(1))) else { return Ok(false) };
                if self.shapes[a] != self.shapes[b] || !self.float_views.contains(inp(0)) || !self.float_views.contains(inp(1)) {
                    return Ok(false);
                }
                self.vals.insert(out, Val::PendingAdd { a, b });
                Ok(true)
            }
            // Exporters write clip bounds and shapes as Constant nodes (torch.onnx does).
            "Constant" => {
                let Some(t) = n.attribute.iter().find(|a| a.name == "value").and_then(|a| a.t.as_ref()) else { return Ok(false) };
                let Ok(d) = tensor::decode(t) else { return Ok(false) };
                self.vals.insert(out, Val::Const(Const { shape: d.shape, data: d.values.to_f32(), int8: None }));
                Ok(true)
            }
            "Identity" => match self.vals.get(inp(0)).cloned() {
                Some(v) => {
                    if self.float_views.contains(inp(0)) {
                        self.float_views.insert(out.clone());
                    }
                    self.vals.insert(out, v);
                    Ok(true)
                }
                None => Ok(false),
            },
            _ => Ok(false),
        }
    }

    /// A Conv or ConvTranspose on a u8 tensor with int8 weights: a pending conv.
    fn conv(&mut self, n: &pb::NodeProto, transposed: bool) -> Result<bool> {
        let inp = |i: usize| n.input.get(i).map(|s| s.as_str()).unwrap_or("");
        let Some(src) = self.int_of(inp(0)) else { return Ok(false) };
        let Some(w) = self.konst(inp(1)) else { return Ok(false) };
        let Some((wq, wscale, waxis)) = w.int8.clone() else { return Ok(false) };
        let xs = self.shapes[src].clone();
        let x = self.tensors[src];
        let rank = xs.len();
        // Per-channel weight scales run along the output channels: axis 0 of a Conv's
        // weights, axis 1 of a ConvTranspose's.
        let out_axis = if transposed { 1 } else { 0 };
        if !(4..=5).contains(&rank) || w.shape.len() != rank || (wscale.len() > 1 && waxis != out_axis) {
            return Ok(false);
        }
        if attr::ints(n, "dilations").is_some_and(|d| d.iter().any(|&v| v != 1))
            || n.attribute.iter().any(|a| a.name == "auto_pad" && !a.s.is_empty() && a.s != b"NOTSET")
            || n.attribute.iter().any(|a| a.name == "output_shape")
        {
            return Ok(false);
        }
        let sp = rank - 2;
        let kernel: Vec<usize> = w.shape[2..].to_vec();
        let group = attr::int_opt(n, "group").unwrap_or(1) as usize;
        let strides: Vec<usize> = attr::ints(n, "strides").unwrap_or(vec![1; sp]).iter().map(|&v| v.max(0) as usize).collect();
        let pads = attr::ints(n, "pads").unwrap_or(vec![0; 2 * sp]);
        let out_pad = attr::ints(n, "output_padding").unwrap_or(vec![0; sp]);
        if strides.len() != sp || strides.contains(&0) || pads.len() != 2 * sp || pads.iter().any(|&p| p < 0) || out_pad.len() != sp {
            return Ok(false);
        }
        let pads: Vec<usize> = pads.iter().map(|&p| p as usize).collect();
        let (cout, cin_g) = if transposed { (w.shape[1], w.shape[0]) } else { (w.shape[0], w.shape[1]) };
        let bias = match n.input.get(2).filter(|b| !b.is_empty()) {
            None => vec![0.0; cout],
            Some(b) => match self.konst(b) {
                Some(c) if c.data.len() == cout => c.data,
                _ => return Ok(false),
            },
        };
        let depthwise = !transposed && sp == 2 && group == x.c && group == cout && cin_g == 1 && group > 1;
        if !(depthwise || group == 1 && cin_g == x.c) {
            return Ok(false);
        }
        let sw = |c: usize| if wscale.len() == 1 { wscale[0] } else { wscale[c] };
        let mult: Vec<f32> = (0..cout).map(|c| x.scale * sw(c)).collect();
        let taps: usize = kernel.iter().product();
        let zp = x.zp as i32;
        // Spatial sizes lifted to 3 axes (a 2-D conv has depth 1).
        let lift = |v: &[usize], fill: usize| -> [usize; 3] {
            let mut o = [fill; 3];
            o[3 - v.len()..].copy_from_slice(v);
            o
        };
        let input = lift(&xs[2..], 1);
        if input.contains(&0) {
            return Err(unsupported(format!("{}: empty input {xs:?}", n.name)));
        }
        let (k3, s3) = (lift(&kernel, 1), lift(&strides, 1));
        let (pb, pe) = (lift(&pads[..sp], 0), lift(&pads[sp..], 0));
        let mut output = [1usize; 3];
        for a in 0..3 {
            output[a] = if transposed {
                let full = (input[a] - 1) * s3[a] + k3[a] + lift(&out_pad.iter().map(|&v| v.max(0) as usize).collect::<Vec<_>>(), 0)[a];
                match full.checked_sub(pb[a] + pe[a]) {
                    Some(o) if o > 0 => o,
                    _ => return Err(unsupported(format!("{}: padding larger than the output", n.name))),
                }
            } else {
                match (input[a] + pb[a] + pe[a]).checked_sub(k3[a]) {
                    Some(d) => d / s3[a] + 1,
                    None => return Err(unsupported(format!("{}: kernel larger than the padded input", n.name))),
                }
            };
        }
        let mut shape = vec![1, cout];
        shape.extend_from_slice(&output[3 - sp..]);
        let out_pixels: usize = output.iter().product();
        let in_pixels: usize = input.iter().product();
        let pointwise_on = |pixels: usize, cin: usize| ConvGeometry::new(1, pixels, cin, 1, 1, [1, 1], [0; 4]).expect("1x1 fits");
        // A 2-D conv's geometry on the channels-last input (depth 1).
        let geometry_2d = || {
            let (st, pd) = ([strides[0], strides[1]], [pads[0], pads[1], pads[2], pads[3]]);
            ConvGeometry::new(input[1], input[2], x.c, kernel[0], kernel[1], st, pd)
                .ok_or_else(|| unsupported(format!("{}: kernel larger than the padded input", n.name)))
        };
        let (layout, kind, offset, macs) = if transposed {
            // Columns [tap][cout] of [cin] weights: w is [cin][cout][taps].
            let mut rows = vec![0i8; taps * cout * x.c];
            let mut col_offset = vec![0i32; taps * cout];
            for t in 0..taps {
                for co in 0..cout {
                    for ci in 0..x.c {
                        let v = wq[(ci * cout + co) * taps + t];
                        rows[(t * cout + co) * x.c + ci] = v;
                        col_offset[t * cout + co] += zp * v as i32;
                    }
                }
            }
            let g = Geometry3 { input, cin: x.c, kernel: k3, stride: s3, pads: pb, output };
            let layout = ConvLayout::Transposed { g, cols: pointwise_on(in_pixels, x.c), col_offset };
            (
                layout,
                ConvKind::Dense(PackedWeights::new(self.isa, rows, taps * cout, 1, x.c)),
                vec![0; cout],
                (in_pixels * x.c * cout * taps) as u64,
            )
        } else if depthwise {
            let g = geometry_2d()?;
            let kind = ConvKind::Depthwise(DepthwiseWeights::new(self.isa, &wq, cout, taps));
            (ConvLayout::Direct(g), kind, vec![0; cout], (out_pixels * cout * taps) as u64)
        } else {
            // [cout][cin][taps...] -> rows [cout][taps...][cin], the im2row (and channels-last) order.
            let k = taps * x.c;
            let mut rows = vec![0i8; cout * k];
            for c in 0..cout {
                for ci in 0..x.c {
                    for t in 0..taps {
                        rows[c * k + t * x.c + ci] = wq[(c * x.c + ci) * taps + t];
                    }
                }
            }
            let (layout, pw) = if sp == 2 {
                let g = geometry_2d()?;
                (ConvLayout::Direct(g), PackedWeights::new(self.isa, rows, cout, kernel[0], kernel[1] * x.c))
            } else if taps == 1 && s3 == [1; 3] && pads.iter().all(|&p| p == 0) {
                (ConvLayout::Direct(pointwise_on(in_pixels, x.c)), PackedWeights::new(self.isa, rows, cout, 1, k))
            } else {
                let g = Geometry3 { input, cin: x.c, kernel: k3, stride: s3, pads: pb, output };
                (ConvLayout::Planes { g, plane: pointwise_on(output[1] * output[2], k) }, PackedWeights::new(self.isa, rows, cout, 1, k))
            };
            let offset = pw.sums().iter().map(|s| s * zp).collect();
            (layout, ConvKind::Dense(pw), offset, (out_pixels * cout * k) as u64)
        };
        let conv = FloatConv {
            src,
            layout,
            kind,
            offset,
            mult,
            bias,
            lo: vec![f32::NEG_INFINITY; cout],
            hi: vec![f32::INFINITY; cout],
            shape,
            name: n.name.clone(),
            macs,
        };
        let out = n.output.first().cloned().unwrap_or_default();
        self.vals.insert(out, Val::PendingConv { conv: Box::new(conv) });
        Ok(true)
    }
}

/// Compiles `model` for batch 1, its weights packed for `isa`; Err names what the
/// engine does not cover.
pub fn compile(model: &OnnxModel, isa: Isa) -> Result<Plan> {
    let graph = model.graph();
    let inits: HashMap<&str, &pb::TensorProto> = graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let inputs: Vec<&pb::ValueInfoProto> = graph.input.iter().filter(|i| !inits.contains_key(i.name.as_str())).collect();
    let [input] = inputs.as_slice() else {
        return Err(unsupported(format!("{} graph inputs; the engine runs models with one", inputs.len())));
    };
    let dims = model.inputs.first().and_then(|i| i.dims.clone()).ok_or_else(|| unsupported("the input has no declared shape"))?;
    let fixed: Vec<usize> = dims
        .iter()
        .skip(1)
        .map(|d| match d {
            crate::model::Dim::Fixed(n) => Ok(*n),
            _ => Err(unsupported("the input's sizes after the batch must be fixed")),
        })
        .collect::<Result<_>>()?;
    if fixed.is_empty() {
        return Err(unsupported(format!("input {dims:?}: expected [batch, ...]")));
    }
    if !graph.node.iter().any(|n| n.op_type == "QuantizeLinear") {
        return Err(unsupported("no QuantizeLinear: not a QDQ model"));
    }
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for n in &graph.node {
        for i in &n.input {
            *uses.entry(i.as_str()).or_default() += 1;
        }
    }
    for o in &graph.output {
        *uses.entry(o.name.as_str()).or_default() += 1;
    }
    let mut comp = Compiler {
        graph,
        opset: model.opset(),
        inits,
        vals: HashMap::new(),
        tensors: Vec::new(),
        shapes: Vec::new(),
        float_shapes: vec![std::iter::once(1).chain(fixed.iter().copied()).collect()],
        steps: Vec::new(),
        uses,
        float_views: HashSet::new(),
        dequantised: HashMap::new(),
        float_macs: 0,
        isa,
    };
    comp.vals.insert(input.name.clone(), Val::Float(0));
    for n in &graph.node {
        if !comp.node(n)? {
            comp.float_node(n)?;
        }
    }
    let outputs = graph.output.iter().map(|o| comp.float_of(&o.name)).collect::<Result<Vec<_>>>()?;
    let macs: u64 = comp.steps.iter().map(|s| s.macs()).sum();
    if !comp.steps.iter().any(|s| matches!(s, Step::Int(_) | Step::ConvToFloat { .. })) {
        return Err(unsupported("nothing runs in integers (not a QDQ model, or its quantised ops are in forms the engine does not read)"));
    }
    // Naive float convs and products would cost more than tract's, which runs the whole model better.
    if comp.float_macs > macs {
        return Err(unsupported(format!(
            "{:.1} MMAC of convolutions would run in float, more than in integers",
            comp.float_macs as f64 / 1e6
        )));
    }
    Ok(Plan { tensors: comp.tensors, shapes: comp.shapes, float_shapes: comp.float_shapes, steps: comp.steps, outputs, macs })
}
