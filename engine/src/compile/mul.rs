//! Rule: `Mul` of a u8 tensor's view by a constant that broadcasts to its shape (a
//! circular mask): one 256-entry table per distinct factor, each computed with the
//! float ops' dequantise, multiply, quantise (so exact); more than 256 distinct
//! factors stay a float op.

use std::collections::HashMap;

use edgemed_onnx::pb;

use super::{input, output, Compiler, Val};
use crate::error::Result;
use crate::kernels;
use crate::ndarray::{ArrayD, IxDyn};
use crate::plan::{ByteMap, Factors, Op, QTensor, Step};

impl Compiler<'_> {
    pub(super) fn mul(&mut self, n: &pb::NodeProto) -> Result<bool> {
        let (out, inp) = (output(n), |i: usize| input(n, i));
        let mut view = |i: usize| self.int_of(inp(i)).filter(|_| self.float_views.contains(inp(i)));
        let (src, factor) = match (view(0), view(1)) {
            (Some(t), None) => (t, self.konst(inp(1))),
            (None, Some(t)) => (t, self.konst(inp(0))),
            _ => return Ok(false),
        };
        let Some(factor) = factor else { return Ok(false) };
        let Ok(factor) = ArrayD::from_shape_vec(IxDyn(&factor.shape), factor.data) else { return Ok(false) };
        // Only a factor that broadcasts to the tensor's own shape keeps it a tensor.
        if factor.ndim() > self.shapes[src].len() || factor.broadcast(IxDyn(&self.shapes[src])).is_none() {
            return Ok(false);
        }
        self.vals.insert(out, Val::PendingMul { src, factor });
        Ok(true)
    }

    /// `src` times `factor` quantised with (s, z): one table per distinct factor, or None
    /// where there are more than 256 of them.
    pub(super) fn multiply(&mut self, src: usize, factor: &ArrayD<f32>, s: f32, z: u8) -> Result<Option<usize>> {
        let st = self.tensors[src];
        let shape = self.shapes[src].clone();
        let Some(f) = factor.broadcast(IxDyn(&shape)) else { return Ok(None) };
        let f = f.as_standard_layout();
        let f = f.as_slice().expect("standard layout");
        let (c, pixels) = (st.c, st.h * st.w);
        let mut ids: HashMap<u32, u8> = HashMap::new();
        let mut tables = Vec::new();
        let mut select = Vec::with_capacity(st.len());
        for p in 0..pixels {
            for ch in 0..c {
                let v = f[ch * pixels + p];
                let id = match ids.get(&v.to_bits()) {
                    Some(&id) => id,
                    None if ids.len() < 256 => {
                        let id = ids.len() as u8;
                        ids.insert(v.to_bits(), id);
                        tables.extend((0..=255u8).map(|q| kernels::quantize_u8(st.deq(q) * v, s, z)));
                        id
                    }
                    None => return Ok(None),
                };
                select.push(id);
            }
        }
        // A factor the same across each pixel's channels (a spatial mask): one table
        // per pixel, so that its bytes are copied or filled where the table allows.
        let per_pixel = c > 0 && select.chunks_exact(c).all(|p| p.iter().all(|&k| k == p[0]));
        if per_pixel {
            select = select.chunks_exact(c).map(|p| p[0]).collect();
        }
        let maps = tables.chunks_exact(256).map(ByteMap::of).collect();
        let dst = self.new_tensor(QTensor { scale: s, zp: z, ..st }, shape);
        self.steps.push(Step::Int(Op::Multiply { src, dst, tables, factors: Factors { select, per_pixel, maps } }));
        Ok(Some(dst))
    }
}
