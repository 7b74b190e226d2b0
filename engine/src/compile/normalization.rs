//! Rule: `InstanceNormalization(DQ(t), scale, bias) -> QuantizeLinear` with constant
//! scale and bias (one per channel): the statistics of a u8 tensor from a histogram of
//! its bytes and a table per channel ([`crate::plan::InstanceNormOp`]), instead of
//! dequantising the tensor, normalising it in float and quantising it again (a MONAI
//! U-Net's and a 3-D BagNet's normalisation between integer convs). Activations after it
//! (`Relu`, `PRelu`, ...: [`super::activation`]) join its tables.

use edgemed_onnx::{attr, pb};

use super::activation::MapStep;
use super::{input, output, Compiler, Val};
use crate::error::Result;
use crate::plan::{channel_value, ConvNormOp, FloatConv, InstanceNormOp, Op, QTensor, Step};

impl Compiler<'_> {
    pub(super) fn instance_norm(&mut self, n: &pb::NodeProto) -> Result<bool> {
        let (out, inp) = (output(n), |i: usize| input(n, i));
        if let Some(Val::PendingConv { conv }) = self.vals.get(inp(0)).cloned() {
            return Ok(self.conv_norm(n, conv));
        }
        let Some(src) = self.int_of(inp(0)).filter(|_| self.float_views.contains(inp(0))) else { return Ok(false) };
        let c = self.tensors[src].c;
        let (Some(scale), Some(bias)) = (self.konst(inp(1)), self.konst(inp(2))) else { return Ok(false) };
        let eps = attr::float(n, "epsilon", 1e-5);
        if self.shapes[src].len() < 3 || scale.data.len() != c || bias.data.len() != c || eps.is_nan() || eps < 0.0 {
            return Ok(false);
        }
        self.vals.insert(out, Val::PendingNorm { src, scale: scale.data, bias: bias.data, eps, steps: vec![] });
        Ok(true)
    }

    /// Rule: `Conv -> InstanceNormalization` (the conv's output read by the norm alone,
    /// constant scale and bias per channel): pending as one op, [`ConvNormOp`], once a
    /// QuantizeLinear follows (else the conv's float output and the interpreter's norm).
    fn conv_norm(&mut self, n: &pb::NodeProto, conv: Box<FloatConv>) -> bool {
        let (out, inp) = (output(n), |i: usize| input(n, i));
        let c = conv.mult.len();
        let (Some(scale), Some(bias)) = (self.konst(inp(1)), self.konst(inp(2))) else { return false };
        let eps = attr::float(n, "epsilon", 1e-5);
        if self.uses.get(inp(0)) != Some(&1)
            || conv.shape.len() < 3
            || scale.data.len() != c
            || bias.data.len() != c
            || eps.is_nan()
            || eps < 0.0
        {
            return false;
        }
        self.vals.insert(out, Val::PendingConvNorm { conv, scale: scale.data, bias: bias.data, eps, steps: vec![] });
        true
    }

    /// A pending conv + instance norm with its activations (`steps`), quantised with
    /// (s, z) into a new tensor as one [`ConvNormOp`], where the conv has no bounds of its
    /// own and the activations are clamps, optionally after one PReLU (a MONAI U-Net's)
    /// whose clamps keep 0 inside their bounds; None otherwise
    /// (the unfused float steps then run).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn quantized_conv_norm(
        &mut self,
        conv: FloatConv,
        scale: Vec<f32>,
        bias: Vec<f32>,
        eps: f32,
        steps: &[MapStep],
        s: f32,
        z: u8,
    ) -> Option<usize> {
        let cout = conv.mult.len();
        let (slopes, clamps) = match steps.split_first() {
            Some((MapStep::PRelu(a), rest)) => {
                let slopes: Vec<f32> = (0..cout).map(|c| channel_value(a, c)).collect();
                if slopes.iter().any(|v| !v.is_finite()) {
                    return None;
                }
                (Some(slopes), rest)
            }
            _ => (None, steps),
        };
        // Relu, Clip and Min are monotone clamps, so their chain is the clamp to its
        // images of -inf and +inf.
        let unbounded = conv.lo.iter().all(|l| *l == f32::NEG_INFINITY) && conv.hi.iter().all(|h| *h == f32::INFINITY);
        let only_clamps = clamps.iter().all(|st| matches!(st, MapStep::Relu | MapStep::Clip(..) | MapStep::Min(_)));
        let bound = |from: f32| (0..cout).map(|ch| clamps.iter().fold(from, |y, st| st.apply(y, ch))).collect::<Vec<f32>>();
        let (lo, hi) = (bound(f32::NEG_INFINITY), bound(f32::INFINITY));
        let ordered = lo.iter().zip(&hi).all(|(l, h)| !l.is_nan() && !h.is_nan() && l <= h);
        // With a PReLU the two sides are clamped apart at 0 (see `ConvNormOp::slopes`).
        let around_zero = slopes.is_none() || lo.iter().zip(&hi).all(|(l, h)| *l <= 0.0 && *h >= 0.0);
        if !(unbounded && only_clamps && ordered && around_zero) {
            return None;
        }
        let t = QTensor::of_shape(&conv.shape, s, z)?;
        let dst = self.new_tensor(t, conv.shape.clone());
        self.steps.push(Step::Int(Op::ConvNorm(Box::new(ConvNormOp { conv, dst, scale, bias, eps, slopes, clamp: (lo, hi) }))));
        Some(dst)
    }

    /// Instance normalisation `n` (its activations included), quantised with (s, z)
    /// into a new tensor (`n.dst` is set here).
    pub(super) fn quantized_instance_norm(&mut self, mut n: InstanceNormOp, s: f32, z: u8) -> usize {
        n.dst = self.new_tensor(QTensor { scale: s, zp: z, ..self.tensors[n.src] }, self.shapes[n.src].clone());
        let dst = n.dst;
        self.steps.push(Step::Int(Op::InstanceNorm(Box::new(n))));
        dst
    }
}
