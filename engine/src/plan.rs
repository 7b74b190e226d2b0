//! A compiled INT8 plan: u8 tensors (channels last) and float values, and the steps
//! between them: fused integer ops ([`Op`]), conversions, convs with a float output,
//! and float ops for the interpreter ([`crate::float`]). The compiler
//! ([`crate::compile`]) makes a plan; the engine ([`crate::Engine`]) runs it with the
//! kernels ([`crate::kernels`]).

use crate::float::{FloatOp, Operand};
use crate::kernels::{ConvGeometry, Requant};
// A plan's tensors and conv weights are the kernels' own types: the kernels know no plan.
pub use crate::kernels::{ByteMap, ConvKind, Factors, Geometry3, MaxGroups, QTensor};

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
    /// A 3-D convolution with few output channels (AVX-512 VNNI), pixels in lanes:
    /// the input copied once into planes padded with the zero point, then 16
    /// neighbouring outputs of one channel per `vpdpbusd`, each lane's four bytes a
    /// window of four taps along x ([`crate::kernels::Narrow3`]).
    Narrow(Box<crate::kernels::Narrow3>),
    /// A 3-D convolution read in place from its input padded once with the zero point,
    /// channels last (AVX-512 VNNI; AVX2 for few input channels; [`crate::kernels::Padded3`]).
    Padded(Box<crate::kernels::Padded3>),
    /// A transposed convolution as a dense conv with one output channel per (output
    /// parity class, channel) on its input, its sums shuffled into the output
    /// ([`crate::subpixel`]).
    SubPixel(Box<crate::subpixel::SubPixel>),
    /// A 2-D convolution with short kernel rows (a 3-channel first layer, on AMX):
    /// each output pixel's taps gathered into one row, then multiplied as a pointwise
    /// conv on the rows ([`crate::kernels::Rows2`]).
    Rows(Box<crate::kernels::Rows2>),
}

impl ConvLayout {
    /// Output pixels (voxels).
    pub fn pixels(&self) -> usize {
        match self {
            ConvLayout::Direct(g) => g.oh * g.ow,
            ConvLayout::Planes { g, .. } | ConvLayout::Transposed { g, .. } => g.output.iter().product(),
            ConvLayout::Narrow(n) => n.g.output.iter().product(),
            ConvLayout::Padded(p) => p.g.output.iter().product(),
            ConvLayout::SubPixel(sp) => sp.g.output.iter().product(),
            ConvLayout::Rows(r) => r.g.oh * r.g.ow,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            ConvLayout::Direct(g) => format!("{}x{}/{}", g.kh, g.kw, g.stride[0]),
            ConvLayout::Planes { g, .. } => format!("{}x{}x{}/{} 3-D", g.kernel[0], g.kernel[1], g.kernel[2], g.stride[0]),
            ConvLayout::Transposed { g, .. } => format!("{}x{}x{}/{} transposed", g.kernel[0], g.kernel[1], g.kernel[2], g.stride[0]),
            ConvLayout::Narrow(n) => format!("{}x{}x{}/{} 3-D narrow", n.g.kernel[0], n.g.kernel[1], n.g.kernel[2], n.g.stride[0]),
            ConvLayout::Padded(p) => {
                let (k, s) = (p.g.kernel, p.g.stride);
                match (p.g.input[0], &p.lanes) {
                    // A 2-D conv as a 3-D one of depth 1.
                    (1, Some(_)) if k[0] == 1 => format!("{}x{}/{} pixels in lanes", k[1], k[2], s[1]),
                    (_, Some(_)) => format!("{}x{}x{}/{} 3-D in place, voxels in lanes", k[0], k[1], k[2], s[0]),
                    _ => format!("{}x{}x{}/{} 3-D in place", k[0], k[1], k[2], s[0]),
                }
            }
            ConvLayout::Rows(r) => format!("{}x{}/{} gathered", r.g.kh, r.g.kw, r.g.stride[0]),
            ConvLayout::SubPixel(sp) => {
                let g = &sp.g;
                format!("{}x{}x{}/{} transposed as sub-pixel {}", g.kernel[0], g.kernel[1], g.kernel[2], g.stride[0], sp.inner.describe())
            }
        }
    }

