//! Rule: `InstanceNormalization(DQ(t), scale, bias) -> QuantizeLinear` with constant
//! scale and bias (one per channel): the statistics of a u8 tensor from a histogram of
//! its bytes and a table per channel ([`crate::plan::InstanceNormOp`]), instead of
//! dequantising the tensor, normalising it in float and quantising it again (a MONAI
//! U-Net's and a 3-D BagNet's normalisation between integer convs). Activations after it
//! (`Relu`, `PRelu`, ...: [`super::activation`]) join its tables.

use edgemed_onnx::{attr, pb};

use super::{input, output, Compiler, Val};
use crate::error::Result;
use crate::plan::{InstanceNormOp, Op, QTensor, Step};

impl Compiler<'_> {
    pub(super) fn instance_norm(&mut self, n: &pb::NodeProto) -> Result<bool> {
        let (out, inp) = (output(n), |i: usize| input(n, i));
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

    /// Instance normalisation `n` (its activations included), quantised with (s, z)
    /// into a new tensor (`n.dst` is set here).
    pub(super) fn quantized_instance_norm(&mut self, mut n: InstanceNormOp, s: f32, z: u8) -> usize {
        n.dst = self.new_tensor(QTensor { scale: s, zp: z, ..self.tensors[n.src] }, self.shapes[n.src].clone());
        let dst = n.dst;
        self.steps.push(Step::Int(Op::InstanceNorm(Box::new(n))));
        dst
    }
}
