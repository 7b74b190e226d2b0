//! Rule: `Add(DQ(a), DQ(b)) -> [Relu | Clip | Min]* -> QuantizeLinear` of two u8
//! tensors of the same shape: an element-wise quantised add (a MobileNet's residual
//! connections; a ResNet's, with its ReLU after the add). The activations fold into
//! one clamp of the output bytes: each is x -> min(max(x, lo), hi), monotone, so
//! their chain is one such clamp, and QuantizeLinear (monotone too) commutes with
//! it: Q(clamp(v, lo, hi)) = clamp(Q(v), Q(lo), Q(hi)), bit for bit.

use edgemed_onnx::pb;

use super::activation::MapStep;
use super::{input, output, Compiler, Val};
use crate::error::Result;
use crate::kernels;
use crate::plan::{Op, QTensor, Step};

impl Compiler<'_> {
    pub(super) fn add(&mut self, n: &pb::NodeProto) -> Result<bool> {
        let (out, inp) = (output(n), |i: usize| input(n, i));
        let (Some(a), Some(b)) = (self.int_of(inp(0)), self.int_of(inp(1))) else { return Ok(false) };
        if self.shapes[a] != self.shapes[b] || !self.float_views.contains(inp(0)) || !self.float_views.contains(inp(1)) {
            return Ok(false);
        }
        self.vals.insert(out, Val::PendingAdd { a, b, steps: vec![] });
        Ok(true)
    }

    /// a + b, then `steps`, quantised with (s, z).
    pub(super) fn quantized_add(&mut self, a: usize, b: usize, steps: &[MapStep], s: f32, z: u8) -> usize {
        let ta = self.tensors[a];
        let (lo, hi) = steps.iter().fold((f32::NEG_INFINITY, f32::INFINITY), |(lo, hi), step| (step.apply(lo, 0), step.apply(hi, 0)));
        let bounds = [kernels::quantize_u8(lo, s, z), kernels::quantize_u8(hi, s, z)];
        let dst = self.new_tensor(QTensor { scale: s, zp: z, ..ta }, self.shapes[a].clone());
        self.steps.push(Step::Int(Op::Add { a, b, dst, bounds }));
        dst
    }
}
