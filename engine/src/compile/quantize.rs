//! Rule: the edges of every integer pattern. `DequantizeLinear` of an initializer is
//! folded into a constant (int8 weights keep their integers and scales); of a u8
//! tensor with its own parameters it is a float view of it, free while only integer
//! ops read it. `QuantizeLinear` completes the pattern pending on its input (each
//! rule's own action: a conv's requantisation, an activation table, an add, a gather,
//! a pooling, a product) or quantises a float value into a new u8 tensor.

use edgemed_onnx::{attr, pb, tensor};

use super::{input, invalid, output, unsupported, Compiler, Const, Val};
use crate::error::Result;
use crate::plan::{InstanceNormOp, QTensor, Step};

impl Compiler<'_> {
    pub(super) fn dequantize_linear(&mut self, n: &pb::NodeProto) -> Result<bool> {
        let (out, inp) = (output(n), |i: usize| input(n, i));
        if let Some(t) = self.inits.get(inp(0)) {
            // A constant: fold (int8 weights keep their integers and scales).
            let tensor::Tensor { shape, values: d, .. } = tensor::decode(t)?;
            let s = self.konst(inp(1)).ok_or_else(|| unsupported(format!("{}: scale is not a constant", n.name)))?;
            let zp = match n.input.get(2).filter(|z| !z.is_empty()) {
                Some(z) => self.konst(z).map(|c| c.data).unwrap_or_default(),
                None => vec![],
            };
            let axis = attr::int_opt(n, "axis").unwrap_or(1);
            let vals = d.to_f32();
            let per = s.data.len();
            let ax = if axis < 0 { axis + shape.len() as i64 } else { axis }.max(0) as usize;
            let inner = if per == 1 || shape.is_empty() { vals.len() } else { shape[ax.min(shape.len() - 1) + 1..].iter().product() };
            if per > 1 && (ax >= shape.len() || shape[ax] != per) {
                return Err(invalid(format!("{}: {per} scales for axis {axis} of {shape:?}", n.name)));
            }
            let data: Vec<f32> = vals
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let c = if per == 1 { 0 } else { (i / inner) % per };
                    (v - zp.get(c).copied().unwrap_or(0.0)) * s.data[c]
                })
                .collect();
            let int8 = if t.data_type == pb::tensor_proto::DataType::Int8 as i32 && zp.iter().all(|&z| z == 0.0) {
                Some((vals.iter().map(|&v| v as i8).collect(), s.data.clone(), if per == 1 { 0 } else { ax }))
            } else {
                None
            };
            self.vals.insert(out, Val::Const(Const { shape, data, int8, integer: false }));
            return Ok(true);
        }
        if let Some(Val::QuantizedMove(m)) = self.vals.get(inp(0)) {
            if self.qparams(n).is_some() && self.qparams(n) == self.move_params(m) {
                self.vals.insert(out, Val::PendingMove(m.clone()));
                return Ok(true);
            }
        }
        let Some(t) = self.int_of(inp(0)) else { return Ok(false) };
        if self.qparams(n) != Some((self.tensors[t].scale, self.tensors[t].zp)) {
            return Ok(false);
        }
        self.float_views.insert(out.clone());
        self.vals.insert(out, Val::Int(t));
        Ok(true)
    }

    pub(super) fn quantize_linear(&mut self, n: &pb::NodeProto) -> Result<bool> {
        let Some((s, z)) = self.qparams(n) else { return Ok(false) };
        let (src, out) = (input(n, 0), output(n));
        let done = match self.vals.get(src).cloned() {
            Some(Val::PendingConv { conv }) => Some(self.quantized_conv(*conv, s, z)),
            Some(Val::PendingMap { src, steps, alone }) => Some(self.lookup_table(src, &steps, s, z, alone)),
            Some(Val::PendingAdd { a, b, steps }) => Some(self.quantized_add(a, b, &steps, s, z)),
            Some(Val::PendingMove(m)) if self.move_params(&m) == Some((s, z)) => {
                // The same bytes: kept pending, so a chain of moves is one gather.
                self.vals.insert(out, Val::QuantizedMove(m));
                return Ok(true);
            }
            Some(Val::PendingMove(m)) => self.gather(&m, s, z)?,
            Some(Val::PendingMax { m, op }) => self.gather_max(&m, &op, s, z)?,
            Some(Val::PendingMul { src, factor }) => self.multiply(src, &factor, s, z)?,
            Some(Val::PendingMeanPool { src }) => Some(self.mean_pool(src, s, z)),
            Some(Val::PendingNorm { src, scale, bias, eps, steps }) => {
                Some(self.quantized_instance_norm(InstanceNormOp { src, dst: 0, scale, bias, eps, steps }, s, z))
            }
            Some(Val::PendingConvNorm { conv, scale, bias, eps, steps }) => self.quantized_conv_norm(*conv, scale, bias, eps, &steps, s, z),
            Some(Val::Int(t)) if self.tensors[t].scale == s && self.tensors[t].zp == z => Some(t),
            _ => None,
        };
        let dst = match done {
            Some(dst) => dst,
            // A float value (the model input, a float op's output, a tensor dequantised
            // with other parameters, a pattern that did not complete): quantised into a
            // new tensor.
            None => {
                let Ok(f) = self.float_of(src) else { return Ok(false) };
                let shape = self.float_shapes[f].clone();
                let Some(t) = QTensor::of_shape(&shape, s, z) else { return Ok(false) };
                let dst = self.new_tensor(t, shape);
                self.steps.push(Step::Quantize { src: f, dst });
                dst
            }
        };
        self.vals.insert(out, Val::Int(dst));
        Ok(true)
    }
}
