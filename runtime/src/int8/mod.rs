//! edgemed's own INT8 engine: QDQ graphs compiled ([`compile`]) into fused integer
//! ops (u8 activations in NHWC, s8 weights, i32 accumulation, requantisation with
//! the activation folded in as a clamp or a lookup table) run by [`kernels`] (a scalar
//! reference; AVX2 and AVX-512 VNNI on x86-64, NEON and `sdot` on aarch64, chosen at
//! run time). The float tail a graph may end with (a classifier head after the last
//! quantised tensor) runs in edgemed's interpreter ([`tail`]), or in tract for ops it
//! does not know.

#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod compile;
pub mod kernels;
#[cfg(target_arch = "aarch64")]
mod neon;
pub mod tail;

use crate::backend::{Backend, TractBackend};
use crate::error::{Error, Result};
use crate::model::OnnxModel;
use crate::ndarray::{ArrayD, IxDyn};
use std::sync::Mutex;

use compile::{Op, Plan};
use kernels::Isa;

/// A compiled plan with its memory plan, ready to run one image at a time.
pub struct Engine {
    pub plan: Plan,
    pub isa: Isa,
    tail: Option<Tail>,
    memory: MemoryPlan,
    /// Buffers kept between runs (a second concurrent caller allocates its own).
    scratch: Mutex<Option<Scratch>>,
}

/// Who runs the float tail: edgemed's interpreter, or tract for ops it does not know.
enum Tail {
    Interpreter(tail::FloatTail),
    Tract(TractBackend),
}

impl Tail {
    fn run(&self, x: ArrayD<f32>) -> Result<Vec<ArrayD<f32>>> {
        match self {
            Tail::Interpreter(t) => t.run(x),
            Tail::Tract(t) => t.run(x),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Tail::Interpreter(_) => "float tail (edgemed)",
            Tail::Tract(_) => "float tail (tract)",
        }
    }
}

/// Which buffer each tensor lives in: tensors whose lifetimes do not overlap share
/// one, so the working set of a MobileNet stays a few activations wide (and in cache).
#[derive(Debug, Clone)]
pub struct MemoryPlan {
    pub slot_of: Vec<usize>,
    pub slot_len: Vec<usize>,
    /// The largest im2row buffer and accumulator.
    pub rows_len: usize,
    pub acc_len: usize,
}

impl MemoryPlan {
    fn new(plan: &Plan) -> Self {
        let n = plan.tensors.len();
        // Index of the last op reading each tensor; the boundary lives to the end.
        let mut last_use = vec![0usize; n];
        for (i, op) in plan.ops.iter().enumerate() {
            for s in op.sources() {
                last_use[s] = i;
            }
        }
        last_use[plan.boundary] = usize::MAX;
        let mut slot_of = vec![usize::MAX; n];
        let mut slot_len: Vec<usize> = Vec::new();
        let mut holder: Vec<Option<usize>> = Vec::new();
        let mut assign = |t: usize, at: usize, slot_of: &mut Vec<usize>| {
            // A slot whose tensor was last read before op `at` is free.
            let free = (0..holder.len()).find(|&s| holder[s].is_none_or(|h| last_use[h] < at));
            let s = free.unwrap_or_else(|| {
                holder.push(None);
                slot_len.push(0);
                holder.len() - 1
            });
            holder[s] = Some(t);
            slot_len[s] = slot_len[s].max(plan.tensors[t].len());
            slot_of[t] = s;
        };
        assign(0, 0, &mut slot_of);
        for (i, op) in plan.ops.iter().enumerate() {
            assign(op.destination(), i, &mut slot_of);
        }
        let (mut rows_len, mut acc_len) = (0, 0);
        for op in &plan.ops {
            if let Op::Conv(c) = op {
                let g = &c.geometry;
                acc_len = acc_len.max(g.oh * g.ow * c.requant.mult.len());
                rows_len = rows_len.max(kernels::conv_scratch_len(g, &c.kind));
            }
        }
        if let Some(h) = &plan.head {
            let g = &h.geometry;
            acc_len = acc_len.max(g.oh * g.ow * h.mult.len());
            rows_len = rows_len.max(kernels::conv_scratch_len(g, &h.kind));
        }
        MemoryPlan { slot_of, slot_len, rows_len, acc_len }
    }

