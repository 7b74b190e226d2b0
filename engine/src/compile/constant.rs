//! Rule: `Constant` nodes (torch.onnx writes clip bounds and shapes as Constant
//! nodes) become constants of the compiler; `Identity` passes its input on, keeping
//! whatever pattern was pending on it.

use edgemed_onnx::{pb, tensor};

use super::{input, output, Compiler, Const, Val};
use crate::error::Result;

impl Compiler<'_> {
    pub(super) fn constant(&mut self, n: &pb::NodeProto) -> Result<bool> {
        let out = output(n);
        let Some(t) = n.attribute.iter().find(|a| a.name == "value").and_then(|a| a.t.as_ref()) else { return Ok(false) };
        let Ok(d) = tensor::decode(t) else { return Ok(false) };
        self.vals.insert(out, Val::Const(Const { shape: d.shape, data: d.values.to_f32(), int8: None }));
        Ok(true)
    }

    pub(super) fn identity(&mut self, n: &pb::NodeProto) -> Result<bool> {
        let (out, inp) = (output(n), |i: usize| input(n, i));
        match self.vals.get(inp(0)).cloned() {
            Some(v) => {
                if self.float_views.contains(inp(0)) {
                    self.float_views.insert(out.clone());
                }
                self.vals.insert(out, v);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}