    /// Products summed into one output sum at most (bounding its magnitude): a conv's
    /// `macs` over its outputs, as every output has as many; a transposed conv's outputs
    /// receive different numbers of taps, so the most any class receives (its window).
    pub fn products_per_output(&self, macs: u64, cout: usize) -> u64 {
        match self {
            ConvLayout::Transposed { g, .. } => (0..3).map(|a| g.kernel[a].div_ceil(g.stride[a]) as u64).product::<u64>() * g.cin as u64,
            ConvLayout::SubPixel(sp) => (sp.inner_macs / (sp.sub.iter().product::<usize>() * sp.offset.len()).max(1) as u64).max(1),
            _ => macs / (self.pixels() * cout).max(1) as u64,
        }
    }

    /// Whether the conv's int32 sums end in the engine's second accumulator (a
    /// transposed conv's: the first holds its columns or its sub-pixel sums).
    pub fn sums_in_acc2(&self) -> bool {
        matches!(self, ConvLayout::Transposed { .. } | ConvLayout::SubPixel(_))
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
    /// dst = clamp(QuantizeLinear(DequantizeLinear(a) + DequantizeLinear(b)), bounds):
    /// the clamp is an activation after the add (a ResNet's ReLU), exact on the
    /// output's grid because QuantizeLinear is monotone.
    Add {
        a: usize,
        b: usize,
        dst: usize,
        bounds: [u8; 2],
    },
    /// Data movement (Concat, Reshape, Transpose, Slice, Flatten...): byte copies.
    Gather(Box<GatherOp>),
    /// InstanceNormalization of a u8 tensor, quantised: see [`InstanceNormOp`].
    InstanceNorm(Box<InstanceNormOp>),
    /// A conv's float output instance-normalised and quantised: see [`ConvNormOp`].
    ConvNorm(Box<ConvNormOp>),
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
        index: MaxGroups,
        table: Option<Vec<u8>>,
    },
    /// Multiplication by a constant (a circular mask): dst byte j is
    /// `tables[k * 256 + src[j]]`, k the factor of byte j ([`Factors`]), one table per
    /// distinct factor, each computed with the float ops' dequantise, multiply, quantise
    /// (so exact).
    Multiply {
        src: usize,
        dst: usize,
        tables: Vec<u8>,
        factors: Factors,
    },
}

/// One element-wise activation step on dequantised values (of a table, an add's clamp,
/// an instance normalisation's table), as the float ops compute it.
#[derive(Debug, Clone)]
pub enum MapStep {
    Relu,
    /// Per channel (or one value for all).
    Min(Vec<f32>),
    Clip(f32, f32),
    /// Slopes per channel (or one for all).
    PRelu(Vec<f32>),
}

/// Channel `c`'s value of a parameter given as one value for all channels or one per
/// channel (a scalar or [C] operand, broadcast as ONNX does).
pub fn channel_value(v: &[f32], c: usize) -> f32 {
    if v.len() == 1 {
        v[0]
    } else {
        v[c]
    }
}

impl MapStep {
    /// The step on value `v` of channel `c`, as the float ops compute it (Clip as
    /// max then min, so crossed bounds give `hi`, as ONNX says). Monotone in `v`
    /// except PRelu with a negative slope.
    pub fn apply(&self, v: f32, c: usize) -> f32 {
        let of = |b: &[f32]| channel_value(b, c);
        match self {
            MapStep::Relu => v.max(0.0),
            MapStep::Min(b) => v.min(of(b)),
            MapStep::Clip(lo, hi) => v.max(*lo).min(*hi),
            MapStep::PRelu(s) => {
                if v < 0.0 {
                    of(s) * v
                } else {
                    v
                }
            }
        }
    }

