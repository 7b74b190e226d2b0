//! edgemed's own INT8 engine: QDQ graphs compiled ([`compile`]) into fused integer
//! ops (u8 activations in NHWC, s8 weights, i32 accumulation, requantisation with
//! the activation folded in as a clamp or a lookup table) run by [`kernels`] (scalar
//! reference; AVX2 chosen at run time). The float tail a graph may end with (a
//! classifier head after the last quantised tensor) runs in tract.

pub mod compile;
pub mod kernels;

use crate::backend::{Backend, TractBackend};
use crate::error::{Error, Result};
use crate::model::OnnxModel;
use crate::ndarray::{ArrayD, IxDyn};
use compile::{ConvKind, Op, Plan};
use kernels::Isa;

/// A compiled plan with its buffers' sizes, ready to run one image at a time.
pub struct Engine {
    pub plan: Plan,
    pub isa: Isa,
    tail: Option<TractBackend>,
    /// Scratch sizes: the largest im2row buffer and accumulator.
    rows_len: usize,
    acc_len: usize,
}

impl Engine {
    pub fn new(model: &OnnxModel) -> Result<Self> {
        let plan = compile::compile(model)?;
        let tail = match &plan.tail {
            None => None,
            Some(proto) => {
                let b = plan.tensors[plan.boundary];
                use prost::Message;
                let tail_model = OnnxModel::from_bytes(model.path.join("float-tail"), &proto.encode_to_vec())?;
                Some(TractBackend::new(&tail_model, &[1, b.c, b.h, b.w])?)
            }
        };
        let (mut rows_len, mut acc_len) = (0, 0);
        for op in &plan.ops {
            if let Op::Conv(c) = op {
                let g = &c.geometry;
                let p = g.oh * g.ow;
                let cout = c.requant.mult.len();
                acc_len = acc_len.max(p * cout);
                if let ConvKind::Dense(_) = c.kind {
                    if !g.is_pointwise() {
                        rows_len = rows_len.max(p * g.kh * g.kw * g.cin);
                    }
                }
            }
        }
        Ok(Engine { plan, isa: Isa::detect(), tail, rows_len, acc_len })
    }

    /// Runs one [1, C, H, W] input; returns the model's outputs.
    pub fn run_one(&self, x: &[f32]) -> Result<Vec<ArrayD<f32>>> {
        let p = &self.plan;
        let mut bufs: Vec<Vec<u8>> = p.tensors.iter().map(|t| vec![0u8; t.len()]).collect();
        let mut rows = vec![0u8; self.rows_len];
        let mut acc = vec![0i32; self.acc_len];
        // NCHW float -> NHWC u8
        let t0 = p.input;
        let hw = t0.h * t0.w;
        if x.len() != t0.c * hw {
            return Err(Error::WrongShape { got: vec![x.len()], expected: vec![t0.c * hw] });
        }
        for c in 0..t0.c {
            for i in 0..hw {
                bufs[0][i * t0.c + c] = kernels::quantize_u8(x[c * hw + i], t0.scale, t0.zp);
            }
        }
        for op in &p.ops {
            match op {
                Op::Conv(c) => {
                    let g = &c.geometry;
                    let pixels = g.oh * g.ow;
                    let cout = c.requant.mult.len();
                    let (src, dst) = take_two(&mut bufs, c.src, c.dst);
                    match &c.kind {
                        ConvKind::Dense(w) => {
                            let input: &[u8] = if g.is_pointwise() {
                                src
                            } else {
                                kernels::im2row(src, g, p.tensors[c.src].zp, &mut rows);
                                &rows
                            };
                            kernels::gemm(self.isa, input, pixels, w, &mut acc);
                        }
                        ConvKind::Depthwise(w) => kernels::depthwise(self.isa, src, g, p.tensors[c.src].zp, w, &mut acc),
                    }
                    kernels::requantize(self.isa, &acc[..pixels * cout], cout, &c.requant, dst);
                }
                Op::Lut { src, dst, table } => {
                    let c = p.tensors[*src].c;
                    let (s, d) = take_two(&mut bufs, *src, *dst);
                    for (dp, sp) in d.chunks_exact_mut(c).zip(s.chunks_exact(c)) {
                        for (ch, (o, &v)) in dp.iter_mut().zip(sp).enumerate() {
                            *o = table[ch * 256 + v as usize];
                        }
                    }
                }
                Op::Add { a, b, dst } => {
                    let (ta, tb, to) = (p.tensors[*a], p.tensors[*b], p.tensors[*dst]);
                    let mut out = std::mem::take(&mut bufs[*dst]);
                    for ((o, &x), &y) in out.iter_mut().zip(&bufs[*a]).zip(&bufs[*b]) {
                        let v = (x as i32 - ta.zp as i32) as f32 * ta.scale + (y as i32 - tb.zp as i32) as f32 * tb.scale;
                        *o = kernels::quantize_u8(v, to.scale, to.zp);
                    }
                    bufs[*dst] = out;
                }
            }
        }
        let b = p.tensors[p.boundary];
        let hw = b.h * b.w;
        let src = &bufs[p.boundary];
        let mut f = vec![0f32; b.c * hw];
        for c in 0..b.c {
            for i in 0..hw {
                f[c * hw + i] = (src[i * b.c + c] as i32 - b.zp as i32) as f32 * b.scale;
            }
        }
        let f = ArrayD::from_shape_vec(IxDyn(&[1, b.c, b.h, b.w]), f).expect("sized");
        match &self.tail {
            None => Ok(vec![f]),
            Some(t) => t.run(f),
        }
    }
}

/// A shared borrow of `bufs[a]` and a mutable one of `bufs[b]` (a != b).
fn take_two(bufs: &mut [Vec<u8>], a: usize, b: usize) -> (&[u8], &mut Vec<u8>) {
    assert_ne!(a, b);
    if a < b {
        let (l, r) = bufs.split_at_mut(b);
        (&l[a], &mut r[0])
    } else {
        let (l, r) = bufs.split_at_mut(a);
        (&r[0], &mut l[b])
    }
}