    /// Bytes held between runs.
    pub fn bytes(&self) -> usize {
        self.slot_len.iter().sum::<usize>() + self.rows_len + 4 * self.acc_len
    }
}

/// Bytes past each buffer's largest tensor that kernels may read (never use).
const SLACK: usize = 64;

struct Scratch {
    slots: Vec<Vec<u8>>,
    rows: Vec<u8>,
    acc: Vec<i32>,
}

impl Scratch {
    fn new(m: &MemoryPlan) -> Self {
        Scratch {
            slots: m.slot_len.iter().map(|&n| vec![0u8; n + SLACK]).collect(),
            rows: vec![0u8; m.rows_len + SLACK],
            acc: vec![0i32; m.acc_len],
        }
    }
}

/// Time spent in one step of the plan, from [`Engine::profile`].
#[derive(Debug, Clone)]
pub struct StepTime {
    pub label: String,
    pub macs: u64,
    pub seconds: f64,
}

impl Engine {
    pub fn new(model: &OnnxModel) -> Result<Self> {
        Self::with_tail(model, false)
    }

    /// `tract_tail`: run the float tail with tract even when edgemed's interpreter
    /// knows its ops (for comparing the two).
    pub fn with_tail(model: &OnnxModel, tract_tail: bool) -> Result<Self> {
        let plan = compile::compile(model)?;
        let tail = match &plan.tail {
            None => None,
            Some(proto) => {
                let graph = proto.graph.as_ref().expect("the compiler sets the graph");
                match tail::FloatTail::new(graph, model.opset()) {
                    Ok(t) if !tract_tail => Some(Tail::Interpreter(t)),
                    other => {
                        if let Err(e) = other {
                            log::info!("{}: float tail in tract ({e})", model.path.display());
                        }
                        use prost::Message;
                        let tail_model = OnnxModel::from_bytes(model.path.join("float-tail"), &proto.encode_to_vec())?;
                        Some(Tail::Tract(TractBackend::new(&tail_model, &plan.handover_shape())?))
                    }
                }
            }
        };
        let memory = MemoryPlan::new(&plan);
        Ok(Engine { plan, isa: Isa::detect(), tail, memory, scratch: Mutex::new(None) })
    }

    pub fn memory(&self) -> &MemoryPlan {
        &self.memory
    }

    /// Runs one [1, C, H, W] input; returns the model's outputs.
    pub fn run_one(&self, x: &[f32]) -> Result<Vec<ArrayD<f32>>> {
        self.with_scratch(|s| self.execute(s, x, &mut None))
    }

    /// Runs `x` `iterations` times and returns the total time of each step: input
    /// quantisation, every integer op, the hand-over to the float tail, the tail.
    pub fn profile(&self, x: &[f32], iterations: usize) -> Result<Vec<StepTime>> {
        let mut times: Option<Vec<f64>> = Some(Vec::new());
        self.with_scratch(|s| {
            for _ in 0..iterations.max(1) {
                self.execute(s, x, &mut times)?;
            }
            Ok(())
        })?;
        let times = times.expect("kept");
        let mut steps = vec![StepTime { label: format!("quantize input {}", shape_label(&self.plan.input)), macs: 0, seconds: 0.0 }];
        steps.extend(self.plan.ops.iter().map(|op| StepTime { label: self.plan.label(op), macs: op.macs(), seconds: 0.0 }));
        steps.push(match &self.plan.head {
            None => StepTime { label: "dequantize boundary to NCHW".into(), macs: 0, seconds: 0.0 },
            Some(h) => {
                StepTime { label: format!("head conv {} -> {} to float (NCHW)", h.geometry.cin, h.mult.len()), macs: h.macs, seconds: 0.0 }
            }
        });
        if let Some(t) = &self.tail {
            steps.push(StepTime { label: t.name().into(), macs: 0, seconds: 0.0 });
        }
        let n = steps.len();
        for (i, t) in times.iter().enumerate() {
            steps[i % n].seconds += t;
        }
        Ok(steps)
    }

    fn with_scratch<T>(&self, f: impl FnOnce(&mut Scratch) -> Result<T>) -> Result<T> {
        match self.scratch.try_lock() {
            Ok(mut guard) => {
                let s = guard.get_or_insert_with(|| Scratch::new(&self.memory));
                f(s)
            }
            // Busy (another thread runs this engine) or poisoned: buffers of our own.
            Err(_) => f(&mut Scratch::new(&self.memory)),
        }
    }

