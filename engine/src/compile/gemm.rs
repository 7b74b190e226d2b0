//! Rule: `Gemm(DQ(x), DQ(w int8), c)` or `MatMul(DQ(x), DQ(w int8))` on a [1, K] u8
//! tensor (a classifier head): a pending pointwise conv on one pixel, completed by
//! the conv rule's requantisation at the `QuantizeLinear` (or dequantised for a float
//! op). Covers transB 0 and 1 and per-channel scales on the output features.

use edgemed_onnx::{attr, pb};

use super::{input, output, Compiler, Val};
use crate::error::Result;
use crate::kernels::{ConvGeometry, PackedWeights};
use crate::plan::{channel_value, ConvKind, ConvLayout, FloatConv};

impl Compiler<'_> {
    /// `Gemm(DQ(x), DQ(w int8), c)` or `MatMul(DQ(x), DQ(w int8))` on a [1, K] tensor: a
    /// pending pointwise conv on one pixel. Ok(false): a float op.
    pub(super) fn gemm(&mut self, n: &pb::NodeProto) -> Result<bool> {
        let inp = |i: usize| input(n, i);
        let Some(src) = self.int_of(inp(0)) else { return Ok(false) };
        let Some(w) = self.konst(inp(1)) else { return Ok(false) };
        let Some((wq, wscale, waxis)) = w.int8.clone() else { return Ok(false) };
        let x = self.tensors[src];
        let is_gemm = n.op_type == "Gemm";
        let trans_b = is_gemm && attr::int_opt(n, "transB").unwrap_or(0) != 0;
        let plain = !is_gemm
            || attr::int_opt(n, "transA").unwrap_or(0) == 0
                && n.attribute.iter().find(|a| a.name == "alpha").is_none_or(|a| a.f == 1.0)
                && n.attribute.iter().find(|a| a.name == "beta").is_none_or(|a| a.f == 1.0);
        if !plain || self.shapes[src].len() != 2 || w.shape.len() != 2 {
            return Ok(false);
        }
        let k = x.c;
        let (cout, wk) = if trans_b { (w.shape[0], w.shape[1]) } else { (w.shape[1], w.shape[0]) };
        // Per-channel scales must run along the output features.
        if wk != k || (wscale.len() > 1 && waxis != if trans_b { 0 } else { 1 }) {
            return Ok(false);
        }
        let bias = match n.input.get(2).filter(|b| is_gemm && !b.is_empty()) {
            None => vec![0.0; cout],
            Some(b) => match self.konst(b) {
                Some(c) if c.data.len() == cout && c.shape.iter().rev().skip(1).all(|&d| d == 1) => c.data,
                Some(c) if c.data.len() == 1 => vec![c.data[0]; cout],
                _ => return Ok(false),
            },
        };
        let rows: Vec<i8> = (0..cout * k).map(|i| if trans_b { wq[i] } else { wq[(i % k) * cout + i / k] }).collect();
        let pw = PackedWeights::new(self.isa, rows, cout, 1, k);
        let zp = x.zp as i32;
        let offset = pw.sums().iter().map(|s| s * zp).collect();
        let sw = |c: usize| channel_value(&wscale, c);
        let conv = FloatConv {
            src,
            layout: ConvLayout::Direct(ConvGeometry::new(1, 1, k, 1, 1, [1, 1], [0; 4]).expect("1x1 fits")),
            kind: ConvKind::Dense(pw),
            offset,
            mult: (0..cout).map(|c| x.scale * sw(c)).collect(),
            bias,
            lo: vec![f32::NEG_INFINITY; cout],
            hi: vec![f32::INFINITY; cout],
            shape: vec![1, cout],
            name: n.name.clone(),
            macs: (k * cout) as u64,
        };
        self.vals.insert(output(n), Val::PendingConv { conv: Box::new(conv) });
        Ok(true)
    }
}
