//! From a QDQ ONNX graph (what `edgemed quantize` writes, and ONNX Runtime's QDQ
//! format) to a plan of fused integer ops. Patterns recognised, in graph order:
//!
//! - `QuantizeLinear(input)`: the model input quantised to u8 (NCHW -> NHWC).
//! - `DequantizeLinear(q)` of a u8 tensor: a float view of it, free.
//! - `Conv(DQ(x), DQ(w int8), bias) [-> Relu] [-> Min(bound) | Clip] -> QuantizeLinear`:
//!   one fused conv (dense or depthwise), int32 accumulation, requantisation, the
//!   activation as a clamp in the quantised domain (exact: quantisation is monotone).
//! - `DQ(q) -> Relu / Min / Clip ... -> QuantizeLinear`: a per-channel lookup table
//!   (256 entries), computed with the same float operations, so it is exact.
//! - `Add(DQ(a), DQ(b)) -> QuantizeLinear`: an element-wise quantised add.
//!
//! The first node that fits none of these ends the integer part; the rest of the
//! graph (a classifier head, say) becomes a float tail run by tract on the one
//! tensor that crosses the boundary. A graph whose boundary is crossed by more than
//! one tensor, or that uses a construct the engine does not know before any integer
//! op, is refused with the reason, and the caller falls back to tract for the whole model.

use std::collections::HashMap;

use tract_onnx::pb;

use super::kernels::{self, ConvGeometry, DepthwiseWeights, PackedWeights, Requant};
use crate::error::{Error, Result};
use crate::model::OnnxModel;

/// A float initializer or a folded DequantizeLinear of one.
#[derive(Debug, Clone)]
struct Const {
    shape: Vec<usize>,
    data: Vec<f32>,
    /// The int8 values and scales when it is DQ(int8 initializer) (a quantised weight).
    int8: Option<(Vec<i8>, Vec<f32>)>,
}

/// A u8 NHWC tensor of the plan.
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
}

#[derive(Debug, Clone)]
pub enum ConvKind {
    Dense(PackedWeights),
    Depthwise(DepthwiseWeights),
}

#[derive(Debug, Clone)]
pub struct ConvOp {
    pub src: usize,
    pub dst: usize,
    pub geometry: ConvGeometry,
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
}

impl Op {
    /// Tensors the op reads.
    pub fn sources(&self) -> Vec<usize> {
        match self {
            Op::Conv(c) => vec![c.src],
            Op::Lut { src, .. } => vec![*src],
            Op::Add { a, b, .. } => vec![*a, *b],
        }
    }

