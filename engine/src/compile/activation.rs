//! Rule: `Relu`, `Min` (a bound, per channel or not), `Clip` after a pending conv
//! narrow its output bounds (fused as a clamp); after a u8 tensor's view they build a
//! per-channel lookup table of 256 entries at the `QuantizeLinear`, computed with the
//! same float operations, so it is exact.

use edgemed_onnx::pb;

use super::{input, output, Compiler, Val};
use crate::error::Result;
use crate::float::{self, FloatOp, Operand};
use crate::kernels;
use crate::ndarray::{ArrayD, IxDyn};
use crate::plan::{Op, QTensor, Step};

/// One element-wise step of a pending table.
#[derive(Debug, Clone)]
pub(super) enum MapStep {
    Relu,
    /// Per channel (or one value for all).
    Min(Vec<f32>),
    Clip(f32, f32),
}

impl Compiler<'_> {
    pub(super) fn activation(&mut self, n: &pb::NodeProto) -> Result<bool> {
        let (out, inp) = (output(n), |i: usize| input(n, i));
        let v = self.vals.get(inp(0)).cloned();
        let step = match n.op_type.as_str() {
            "Relu" => MapStep::Relu,
            "Min" => match (n.input.len(), self.konst(inp(1))) {
                (2, Some(b)) => MapStep::Min(b.data),
                _ => return Ok(false),
            },
            _ => {
                let bound = |i: usize, none: f32| {
                    if inp(i).is_empty() {
                        Some(none)
                    } else {
                        self.konst(inp(i)).and_then(|c| if c.data.len() == 1 { Some(c.data[0]) } else { None })
                    }
                };
                match (bound(1, f32::NEG_INFINITY), bound(2, f32::INFINITY)) {
                    (Some(lo), Some(hi)) if !lo.is_nan() && !hi.is_nan() => MapStep::Clip(lo, hi),
                    _ => return Ok(false),
                }
            }
        };
        let single_use = self.uses.get(inp(0)) == Some(&1);
        match v {
            Some(Val::PendingConv { mut conv }) if single_use => {
                let cout = conv.mult.len();
                match &step {
                    MapStep::Relu => conv.lo.iter_mut().for_each(|l| *l = l.max(0.0)),
                    MapStep::Min(b) if b.len() == 1 || b.len() == cout => {
                        conv.hi.iter_mut().enumerate().for_each(|(c, h)| *h = h.min(if b.len() == 1 { b[0] } else { b[c] }))
                    }
                    MapStep::Clip(lo, hi) => conv.lo.iter_mut().zip(conv.hi.iter_mut()).for_each(|(l, h)| {
                        *l = l.max(*lo);
                        *h = h.min(*hi);
                    }),
                    _ => return Ok(false),
                }
                self.vals.insert(out, Val::PendingConv { conv });
                Ok(true)
            }
            Some(Val::Int(t)) if self.float_views.contains(inp(0)) => {
                if let MapStep::Min(b) = &step {
                    if b.len() != 1 && b.len() != self.tensors[t].c {
                        return Ok(false);
                    }
                }
                self.vals.insert(out, Val::PendingMap { src: t, steps: vec![step] });
                Ok(true)
            }
            Some(Val::PendingMap { src, mut steps }) if single_use => {
                if let MapStep::Min(b) = &step {
                    if b.len() != 1 && b.len() != self.tensors[src].c {
                        return Ok(false);
                    }
                }
                steps.push(step);
                self.vals.insert(out, Val::PendingMap { src, steps });
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// `steps` on the view of tensor `src`, quantised with (s, z): a table per channel.
    pub(super) fn lookup_table(&mut self, src: usize, steps: &[MapStep], s: f32, z: u8) -> usize {
        let st = self.tensors[src];
        let dst = self.new_tensor(QTensor { scale: s, zp: z, ..st }, self.shapes[src].clone());
        let mut table = vec![0u8; st.c * 256];
        for c in 0..st.c {
            for qv in 0..256usize {
                let mut v = st.deq(qv as u8);
                for step in steps {
                    v = match step {
                        MapStep::Relu => v.max(0.0),
                        MapStep::Min(b) => v.min(if b.len() == 1 { b[0] } else { b[c] }),
                        MapStep::Clip(lo, hi) => v.clamp(*lo, *hi),
                    };
                }
                table[c * 256 + qv] = kernels::quantize_u8(v, s, z);
            }
        }
        self.steps.push(Step::Int(Op::Lut { src, dst, table }));
        dst
    }

    /// `steps` on the view of tensor `src` as float ops, for a float op that reads them.
    pub(super) fn map_to_float(&mut self, src: usize, steps: Vec<MapStep>, name: &str) -> Result<usize> {
        let mut f = self.dequantised(src);
        let rank = self.shapes[src].len();
        for s in steps {
            let scalar = |v: f32| Operand::Const(ArrayD::from_elem(IxDyn(&[]), v));
            let (op, extra) = match s {
                MapStep::Relu => (FloatOp::Relu, vec![]),
                MapStep::Clip(lo, hi) => (FloatOp::Clip, vec![scalar(lo), scalar(hi)]),
                MapStep::Min(b) if b.len() == 1 => (FloatOp::Binary(float::Binary::Min), vec![scalar(b[0])]),
                MapStep::Min(b) => {
                    let mut shape = vec![1; rank];
                    shape[1] = b.len();
                    (FloatOp::Binary(float::Binary::Min), vec![Operand::Const(ArrayD::from_shape_vec(IxDyn(&shape), b).expect("sized"))])
                }
            };
            let inputs = std::iter::once(Operand::Value(f)).chain(extra).collect();
            f = self.push_float(op, inputs, name)?;
        }
        Ok(f)
    }
}
