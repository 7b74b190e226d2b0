//! Rule: `Constant` nodes (torch.onnx writes clip bounds and shapes as Constant
//! nodes: a `value` tensor, or opset 12's `value_int(s)` / `value_float(s)`) become
//! constants of the compiler, int64 ones remembered as integer; `Identity` passes its
//! input on, keeping whatever pattern was pending on it.

use edgemed_onnx::{pb, tensor};

use super::{input, output, Compiler, Const, Val};
use crate::error::Result;

impl Compiler<'_> {
    pub(super) fn constant(&mut self, n: &pb::NodeProto) -> Result<bool> {
        let out = output(n);
        // Opset 12's scalar and list forms (the dynamo exporter writes shapes as value_ints).
        let list = |data: Vec<f32>, scalar: bool, integer: bool| Const {
            shape: if scalar { vec![] } else { vec![data.len()] },
            data,
            int8: None,
            integer,
        };
        let Some(a) = n.attribute.first() else { return Ok(false) };
        let c = match a.name.as_str() {
            "value" => {
                let Some(Ok(d)) = a.t.as_ref().map(tensor::decode) else { return Ok(false) };
                let integer = matches!(d.values, tensor::Values::I64(_));
                Const { shape: d.shape, data: d.values.to_f32(), int8: None, integer }
            }
            "value_int" => list(vec![a.i as f32], true, true),
            "value_ints" => list(a.ints.iter().map(|&v| v as f32).collect(), false, true),
            "value_float" => list(vec![a.f], true, false),
            "value_floats" => list(a.floats.clone(), false, false),
            _ => return Ok(false),
        };
        self.vals.insert(out, Val::Const(c));
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