    /// The tensor the op writes.
    pub fn destination(&self) -> usize {
        match self {
            Op::Conv(c) => c.dst,
            Op::Lut { dst, .. } | Op::Add { dst, .. } => *dst,
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
/// in a plan, a last conv whose output goes to the float tail.
#[derive(Debug, Clone)]
pub struct FloatConv {
    pub src: usize,
    pub geometry: ConvGeometry,
    pub kind: ConvKind,
    pub offset: Vec<i32>,
    pub mult: Vec<f32>,
    pub bias: Vec<f32>,
    /// Activation bounds so far (Relu, Min, Clip).
    pub lo: Vec<f32>,
    pub hi: Vec<f32>,
    pub name: String,
    pub macs: u64,
    /// Index of the Conv node (where the tail starts if it has to run this conv in float).
    start: usize,
}

/// The compiled integer part of a model.
#[derive(Debug, Clone)]
pub struct Plan {
    pub tensors: Vec<QTensor>,
    /// The model input (float NCHW) quantised into tensor 0.
    pub input: QTensor,
    pub ops: Vec<Op>,
    /// Tensor handed on (dequantised, NCHW) to the float tail, or returned as the output.
    pub boundary: usize,
    /// A last convolution whose output goes to the float tail unquantised (the
    /// converter leaves the head conv before group pooling in float): run on the
    /// boundary tensor in integers, dequantised with its activation as float clamps.
    pub head: Option<FloatConv>,
    /// The rest of the graph, with the boundary tensor (or the head's output) as its
    /// input (None: that is the output).
    pub tail: Option<pb::ModelProto>,
    pub macs: u64,
}

impl Plan {
    /// Shape of the float tensor handed to the tail (NCHW): the head's output, or the boundary's.
    pub fn handover_shape(&self) -> [usize; 4] {
        match &self.head {
            Some(h) => [1, h.mult.len(), h.geometry.oh, h.geometry.ow],
            None => {
                let b = self.tensors[self.boundary];
                [1, b.c, b.h, b.w]
            }
        }
    }

    /// A one-line description of `op` for profiles, e.g. `conv 3x3/2 depthwise 48 -> 48 at 11x11`.
    pub fn label(&self, op: &Op) -> String {
        let t = |i: usize| self.tensors[i];
        match op {
            Op::Conv(c) => {
                let g = &c.geometry;
                let (x, y) = (t(c.src), t(c.dst));
                let kind = match c.kind {
                    ConvKind::Dense(_) if g.is_pointwise() => "pointwise",
                    ConvKind::Dense(_) => "dense",
                    ConvKind::Depthwise(_) => "depthwise",
                };
                format!("conv {}x{}/{} {kind} {} -> {} at {}x{}", g.kh, g.kw, g.stride[0], x.c, y.c, y.h, y.w)
            }
            Op::Lut { dst, .. } => format!("table (activation) {} at {}x{}", t(*dst).c, t(*dst).h, t(*dst).w),
            Op::Add { dst, .. } => format!("add {} at {}x{}", t(*dst).c, t(*dst).h, t(*dst).w),
        }
    }
}

#[derive(Debug, Clone)]
enum Val {
    Const(Const),
    /// A u8 tensor (the output of a QuantizeLinear) or its DequantizeLinear view.
    Int(usize),
    /// A float value awaiting its QuantizeLinear: a conv with its activation bounds so far.
    PendingConv {
        conv: Box<FloatConv>,
    },
    /// Element-wise float ops on a u8 tensor's view, awaiting QuantizeLinear.
    PendingMap {
        src: usize,
        steps: Vec<Step>,
        start: usize,
    },
    PendingAdd {
        a: usize,
        b: usize,
        start: usize,
    },
}

#[derive(Debug, Clone)]
enum Step {
    Relu,
    /// Per channel (or one value for all).
    Min(Vec<f32>),
    Clip(f32, f32),
}

fn unsupported(reason: impl Into<String>) -> Error {
    Error::Invalid(reason.into())
}

/// Decodes the initializer types the engine reads.
pub(crate) fn decode(t: &pb::TensorProto) -> Result<(Vec<usize>, Decoded)> {
    use pb::tensor_proto::DataType as T;
    let shape: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
    let n: usize = shape.iter().product();
    let raw = &t.raw_data;
    let bad = || unsupported(format!("initializer {}: cannot read type {}", t.name, t.data_type));
    let dt = T::try_from(t.data_type).map_err(|_| bad())?;
    let d = match dt {
        T::Float => Decoded::F32(if raw.is_empty() {
            t.float_data.clone()
        } else {
            raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        }),
        T::Int8 => Decoded::I64(if raw.is_empty() {
            t.int32_data.iter().map(|&v| v as i64).collect()
        } else {
            raw.iter().map(|&b| b as i8 as i64).collect()
        }),
        T::Uint8 => Decoded::I64(if raw.is_empty() {
            t.int32_data.iter().map(|&v| v as i64).collect()
        } else {
            raw.iter().map(|&b| b as i64).collect()
        }),
        T::Int32 => Decoded::I64(if raw.is_empty() {
            t.int32_data.iter().map(|&v| v as i64).collect()
        } else {
            raw.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64).collect()
        }),
        T::Int64 => Decoded::I64(if raw.is_empty() {
            t.int64_data.clone()
        } else {
            raw.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect()
        }),
        _ => return Err(bad()),
    };
    if d.len() != n {
        return Err(unsupported(format!("initializer {}: {} values for shape {shape:?}", t.name, d.len())));
    }
    Ok((shape, d))
}

#[derive(Debug, Clone)]
pub(crate) enum Decoded {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl Decoded {
    fn len(&self) -> usize {
        match self {
            Decoded::F32(v) => v.len(),
            Decoded::I64(v) => v.len(),
        }
    }
    pub(crate) fn as_f32(&self) -> Vec<f32> {
        match self {
            Decoded::F32(v) => v.clone(),
            Decoded::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
}

fn attr_ints(n: &pb::NodeProto, name: &str) -> Option<Vec<i64>> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.ints.clone())
}

fn attr_int(n: &pb::NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

struct Compiler<'m> {
    inits: HashMap<&'m str, &'m pb::TensorProto>,
    vals: HashMap<String, Val>,
    tensors: Vec<QTensor>,
    ops: Vec<Op>,
    uses: HashMap<&'m str, usize>,
    /// Names of DequantizeLinear views (float values) of u8 tensors.
    float_views: std::collections::HashSet<String>,
}

impl<'m> Compiler<'m> {
    fn konst(&self, name: &str) -> Option<Const> {
        match self.vals.get(name) {
            Some(Val::Const(c)) => Some(c.clone()),
            _ => {
                let t = self.inits.get(name)?;
                let (shape, d) = decode(t).ok()?;
                Some(Const { shape, data: d.as_f32(), int8: None })
            }
        }
    }

    /// Scale and zero point of a Q/DQ node (per tensor only, u8 zero point).
    fn qparams(&self, n: &pb::NodeProto) -> Result<(f32, u8)> {
        let s = n.input.get(1).and_then(|s| self.konst(s)).ok_or_else(|| unsupported(format!("{}: scale is not a constant", n.name)))?;
        if s.data.len() != 1 || !(s.data[0] > 0.0 && s.data[0].is_finite()) {
            return Err(unsupported(format!("{}: only per-tensor positive activation scales", n.name)));
        }
        let zp = match n.input.get(2) {
            None => 0,
            Some(z) => {
                let t = self.inits.get(z.as_str()).ok_or_else(|| unsupported(format!("{}: zero point is not an initializer", n.name)))?;
                if t.data_type != pb::tensor_proto::DataType::Uint8 as i32 {
                    return Err(unsupported(format!("{}: activations must be uint8 (got type {})", n.name, t.data_type)));
                }
                let (_, d) = decode(t)?;
                d.as_f32().first().copied().unwrap_or(0.0) as u8
            }
        };
        Ok((s.data[0], zp))
    }

    fn int_of(&self, name: &str) -> Option<usize> {
        match self.vals.get(name) {
            Some(Val::Int(t)) => Some(*t),
            _ => None,
        }
    }

    fn new_tensor(&mut self, t: QTensor) -> usize {
        self.tensors.push(t);
        self.tensors.len() - 1
    }

    /// Handles one node; Ok(false) when it is not an integer pattern (the boundary).
    fn node(&mut self, index: usize, n: &pb::NodeProto, input: &str) -> Result<bool> {
        let out = n.output.first().cloned().unwrap_or_default();
        let inp = |i: usize| n.input.get(i).map(|s| s.as_str()).unwrap_or("");
        match n.op_type.as_str() {
            "DequantizeLinear" => {
                if let Some(t) = self.inits.get(inp(0)) {
                    // A constant: fold (int8 weights keep their integers and scales).
                    let (shape, d) = decode(t)?;
                    let s = self.konst(inp(1)).ok_or_else(|| unsupported(format!("{}: scale is not a constant", n.name)))?;
                    let zp = match n.input.get(2) {
                        Some(z) => self.konst(z).map(|c| c.data).unwrap_or_default(),
                        None => vec![],
                    };
                    let axis = attr_int(n, "axis").unwrap_or(1);
                    let vals = d.as_f32();
                    let per = s.data.len();
                    let inner = if per == 1 || shape.is_empty() {
                        vals.len()
                    } else {
                        let ax = if axis < 0 { axis + shape.len() as i64 } else { axis } as usize;
                        shape[ax + 1..].iter().product()
                    };
                    let data: Vec<f32> = vals
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| {
                            let c = if per == 1 { 0 } else { (i / inner) % per };
                            (v - zp.get(c).copied().unwrap_or(0.0)) * s.data[c]
                        })
                        .collect();
                    let int8 = if t.data_type == pb::tensor_proto::DataType::Int8 as i32
                        && zp.iter().all(|&z| z == 0.0)
                        && (per == 1 || axis == 0)
                    {
                        Some((vals.iter().map(|&v| v as i8).collect(), s.data.clone()))
                    } else {
                        None
                    };
                    self.vals.insert(out, Val::Const(Const { shape, data, int8 }));
                    return Ok(true);
                }
                let Some(t) = self.int_of(inp(0)) else { return Ok(false) };
                let (s, z) = self.qparams(n)?;
                if s != self.tensors[t].scale || z != self.tensors[t].zp {
                    return Err(unsupported(format!("{}: dequantises with other parameters than its tensor was quantised with", n.name)));
                }
                self.float_views.insert(out.clone());
                self.vals.insert(out, Val::Int(t));
                Ok(true)
            }
            "QuantizeLinear" => {
                let (s, z) = self.qparams(n)?;
                let src = inp(0).to_string();
                if src == input {
                    // The model input: tensor 0, created by the caller.
                    if self.tensors[0].scale != 0.0 {
                        return Err(unsupported("the model input is quantised twice"));
                    }
                    self.tensors[0].scale = s;
                    self.tensors[0].zp = z;
                    self.vals.insert(out, Val::Int(0));
                    return Ok(true);
                }
                match self.vals.get(&src).cloned() {
                    Some(Val::PendingConv { conv }) => {
                        let p = *conv;
                        let cout = p.mult.len();
                        let t = QTensor { c: cout, h: p.geometry.oh, w: p.geometry.ow, scale: s, zp: z };
                        let dst = self.new_tensor(t);
                        let q = |v: f32| kernels::quantize_u8(v, s, z);
                        let requant = Requant {
                            offset: p.offset,
                            mult: p.mult.iter().map(|m| m / s).collect(),
                            bias: p.bias.iter().map(|b| b / s).collect(),
                            out_zp: z as f32,
                            lo: p.lo.iter().map(|&v| if v == f32::NEG_INFINITY { 0 } else { q(v) }).collect(),
                            hi: p.hi.iter().map(|&v| if v == f32::INFINITY { 255 } else { q(v) }).collect(),
                        };
                        self.ops.push(Op::Conv(Box::new(ConvOp {
                            src: p.src,
                            dst,
                            geometry: p.geometry,
                            kind: p.kind,
                            requant,
                            name: p.name,
                            macs: p.macs,
                        })));
                        self.vals.insert(out, Val::Int(dst));
                        Ok(true)
                    }
                    Some(Val::PendingMap { src, steps, .. }) => {
                        let st = self.tensors[src];
                        let dst = self.new_tensor(QTensor { scale: s, zp: z, ..st });
                        let mut table = vec![0u8; st.c * 256];
                        for c in 0..st.c {
                            for qv in 0..256usize {
                                let mut v = st.deq(qv as u8);
                                for step in &steps {
                                    v = match step {
                                        Step::Relu => v.max(0.0),
                                        Step::Min(b) => v.min(if b.len() == 1 { b[0] } else { b[c] }),
                                        Step::Clip(lo, hi) => v.clamp(*lo, *hi),
                                    };
                                }
                                table[c * 256 + qv] = kernels::quantize_u8(v, s, z);
                            }
                        }
                        self.ops.push(Op::Lut { src, dst, table });
                        self.vals.insert(out, Val::Int(dst));
                        Ok(true)
                    }
                    Some(Val::PendingAdd { a, b, .. }) => {
                        let ta = self.tensors[a];
                        let dst = self.new_tensor(QTensor { scale: s, zp: z, ..ta });
                        self.ops.push(Op::Add { a, b, dst });
                        self.vals.insert(out, Val::Int(dst));
                        Ok(true)
                    }
                    Some(Val::Int(t)) if self.tensors[t].scale == s && self.tensors[t].zp == z => {
                        self.vals.insert(out, Val::Int(t));
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            }
            "Conv" => {
                let Some(src) = self.int_of(inp(0)) else { return Ok(false) };
                let Some(w) = self.konst(inp(1)) else { return Ok(false) };
                let Some((wq, wscale)) = w.int8.clone() else { return Ok(false) };
                if w.shape.len() != 4 {
                    return Ok(false);
                }
                if attr_ints(n, "dilations").is_some_and(|d| d.iter().any(|&v| v != 1))
                    || n.attribute.iter().any(|a| a.name == "auto_pad" && !a.s.is_empty() && a.s != b"NOTSET")
                {
                    return Ok(false);
                }
                let x = self.tensors[src];
                let (cout, cin_g, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
                let group = attr_int(n, "group").unwrap_or(1) as usize;
                let strides = attr_ints(n, "strides").unwrap_or(vec![1, 1]);
                let pads = attr_ints(n, "pads").unwrap_or(vec![0; 4]);
                if strides.len() != 2 || pads.len() != 4 || pads.iter().any(|&p| p < 0) {
                    return Ok(false);
                }
                let depthwise = group == x.c && group == cout && cin_g == 1 && group > 1;
                if !(depthwise || group == 1 && cin_g == x.c) {
                    return Ok(false);
                }
                let geometry = ConvGeometry::new(
                    x.h,
                    x.w,
                    x.c,
                    kh,
                    kw,
                    [strides[0] as usize, strides[1] as usize],
                    [pads[0] as usize, pads[1] as usize, pads[2] as usize, pads[3] as usize],
                )
                .ok_or_else(|| unsupported(format!("{}: kernel larger than the padded input", n.name)))?;
                let bias = match n.input.get(2).filter(|b| !b.is_empty()) {
                    None => vec![0.0; cout],
                    Some(b) => match self.konst(b) {
                        Some(c) if c.data.len() == cout => c.data,
                        _ => return Ok(false),
                    },
                };
                let sw = |c: usize| if wscale.len() == 1 { wscale[0] } else { wscale[c] };
                let mult: Vec<f32> = (0..cout).map(|c| x.scale * sw(c)).collect();
                let k = kh * kw * cin_g;
                let (kind, offset) = if depthwise {
                    (ConvKind::Depthwise(DepthwiseWeights::new(&wq, cout, kh * kw)), vec![0; cout])
                } else {
                    // [cout][cin][kh][kw] -> rows [cout][kh][kw][cin], the im2row (and NHWC) order.
                    let mut rows = vec![0i8; cout * k];
                    for c in 0..cout {
                        for ci in 0..cin_g {
                            for i in 0..kh {
                                for j in 0..kw {
                                    rows[c * k + (i * kw + j) * cin_g + ci] = wq[((c * cin_g + ci) * kh + i) * kw + j];
                                }
                            }
                        }
                    }
                    let pw = PackedWeights::new(rows, cout, kh, kw * cin_g);
                    let offset = pw.sums().iter().map(|s| s * x.zp as i32).collect();
                    (ConvKind::Dense(pw), offset)
                };
                let macs = (geometry.oh * geometry.ow * cout * k) as u64;
                let conv = FloatConv {
                    src,
                    geometry,
                    kind,
                    offset,
                    mult,
                    bias,
                    lo: vec![f32::NEG_INFINITY; cout],
                    hi: vec![f32::INFINITY; cout],
                    name: n.name.clone(),
                    macs,
                    start: index,
                };
                self.vals.insert(out, Val::PendingConv { conv: Box::new(conv) });
                Ok(true)
            }
            "Relu" | "Min" | "Clip" => {
                let v = self.vals.get(inp(0)).cloned();
                let step = match n.op_type.as_str() {
                    "Relu" => Step::Relu,
                    "Min" => match self.konst(inp(1)) {
                        Some(b) => Step::Min(b.data),
                        None => return Ok(false),
                    },
                    _ => {
                        let lo = if inp(1).is_empty() {
                            f32::NEG_INFINITY
                        } else {
                            self.konst(inp(1)).and_then(|c| c.data.first().copied()).unwrap_or(f32::NAN)
                        };
                        let hi = if inp(2).is_empty() {
                            f32::INFINITY
                        } else {
                            self.konst(inp(2)).and_then(|c| c.data.first().copied()).unwrap_or(f32::NAN)
                        };
                        if lo.is_nan() || hi.is_nan() {
                            return Ok(false);
                        }
                        Step::Clip(lo, hi)
                    }
                };
                match v {
                    Some(Val::PendingConv { mut conv }) if self.uses.get(inp(0)) == Some(&1) => {
                        let cout = conv.mult.len();
                        match &step {
                            Step::Relu => conv.lo.iter_mut().for_each(|l| *l = l.max(0.0)),
                            Step::Min(b) if b.len() == 1 || b.len() == cout => {
                                conv.hi.iter_mut().enumerate().for_each(|(c, h)| *h = h.min(if b.len() == 1 { b[0] } else { b[c] }))
                            }
                            Step::Clip(lo, hi) => conv.lo.iter_mut().zip(conv.hi.iter_mut()).for_each(|(l, h)| {
                                *l = l.max(*lo);
                                *h = h.min(*hi);
                            }),
                            _ => return Ok(false),
                        }
                        self.vals.insert(out, Val::PendingConv { conv });
                        Ok(true)
                    }
                    Some(Val::Int(t)) => {
                        if let Step::Min(b) = &step {
                            if b.len() != 1 && b.len() != self.tensors[t].c {
                                return Ok(false);
                            }
                        }
                        self.vals.insert(out, Val::PendingMap { src: t, steps: vec![step], start: index });
                        Ok(true)
                    }
                    Some(Val::PendingMap { src, mut steps, start }) if self.uses.get(inp(0)) == Some(&1) => {
                        if let Step::Min(b) = &step {
                            if b.len() != 1 && b.len() != self.tensors[src].c {
                                return Ok(false);
                            }
                        }
                        steps.push(step);
                        self.vals.insert(out, Val::PendingMap { src, steps, start });
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            }
            "Add" => {
                let (Some(a), Some(b)) = (self.int_of(inp(0)), self.int_of(inp(1))) else { return Ok(false) };
                let (ta, tb) = (self.tensors[a], self.tensors[b]);
                if (ta.c, ta.h, ta.w) != (tb.c, tb.h, tb.w) {
                    return Ok(false);
                }
                self.vals.insert(out, Val::PendingAdd { a, b, start: index });
                Ok(true)
            }
            // Exporters write clip bounds and shapes as Constant nodes (torch.onnx does).
            "Constant" => {
                let Some(t) = n.attribute.iter().find(|a| a.name == "value").and_then(|a| a.t.as_ref()) else { return Ok(false) };
                let Ok((shape, d)) = decode(t) else { return Ok(false) };
                self.vals.insert(out, Val::Const(Const { shape, data: d.as_f32(), int8: None }));
                Ok(true)
            }
            "Identity" => match self.vals.get(inp(0)).cloned() {
                Some(v) => {
                    self.vals.insert(out, v);
                    Ok(true)
                }
                None => Ok(false),
            },
            _ => Ok(false),
        }
    }
}

/// Compiles `model` for a [1, C, H, W] float input; Err names what the engine does not cover.
pub fn compile(model: &OnnxModel) -> Result<Plan> {
    let mut limit = model.graph().node.len();
    loop {
        match compile_until(model, limit)? {
            Ok(plan) => return Ok(plan),
            // A fused chain that never reached a QuantizeLinear: hand it to the tail whole.
            Err(start) if start < limit => limit = start,
            Err(_) => return Err(unsupported("the integer part cannot be closed")),
        }
    }
}

/// Compiles the first `limit` nodes at most; Ok(Err(i)): retry with the tail starting at node i.
fn compile_until(model: &OnnxModel, limit: usize) -> Result<std::result::Result<Plan, usize>> {
    let graph = model.graph();
    let input =
        graph.input.iter().find(|i| !graph.initializer.iter().any(|t| t.name == i.name)).ok_or_else(|| unsupported("no graph input"))?;
    let dims = model.inputs.first().and_then(|i| i.dims.clone()).ok_or_else(|| unsupported("the input has no declared shape"))?;
    let fixed: Vec<usize> = dims
        .iter()
        .skip(1)
        .map(|d| match d {
            crate::model::Dim::Fixed(n) => Ok(*n),
            _ => Err(unsupported("the input's channel and spatial sizes must be fixed")),
        })
        .collect::<Result<_>>()?;
    let [c, h, w] = fixed.as_slice() else { return Err(unsupported(format!("input {dims:?}: expected [batch, C, H, W]"))) };
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
        inits: graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect(),
        vals: HashMap::new(),
        tensors: vec![QTensor { c: *c, h: *h, w: *w, scale: 0.0, zp: 0 }],
        ops: Vec::new(),
        uses,
        float_views: Default::default(),
    };
    let mut stop = limit;
    for (i, n) in graph.node.iter().enumerate().take(limit) {
        if !comp.node(i, n, &input.name)? {
            stop = i;
            break;
        }
    }
    if comp.tensors[0].scale == 0.0 {
        return Err(unsupported("the model input is not quantised by a QuantizeLinear (not a QDQ model)"));
    }
    if comp.ops.is_empty() {
        return Err(unsupported(format!(
            "no integer op before {:?}",
            graph.node.get(stop).map(|n| n.op_type.as_str()).unwrap_or("the end")
        )));
    }
    // The tail: every node from the boundary on, plus earlier constant nodes it reads.
    let tail_nodes: Vec<&pb::NodeProto> = graph.node[stop..].iter().collect();
    let produced_in_tail: std::collections::HashSet<&str> = tail_nodes.iter().flat_map(|n| n.output.iter().map(|s| s.as_str())).collect();
    let mut crossing: Vec<String> = Vec::new();
    let mut constant_nodes: Vec<&pb::NodeProto> = Vec::new();
    let mut needed: Vec<&str> = tail_nodes.iter().flat_map(|n| n.input.iter().map(|s| s.as_str())).collect();
    needed.extend(graph.output.iter().map(|o| o.name.as_str()));
    let mut seen = std::collections::HashSet::new();
    while let Some(v) = needed.pop() {
        if v.is_empty() || produced_in_tail.contains(v) || comp.inits.contains_key(v) || !seen.insert(v) {
            continue;
        }
        let producer = graph.node[..stop].iter().find(|n| n.output.iter().any(|o| o == v));
        match (producer, comp.vals.get(v)) {
            (Some(p), Some(Val::Const(_))) => {
                constant_nodes.push(p);
                needed.extend(p.input.iter().map(|s| s.as_str()));
            }
            (_, Some(Val::Int(_))) if comp.float_views.contains(v) => crossing.push(v.to_string()),
            (_, Some(Val::PendingConv { .. })) => crossing.push(v.to_string()),
            (_, Some(Val::PendingMap { start, .. } | Val::PendingAdd { start, .. })) => return Ok(Err(*start)),
            _ => {
                return Err(unsupported(format!(
                    "value {v:?} crosses from the integer part to the float tail in a form the engine cannot hand over"
                )))
            }
        }
    }
    let pending_start = |name: &String| match comp.vals.get(name) {
        Some(Val::PendingConv { conv }) => Some(conv.start),
        _ => None,
    };
    let boundary_name = match crossing.as_slice() {
        [one] => one.clone(),
        // A float conv among several crossings: hand it to the tail whole, and retry.
        many if many.iter().any(|c| pending_start(c).is_some()) => {
            return Ok(Err(many.iter().filter_map(pending_start).min().expect("one pending")));
        }
        many => return Err(unsupported(format!("{} tensors cross into the float tail ({many:?}); one is supported", many.len()))),
    };
    let (boundary, head) = match comp.vals.get(&boundary_name) {
        Some(Val::PendingConv { conv }) => (conv.src, Some((**conv).clone())),
        _ => (comp.int_of(&boundary_name).expect("checked"), None),
    };
    let tail = if tail_nodes.is_empty() {
        None
    } else {
        // The tail's input: the boundary tensor, or the head's output.
        let b = match &head {
            Some(h) => QTensor { c: h.mult.len(), h: h.geometry.oh, w: h.geometry.ow, scale: 1.0, zp: 0 },
            None => comp.tensors[boundary],
        };
        let mut g = pb::GraphProto { name: format!("{}_tail", graph.name), ..Default::default() };
        constant_nodes.sort_by_key(|n| graph.node.iter().position(|m| std::ptr::eq(m, *n)));
        g.node = constant_nodes.into_iter().chain(tail_nodes.iter().copied()).cloned().collect();
        let used: std::collections::HashSet<&str> = g.node.iter().flat_map(|n| n.input.iter().map(|s| s.as_str())).collect();
        g.initializer = graph.initializer.iter().filter(|t| used.contains(t.name.as_str())).cloned().collect();
        g.output = graph.output.clone();
        g.input = vec![crate::model::float_value_info(&boundary_name, &[1, b.c, b.h, b.w].map(crate::model::Dim::Fixed))];
        Some(pb::ModelProto { graph: Some(g), ..model.proto.clone() })
    };
    let macs = comp.ops.iter().map(|o| o.macs()).sum::<u64>() + head.as_ref().map_or(0, |h| h.macs);
    let input_t = comp.tensors[0];
    Ok(Ok(Plan { tensors: comp.tensors, input: input_t, ops: comp.ops, boundary, head, tail, macs }))
}
