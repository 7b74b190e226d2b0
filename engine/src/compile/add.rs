//! Rule: `Add(DQ(a), DQ(b)) -> QuantizeLinear` of two u8 tensors of the same shape:
//! an element-wise quantised add (a MobileNet's residual connections).

use edgemed_onnx::pb;

use super::{input, output, Compiler, Val};
use crate::error::Result;
use crate::plan::{Op, QTensor, Step};

impl Compiler<'_> {
    pub(super) fn add(&mut self, n: &pb::NodeProto) -> Result<bool> {
        let (out, inp) = (output(n), |i: usize| input(n, i));
        let (Some(a), Some(b)) = (self.int_of(inp(0)), self.int_of(inp(1))) else { return Ok(false) };
        if self.shapes[a] != self.shapes[b] || !self.float_views.contains(inp(0)) || !self.float_views.contains(inp(1)) {
            return Ok(false);
        }
        self.vals.insert(out, Val::PendingAdd { a, b });
        Ok(true)
    }

    /// a + b quantised with (s, z).
    pub(super) fn quantized_add(&mut self, a: usize, b: usize, s: f32, z: u8) -> usize {
        let ta = self.tensors[a];
        let dst = self.new_tensor(QTensor { scale: s, zp: z, ..ta }, self.shapes[a].clone());
        self.steps.push(Step::Int(Op::Add { a, b, dst }));
        dst
    }
}
