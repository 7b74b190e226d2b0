//! From a QDQ ONNX graph (what `edgemed quantize` writes, and ONNX Runtime's QDQ
//! format) to a [`Plan`] of fused integer ops with float ops between them.
//!
//! The graph is read in order. Each node goes to the first rule of [`RULES`] whose
//! operators include its type: one file per fusion rule, in the spirit of ONNX
//! Runtime's selector/action rules. A rule's selector records the node as part of
//! an integer pattern (a *pending* value: a conv awaiting its QuantizeLinear, a table
//! of activations, data movement, ...) or declines, and the node becomes a float op.
//! The `QuantizeLinear` that closes a pattern calls that rule's action, which emits
//! the integer op ([`quantize`]).
//!
//! - [`quantize`]: `QuantizeLinear` / `DequantizeLinear`, the edges of every pattern;
//! - [`conv`]: `Conv` / `ConvTranspose` (2-D dense and depthwise, 3-D, transposed);
//! - [`activation`]: `Relu`, `Min`, `Clip` fused into a conv or as lookup tables;
//! - [`add`]: quantised residual adds;
//! - [`data_movement`]: Concat, Reshape, Transpose, Slice, ... as byte copies;
//! - [`pooling`]: `GlobalAveragePool` and `ReduceMax` (group pooling) in integers;
//! - [`mul`]: `Mul` by a constant (a circular mask) as tables;
//! - [`gemm`]: `Gemm` / `MatMul` heads as pointwise convs;
//! - [`constant`]: `Constant` and `Identity`;
//! - [`shape`]: `Shape` and `Size` as constants, so a dynamic batch's shape
//!   arithmetic folds; `CastLike`.
//!
//! Every other node is a float op ([`crate::float`]) on NCHW arrays: the u8 tensors
//! it reads are dequantised where it needs them, a conv whose output it reads is
//! computed in integers and dequantised with its bias and activation, and a
//! QuantizeLinear of its output makes a u8 tensor again. Instance normalisation and
//! PReLU between a U-Net's convs, a flow's coupling arithmetic, a classifier head all
//! run this way. A graph with a float op the interpreter does not know, or a form of
//! quantisation the engine does not read, is [`Error::Unsupported`] with the reason
//! (the runtime then runs the whole model elsewhere); a model whose sizes contradict
//! each other is [`Error::Invalid`].

mod activation;
mod add;
mod constant;
mod conv;
mod data_movement;
mod gemm;
mod mul;
mod normalization;
mod pooling;
mod quantize;
mod shape;
#[cfg(test)]
mod shape_tests;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};

use edgemed_onnx::{pb, tensor};

use self::activation::MapStep;
use self::data_movement::{Move, DATA_MOVEMENT};
use crate::error::{Error, Result};
use crate::float::{self, FloatOp, Operand};
use crate::kernels::Isa;
use crate::model::OnnxModel;
use crate::ndarray::{ArrayD, IxDyn};
use crate::plan::{FloatConv, Plan, QTensor, Step};

/// A fusion rule: the node types it starts from, and its selector, which records the
/// node as (part of) an integer pattern, or answers Ok(false) where the pattern does
/// not apply (the node then runs as a float op).
struct Rule {
    ops: &'static [&'static str],
    select: fn(&mut Compiler<'_>, &pb::NodeProto) -> Result<bool>,
}

const RULES: &[Rule] = &[
    Rule { ops: &["QuantizeLinear"], select: |c, n| c.quantize_linear(n) },
    Rule { ops: &["DequantizeLinear"], select: |c, n| c.dequantize_linear(n) },
    Rule { ops: &["Conv", "ConvTranspose"], select: |c, n| c.conv(n) },
    Rule { ops: &["Relu", "Min", "Clip", "PRelu"], select: |c, n| c.activation(n) },
    Rule { ops: &["Add"], select: |c, n| c.add(n) },
    Rule { ops: DATA_MOVEMENT, select: |c, n| c.data_movement(n) },
    Rule { ops: &["GlobalAveragePool"], select: |c, n| c.global_average_pool(n) },
    Rule { ops: &["InstanceNormalization"], select: |c, n| c.instance_norm(n) },
    Rule { ops: &["ReduceMax"], select: |c, n| c.reduce_max(n) },
    Rule { ops: &["Mul"], select: |c, n| c.mul(n) },
    Rule { ops: &["Gemm", "MatMul"], select: |c, n| c.gemm(n) },
    Rule { ops: &["Constant"], select: |c, n| c.constant(n) },
    Rule { ops: &["Identity"], select: |c, n| c.identity(n) },
    Rule { ops: &["Shape", "Size"], select: |c, n| c.shape(n) },
    Rule { ops: &["CastLike"], select: |c, n| c.cast_like(n) },
];

/// Input `i` of a node ("" where absent or omitted).
fn input(n: &pb::NodeProto, i: usize) -> &str {
    n.input.get(i).map(|s| s.as_str()).unwrap_or("")
}