    /// Values per channel (Min's bounds, PRelu's slopes), where the step has them.
    pub fn per_channel(&self) -> Option<&[f32]> {
        match self {
            MapStep::Min(b) | MapStep::PRelu(b) => Some(b),
            _ => None,
        }
    }
}

/// InstanceNormalization of a u8 tensor, quantised with dst's parameters. Each
/// channel holds at most 256 distinct values, so its statistics come from a histogram
/// of its bytes (integer counts: the same at any thread count), with the float op's
/// arithmetic: the mean and variance of the dequantised values summed in f64 (the
/// mean's sum is exact either way for planes below 2^20 voxels; the variance's
/// terms are grouped by value), then a table of 256 entries per channel,
/// y = (x - mean) inv scale + bias in f32 as the float op computes it, then the
/// activations after it (`steps`, a U-Net's PReLU, a BagNet's ReLU), quantised.
#[derive(Debug, Clone)]
pub struct InstanceNormOp {
    pub src: usize,
    pub dst: usize,
    pub scale: Vec<f32>,
    pub bias: Vec<f32>,
    pub eps: f32,
    pub steps: Vec<MapStep>,
}

/// `Conv -> InstanceNormalization -> [PReLU] -> clamps (ReLU, Clip, Min) -> QuantizeLinear`, the
/// conv in integers and without bounds of its own. The norm is affine in the conv's
/// integer sums (f = (acc - offset) mult + bias), so each channel's statistics come from
/// the exact integer moments of acc (mean_f = mean_acc mult + bias - offset mult,
/// var_f = var_acc mult²), and the whole op is one requantisation of the sums: acc
/// times mult inv scale / s_y, plus ((bias - mean_f) inv scale + beta) / s_y, clamped to
/// the activations' bounds, by the conv kernels' own vectorised requantisation. Within
/// a quantisation step of the unfused float steps; the values never exist as floats.
#[derive(Debug, Clone)]
pub struct ConvNormOp {
    pub conv: FloatConv,
    pub dst: usize,
    pub scale: Vec<f32>,
    pub bias: Vec<f32>,
    pub eps: f32,
    /// A PReLU's slopes per channel before the clamps, if there is one. Its two sides
    /// are two requantisations of the same sums: q+ with the norm's multipliers,
    /// clamped to [z, hi], and q- with them times the slope, clamped to [lo, z] (to
    /// [z, hi] for a negative slope, which sends negative values up); the sign of
    /// acc mult + bias makes one of the two z, so the output is q+ + q- - z, each side
    /// rounded once as a single requantisation is.
    pub slopes: Option<Vec<f32>>,
    /// The clamps' bounds per channel (float values; around 0 where there is a PReLU).
    pub clamp: (Vec<f32>, Vec<f32>),
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
    /// A channel concat of whole tensors: each dst pixel is the same pixel of each
    /// (source, channels) in turn, a source holding [pixels][channels]. Its runs are a
    /// few bytes long (a U-Net's skip connections: 2-8 channels each), too short for a
    /// copy call each and too regular for a pair per byte.
    Channels(Vec<(u32, u32)>),
    /// Byte by byte, per source (dst byte, source byte): channels-last transposes
    /// (a pixel shuffle, fields regrouped) move single bytes. Each source's pairs are
    /// in increasing dst order (the engine finds a range of dst bytes by bisection).
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
            Op::InstanceNorm(n) => vec![n.src],
            Op::ConvNorm(n) => vec![n.conv.src],
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
            Op::InstanceNorm(n) => n.dst,
            Op::ConvNorm(n) => n.dst,
        }
    }

    pub fn macs(&self) -> u64 {
        match self {
            Op::Conv(c) => c.macs,
            Op::ConvNorm(n) => n.conv.macs,
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
    /// Tensor `src` dequantised into float value `dst` (NC...), plus tensor `plus`
    /// dequantised where given (an Add of two dequantised tensors that no
    /// QuantizeLinear follows: the same f32 sums, in one pass instead of three).
    Dequantize {
        src: usize,
        dst: usize,
        plus: Option<usize>,
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
            Step::Dequantize { src, plus, .. } => [*src].into_iter().chain(*plus).collect(),
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

    /// The convolutions and products that run in float (the interpreter's Conv,
    /// ConvTranspose, Gemm, MatMul), by node name: what "every layer in integers" rules out.
    pub fn float_layers(&self) -> Vec<String> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::Float {
                    op: FloatOp::Conv { .. } | FloatOp::ConvTranspose { .. } | FloatOp::Gemm { .. } | FloatOp::MatMul,
                    name,
                    ..
                } => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    /// A one-line description of `step` for profiles, e.g. `conv 3x3/2 depthwise 48 -> 48 at 11x11`
    /// or `conv 3x3/1 grouped 4x4 96 -> 96 at 47x47` (inputs x outputs per group).
    pub fn label(&self, step: &Step) -> String {
        let t = |i: usize| self.tensors[i];
        let at = |i: usize| self.shapes[i][2..].iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
        let conv_label = |layout: &ConvLayout, kind: &ConvKind, cin: usize, cout: usize| {
            let k = match (layout, kind) {
                (ConvLayout::Direct(g), ConvKind::Dense(_)) if g.is_pointwise() => "pointwise".to_string(),
                (_, ConvKind::Dense(_)) => "dense".to_string(),
                (_, ConvKind::Depthwise(_)) => "depthwise".to_string(),
                (_, ConvKind::Grouped(w)) => format!("grouped {}x{}", w.cin_g, w.cout_g),
            };
            format!("conv {} {k} {cin} -> {cout}", layout.describe())
        };
        match step {
            Step::Int(Op::Conv(c)) => format!("{} at {}", conv_label(&c.layout, &c.kind, t(c.src).c, t(c.dst).c), at(c.dst)),
            Step::Int(Op::Lut { dst, .. }) => format!("table (activation) {} at {}", t(*dst).c, at(*dst)),
            Step::Int(Op::Add { dst, bounds, .. }) => {
                format!("add{} {} at {}", if *bounds == [0, 255] { "" } else { " (clamped)" }, t(*dst).c, at(*dst))
            }
            Step::Int(Op::Gather(g)) => format!("move ({}) {} at {}", g.what, t(g.dst).c, at(g.dst)),
            Step::Int(Op::InstanceNorm(n)) => format!("instance norm {} at {}", t(n.dst).c, at(n.dst)),
            Step::Int(Op::ConvNorm(n)) => {
                format!("{} + instance norm at {}", conv_label(&n.conv.layout, &n.conv.kind, t(n.conv.src).c, t(n.dst).c), at(n.dst))
            }
            Step::Int(Op::MeanPool { src, dst }) => format!("global average pool {} at {}", t(*dst).c, at(*src)),
            Step::Int(Op::GatherMax { dst, group, .. }) => format!("max of {group} {} at {}", t(*dst).c, at(*dst)),
            Step::Int(Op::Multiply { dst, tables, .. }) => {
                format!("multiply ({} factors) {} at {}", tables.len() / 256, t(*dst).c, at(*dst))
            }
            Step::Quantize { dst, .. } => format!("quantize {} at {}", t(*dst).c, at(*dst)),
            Step::Dequantize { src, plus: None, .. } => format!("dequantize {} at {}", t(*src).c, at(*src)),
            Step::Dequantize { src, plus: Some(_), .. } => format!("dequantize + add {} at {}", t(*src).c, at(*src)),
            Step::ConvToFloat { conv, .. } => {
                format!("{} to float at {:?}", conv_label(&conv.layout, &conv.kind, t(conv.src).c, conv.mult.len()), &conv.shape[2..])
            }
            Step::Float { op, dst, .. } => format!("float {} -> {:?}", op.name(), self.float_shapes[*dst]),
        }
    }
}
