//! Rule: `InstanceNormalization(DQ(t), scale, bias) -> QuantizeLinear` with constant
//! scale and bias (one per channel): the statistics of a u8 tensor from a histogram of
//! its bytes and a table per channel ([`crate::plan::InstanceNormOp`]), instead of
//! dequantising the tensor, normalising it in float and quantising it again (a MONAI
//! U-Net's and a 3-D BagNet's normalisation between integer convs).

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
        self.vals.insert(out, Val::PendingNorm { src, scale: scale.data, bias: bias.data, eps });
        Ok(true)
    }

    /// The instance normalisation of tensor `src`, quantised with (s, z).
    pub(super) fn quantized_instance_norm(&mut self, src: usize, scale: Vec<f32>, bias: Vec<f32>, eps: f32, s: f32, z: u8) -> usize {
        let dst = self.new_tensor(QTensor { scale: s, zp: z, ..self.tensors[src] }, self.shapes[src].clone());
        self.steps.push(Step::Int(Op::InstanceNorm(Box::new(InstanceNormOp { src, dst, scale, bias, eps }))));
        dst
    }
}