/// The node's (first) output.
fn output(n: &pb::NodeProto) -> String {
    n.output.first().cloned().unwrap_or_default()
}

/// A float initializer or a folded DequantizeLinear of one.
#[derive(Debug, Clone)]
struct Const {
    shape: Vec<usize>,
    data: Vec<f32>,
    /// The int8 values, scales and scale axis when it is DQ(int8 initializer) (a quantised weight).
    int8: Option<(Vec<i8>, Vec<f32>, usize)>,
    /// An integer tensor (int64 shapes, bools): folding it follows ONNX's integer
    /// semantics ([`shape`]). The values are integers, exact in f32 below 2^24.
    integer: bool,
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
        /// Nothing else reads `src`: a table that only clamps can narrow its conv's clamp.
        alone: bool,
    },
    /// A quantised add of two u8 tensors' views, with the activations after it so far,
    /// awaiting QuantizeLinear.
    PendingAdd {
        a: usize,
        b: usize,
        steps: Vec<MapStep>,
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
    /// InstanceNormalization of a u8 tensor's view, awaiting QuantizeLinear.
    PendingNorm {
        src: usize,
        scale: Vec<f32>,
        bias: Vec<f32>,
        eps: f32,
        /// Activations after it so far.
        steps: Vec<MapStep>,
    },
    /// InstanceNormalization of a conv's float output, awaiting QuantizeLinear.
    PendingConvNorm {
        conv: Box<FloatConv>,
        scale: Vec<f32>,
        bias: Vec<f32>,
        eps: f32,
        /// Activations after it so far.
        steps: Vec<MapStep>,
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

/// A construct the engine does not run (the caller may run the model elsewhere).
fn unsupported(reason: impl Into<String>) -> Error {
    Error::Unsupported(reason.into())
}

/// A model whose sizes contradict each other: no runtime can run it.
fn invalid(reason: impl Into<String>) -> Error {
    Error::Invalid(reason.into())
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
                let integer = matches!(d.values, tensor::Values::I64(_));
                Some(Const { shape: d.shape, data: d.values.to_f32(), int8: None, integer })
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
        self.steps.push(Step::Dequantize { src: t, dst: f, plus: None });
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
        // Each output element takes one weight per input channel and tap, or per k;
        // a transposed conv's input element, one per output channel and tap.
        let per_output = match op {
            FloatOp::Conv { .. } => args.get(1).map_or(0, |w| w.len() / w.shape().first().copied().unwrap_or(1).max(1)),
            FloatOp::Gemm { .. } | FloatOp::MatMul => args.get(1).map_or(0, |b| b.len() / shape.last().copied().unwrap_or(1).max(1)),
            _ => 0,
        };
        let transposed = match op {
            FloatOp::ConvTranspose { .. } => {
                args[0].len() / args[0].shape().get(1).copied().unwrap_or(1).max(1) * args.get(1).map_or(0, |w| w.len())
            }
            _ => 0,
        };
        self.float_macs += (shape.iter().product::<usize>() * per_output + transposed) as u64;
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
            Some(Val::PendingMap { src, steps, .. }) => self.map_to_float(src, steps, name)?,
            Some(Val::PendingAdd { a, b, steps }) => {
                let sum = self.new_float(self.shapes[a].clone());
                self.steps.push(Step::Dequantize { src: a, dst: sum, plus: Some(b) });
                self.steps_in_float(sum, self.shapes[a].len(), steps, name)?
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
            Some(Val::PendingNorm { src, scale, bias, eps, steps }) => {
                let f = self.dequantised(src);
                let vector = |v: Vec<f32>| Operand::Const(ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).expect("sized"));
                let y = self.push_float(FloatOp::InstanceNorm(eps), vec![Operand::Value(f), vector(scale), vector(bias)], name)?;
                self.steps_in_float(y, self.shapes[src].len(), steps, name)?
            }
            Some(Val::PendingConvNorm { conv, scale, bias, eps, steps }) => {
                let rank = conv.shape.len();
                let f = self.new_float(conv.shape.clone());
                self.steps.push(Step::ConvToFloat { conv, dst: f });
                let vector = |v: Vec<f32>| Operand::Const(ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).expect("sized"));
                let y = self.push_float(FloatOp::InstanceNorm(eps), vec![Operand::Value(f), vector(scale), vector(bias)], name)?;
                self.steps_in_float(y, rank, steps, name)?
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

    /// Node `n` as (part of) an integer pattern by the first rule for its type;
    /// Ok(false): a float op.
    fn node(&mut self, n: &pb::NodeProto) -> Result<bool> {
        match RULES.iter().find(|r| r.ops.contains(&n.op_type.as_str())) {
            Some(rule) => (rule.select)(self, n),
            None => Ok(false),
        }
    }

    /// Node `n` as a float op (constants folded).
    fn float_node(&mut self, n: &pb::NodeProto) -> Result<()> {
        let op = float::float_op(n, self.opset, self.graph)?;
        self.static_shape_inputs(n)?;
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
            let c = self.fold(n, op, &args)?;
            self.vals.insert(out, Val::Const(c));
        } else {
            let f = self.push_float(op, inputs, &n.name)?;
            self.vals.insert(out, Val::Float(f));
        }
        Ok(())
    }
}

/// Compiles `model` for batch 1, its weights packed for `isa`; Err names what the
/// engine does not cover.
pub fn compile(model: &OnnxModel, isa: Isa) -> Result<Plan> {
    compile_for(model, isa, None)
}

/// [`compile`] for inputs of `shape` (batch first): symbolic sizes after the batch are
/// taken from it, fixed ones must equal it (None: the model's own, all fixed).
pub fn compile_for(model: &OnnxModel, isa: Isa, shape: Option<&[usize]>) -> Result<Plan> {
    if !model.graph().node.iter().any(|n| n.op_type == "QuantizeLinear") {
        return Err(unsupported("no QuantizeLinear: not a QDQ model"));
    }
    let (comp, outputs) = lower(model, isa, shape)?;
    let macs: u64 = comp.steps.iter().map(|s| s.macs()).sum();
    if !comp.steps.iter().any(|s| matches!(s, Step::Int(_) | Step::ConvToFloat { .. })) {
        return Err(unsupported("nothing runs in integers (not a QDQ model, or its quantised ops are in forms the engine does not read)"));
    }
    // The interpreter's convs and products are plain loops, tens of times slower than
    // the integer kernels: past a third of the model's MACs in float (a U-Net whose
    // activations lack ranges: 4.3 float against 5.6 integer MMAC ran 12x slower than
    // ONNX Runtime), tract runs the whole model faster.
    if comp.float_macs * 2 > macs {
        return Err(unsupported(format!(
            "{:.1} MMAC of convolutions would run in float against {:.1} MMAC in integers (quantize them, e.g. with --calibrate)",
            comp.float_macs as f64 / 1e6,
            macs as f64 / 1e6
        )));
    }
    Ok(Plan { tensors: comp.tensors, shapes: comp.shapes, float_shapes: comp.float_shapes, steps: comp.steps, outputs, macs })
}

/// The multiply-adds of a model's convolutions and matrix products at batch 1, float
/// or quantised, as the engine counts them: bench's MMAC column for float models too.
pub fn count_macs(model: &OnnxModel) -> Result<u64> {
    let (comp, _) = lower(model, Isa::Scalar, None)?;
    Ok(comp.steps.iter().map(|s| s.macs()).sum::<u64>() + comp.float_macs)
}

/// Lowers every node, at batch 1: integer steps where the graph is quantised, the
/// interpreter's float steps elsewhere; returns the compiler and the outputs' values.
fn lower<'m>(model: &'m OnnxModel, isa: Isa, shape: Option<&[usize]>) -> Result<(Compiler<'m>, Vec<usize>)> {
    let graph = model.graph();
    let inits: HashMap<&str, &pb::TensorProto> = graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let inputs: Vec<&pb::ValueInfoProto> = graph.input.iter().filter(|i| !inits.contains_key(i.name.as_str())).collect();
    let [input] = inputs.as_slice() else {
        return Err(unsupported(format!("{} graph inputs; the engine runs models with one", inputs.len())));
    };
    let dims = model.inputs.first().and_then(|i| i.dims.clone()).ok_or_else(|| unsupported("the input has no declared shape"))?;
    // The declared sizes, 0 where symbolic (for errors).
    let declared = || dims.iter().map(|d| if let crate::model::Dim::Fixed(n) = d { *n } else { 0 }).collect::<Vec<_>>();
    if shape.is_some_and(|s| s.len() != dims.len()) {
        return Err(Error::WrongShape { got: shape.unwrap_or_default().to_vec(), expected: declared() });
    }
    let fixed: Vec<usize> = dims
        .iter()
        .enumerate()
        .skip(1)
        .map(|(k, d)| match (d, shape.map(|s| s[k])) {
            (crate::model::Dim::Fixed(n), None) => Ok(*n),
            (crate::model::Dim::Fixed(n), Some(m)) if *n == m => Ok(m),
            (crate::model::Dim::Fixed(_), Some(_)) => {
                Err(Error::WrongShape { got: shape.unwrap_or_default().to_vec(), expected: declared() })
            }
            (_, Some(m)) if m > 0 => Ok(m),
            _ => Err(unsupported("the input's sizes after the batch must be fixed")),
        })
        .collect::<Result<_>>()?;
    if fixed.is_empty() {
        return Err(unsupported(format!("input {dims:?}: expected [batch, ...]")));
    }
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for n in &graph.node {
        for (k, i) in n.input.iter().enumerate() {
            if shape::reads_data(n, k) {
                *uses.entry(i.as_str()).or_default() += 1;
            }
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
    Ok((comp, outputs))
}