    fn execute(&self, s: &mut Scratch, x: &[f32], times: &mut Option<Vec<f64>>) -> Result<Vec<ArrayD<f32>>> {
        let p = &self.plan;
        let slot = |t: usize| self.memory.slot_of[t];
        let mut clock = std::time::Instant::now();
        let mut lap = |times: &mut Option<Vec<f64>>| {
            if let Some(v) = times {
                let now = std::time::Instant::now();
                v.push((now - clock).as_secs_f64());
                clock = now;
            }
        };
        let t0 = p.input;
        if x.len() != t0.len() {
            return Err(Error::WrongShape { got: vec![x.len()], expected: vec![t0.len()] });
        }
        // Quantisation would silently map NaN to the zero point's neighbourhood.
        if !tail::all_finite(x) {
            return Err(Error::NonFinite { what: "model input".into() });
        }
        kernels::quantize_nchw_to_nhwc(self.isa, x, &t0, &mut s.slots[slot(0)][..t0.len()]);
        lap(times);
        for op in &p.ops {
            let dst_t = p.tensors[op.destination()];
            // The destination slot is taken out so that sources can be borrowed beside it.
            let mut dst = std::mem::take(&mut s.slots[slot(op.destination())]);
            let out = &mut dst[..dst_t.len()];
            match op {
                Op::Conv(c) => {
                    // The whole slot: the kernels may read up to 64 bytes past the tensor.
                    let src = &s.slots[slot(c.src)];
                    kernels::conv(self.isa, src, &c.geometry, p.tensors[c.src].zp, &c.kind, &c.requant, &mut s.rows, &mut s.acc, out);
                }
                Op::Lut { src, table, .. } => {
                    let c = p.tensors[*src].c;
                    let src = &s.slots[slot(*src)][..p.tensors[*src].len()];
                    for (dp, sp) in out.chunks_exact_mut(c).zip(src.chunks_exact(c)) {
                        for (ch, (o, &v)) in dp.iter_mut().zip(sp).enumerate() {
                            *o = table[ch * 256 + v as usize];
                        }
                    }
                }
                Op::Add { a, b, .. } => {
                    let (ta, tb) = (p.tensors[*a], p.tensors[*b]);
                    let (xa, xb) = (&s.slots[slot(*a)][..ta.len()], &s.slots[slot(*b)][..tb.len()]);
                    kernels::add_quantized(self.isa, xa, &ta, xb, &tb, &dst_t, out);
                }
            }
            s.slots[slot(op.destination())] = dst;
            lap(times);
        }
        let f = match &p.head {
            None => {
                let b = p.tensors[p.boundary];
                let hw = b.h * b.w;
                let src = &s.slots[slot(p.boundary)][..b.len()];
                let mut f = vec![0f32; b.len()];
                for c in 0..b.c {
                    for i in 0..hw {
                        f[c * hw + i] = (src[i * b.c + c] as i32 - b.zp as i32) as f32 * b.scale;
                    }
                }
                f
            }
            Some(h) => {
                let g = &h.geometry;
                let (pixels, cout) = (g.oh * g.ow, h.mult.len());
                let zp = p.tensors[h.src].zp;
                kernels::accumulate(self.isa, &s.slots[slot(h.src)], g, zp, &h.kind, &mut s.rows, &mut s.acc);
                let mut f = vec![0f32; pixels * cout];
                for (px, a) in s.acc[..pixels * cout].chunks_exact(cout).enumerate() {
                    for c in 0..cout {
                        let v = (a[c] - h.offset[c]) as f32 * h.mult[c] + h.bias[c];
                        f[c * pixels + px] = v.max(h.lo[c]).min(h.hi[c]);
                    }
                }
                f
            }
        };
        let f = ArrayD::from_shape_vec(IxDyn(&p.handover_shape()), f).expect("sized");
        lap(times);
        let out = match &self.tail {
            None => vec![f],
            Some(t) => t.run(f)?,
        };
        if self.tail.is_some() {
            lap(times);
        }
        Ok(out)
    }
}

fn shape_label(t: &compile::QTensor) -> String {
    format!("{}x{}x{}", t.h, t.w, t.c)
}
