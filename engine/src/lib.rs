//! edgemed-engine: edgemed's own INT8 engine, on the base layer (edgemed-onnx) alone.
//!
//! A QDQ ONNX graph is compiled ([`compile`]: a driver and one file per fusion rule)
//! into a [`plan::Plan`] of fused integer ops (u8 activations channels last, s8
//! weights, i32 accumulation, requantisation with the activation folded in as a clamp
//! or a lookup table), with the float ops a QDQ graph leaves between them
//! (normalisations, a flow's coupling arithmetic, a classifier head) run by edgemed's
//! interpreter ([`float`]). [`kernels`] holds the scalar reference and one file per
//! ISA (AVX2 and AVX-512 VNNI on x86-64, NEON and `sdot` on aarch64, NEON on armv7),
//! each with the weight packing it reads; the ISA is chosen once per engine
//! ([`kernels::Isa::detect`]) and the weights are packed for it alone at compile time.
//! [`volume`] runs 3-D and transposed convs on the 2-D kernels. [`Engine`] (this
//! file) holds a plan with its memory plan and runs it one item at a time.
//!
//! Constructs the engine does not cover are [`Error::Unsupported`]; the runtime then
//! runs the whole model elsewhere.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod compile;
pub mod float;
pub mod kernels;
pub mod plan;
pub mod volume;

// The base layer's modules under the names the engine's files use.
use edgemed_onnx::{error, model};
pub use ndarray;

use crate::error::{Error, Result};
use crate::model::OnnxModel;
use crate::ndarray::{ArrayD, IxDyn};
use std::sync::Mutex;

use kernels::Isa;
use plan::{ConvKind, ConvLayout, Copies, Op, Plan, Step};

/// A compiled plan with its memory plan, ready to run one item at a time.
pub struct Engine {
    pub plan: Plan,
    /// The kernels that run the plan (its weights are packed for them).
    isa: Isa,
    memory: MemoryPlan,
    /// Float values each step reads for the last time (dropped after it).
    free_after: Vec<Vec<usize>>,
    /// Buffers kept between runs (a second concurrent caller allocates its own).
    scratch: Mutex<Option<Scratch>>,
}

/// Which buffer each tensor lives in: tensors whose lifetimes do not overlap share
/// one, so the working set of a MobileNet stays a few activations wide (and in cache).
#[derive(Debug, Clone)]
pub struct MemoryPlan {
    pub slot_of: Vec<usize>,
    pub slot_len: Vec<usize>,
    /// The largest kernel scratch (im2row rows or a padded input), gathered 3-D plane,
    /// accumulator and transposed-conv output accumulator.
    pub rows_len: usize,
    pub gather_len: usize,
    pub acc_len: usize,
    pub acc2_len: usize,
}

impl MemoryPlan {
    fn new(plan: &Plan) -> Self {
        let n = plan.tensors.len();
        // Index of the last step reading each tensor.
        let mut last_use = vec![0usize; n];
        for (i, step) in plan.steps.iter().enumerate() {
            for s in step.tensor_sources() {
                last_use[s] = i;
            }
        }
        let mut slot_of = vec![usize::MAX; n];
        let mut slot_len: Vec<usize> = Vec::new();
        let mut holder: Vec<Option<usize>> = Vec::new();
        for (i, step) in plan.steps.iter().enumerate() {
            let Some(t) = step.tensor_destination() else { continue };
            // A slot whose tensor was last read before step `i` is free.
            let free = (0..holder.len()).find(|&s| holder[s].is_none_or(|h| last_use[h] < i));
            let s = free.unwrap_or_else(|| {
                holder.push(None);
                slot_len.push(0);
                holder.len() - 1
            });
            holder[s] = Some(t);
            slot_len[s] = slot_len[s].max(plan.tensors[t].len());
            slot_of[t] = s;
        }
        let (mut rows_len, mut gather_len, mut acc_len, mut acc2_len) = (0, 0, 0, 0);
        let mut conv = |layout: &ConvLayout, kind: &ConvKind, cout: usize| match layout {
            ConvLayout::Direct(g) => {
                acc_len = acc_len.max(g.oh * g.ow * cout);
                rows_len = rows_len.max(kernels::conv_scratch_len(g, kind));
            }
            ConvLayout::Planes { plane, .. } => {
                acc_len = acc_len.max(layout.pixels() * cout);
                gather_len = gather_len.max(plane.w * plane.cin);
                rows_len = rows_len.max(kernels::conv_scratch_len(plane, kind));
            }
            ConvLayout::Transposed { g, cols, .. } => {
                acc_len = acc_len.max(cols.ow * g.taps() * cout);
                acc2_len = acc2_len.max(layout.pixels() * cout);
                rows_len = rows_len.max(kernels::conv_scratch_len(cols, kind));
            }
        };
        for step in &plan.steps {
            match step {
                Step::Int(Op::Conv(c)) => conv(&c.layout, &c.kind, c.requant.mult.len()),
                Step::ConvToFloat { conv: c, .. } => conv(&c.layout, &c.kind, c.mult.len()),
                _ => {}
            }
        }
        // A global average pool sums each channel in the accumulator.
        for step in &plan.steps {
            if let Step::Int(Op::MeanPool { src, .. }) = step {
                acc_len = acc_len.max(plan.tensors[*src].c);
            }
        }
        MemoryPlan { slot_of, slot_len, rows_len, gather_len, acc_len, acc2_len }
    }

    /// Bytes held between runs.
    pub fn bytes(&self) -> usize {
        self.slot_len.iter().sum::<usize>() + self.rows_len + self.gather_len + 4 * (self.acc_len + self.acc2_len)
    }
}

/// Bytes past each buffer's largest tensor that kernels may read (never use).
const SLACK: usize = 64;

struct Scratch {
    slots: Vec<Vec<u8>>,
    rows: Vec<u8>,
    gather: Vec<u8>,
    acc: Vec<i32>,
    acc2: Vec<i32>,
}

impl Scratch {
    fn new(m: &MemoryPlan) -> Self {
        Scratch {
            slots: m.slot_len.iter().map(|&n| vec![0u8; n + SLACK]).collect(),
            rows: vec![0u8; m.rows_len + SLACK],
            gather: vec![0u8; m.gather_len + SLACK],
            acc: vec![0i32; m.acc_len],
            acc2: vec![0i32; m.acc2_len],
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
    /// The engine for `model` with the best kernels this CPU has ([`Isa::detect`]).
    pub fn new(model: &OnnxModel) -> Result<Self> {
        Engine::with_isa(model, Isa::detect())
    }

    /// The engine for `model` with the kernels of `isa` (tests, benchmarks); Err if
    /// this CPU cannot run them.
    pub fn with_isa(model: &OnnxModel, isa: Isa) -> Result<Self> {
        if !isa.is_available() {
            return Err(Error::Unsupported(format!("the {} kernels need CPU features this CPU lacks", isa.name())));
        }
        let plan = compile::compile(model, isa)?;
        let memory = MemoryPlan::new(&plan);
        let mut last = vec![None; plan.float_shapes.len()];
        for (i, step) in plan.steps.iter().enumerate() {
            for v in step.float_sources() {
                last[v] = Some(i);
            }
        }
        let mut free_after = vec![Vec::new(); plan.steps.len()];
        for (v, l) in last.iter().enumerate() {
            if let (Some(i), false) = (l, plan.outputs.contains(&v)) {
                free_after[*i].push(v);
            }
        }
        Ok(Engine { plan, isa, memory, free_after, scratch: Mutex::new(None) })
    }

    /// The kernels this engine runs.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn memory(&self) -> &MemoryPlan {
        &self.memory
    }

    /// Runs one input (the model's input shape with batch 1, flattened); returns the model's outputs.
    pub fn run_one(&self, x: &[f32]) -> Result<Vec<ArrayD<f32>>> {
        self.with_scratch(|s| self.execute(s, x, &mut None))
    }

    /// Runs `x` `iterations` times and returns the total time of each step.
    pub fn profile(&self, x: &[f32], iterations: usize) -> Result<Vec<StepTime>> {
        let mut times: Option<Vec<f64>> = Some(Vec::new());
        self.with_scratch(|s| {
            for _ in 0..iterations.max(1) {
                self.execute(s, x, &mut times)?;
            }
            Ok(())
        })?;
        let times = times.expect("kept");
        let mut steps: Vec<StepTime> =
            self.plan.steps.iter().map(|st| StepTime { label: self.plan.label(st), macs: st.macs(), seconds: 0.0 }).collect();
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
        let n_in: usize = p.input_shape().iter().product();
        if x.len() != n_in {
            return Err(Error::WrongShape { got: vec![x.len()], expected: vec![n_in] });
        }
        // Value 0 (the model input) becomes an array only if a float op reads it: a QDQ
        // model's first step quantises it straight from `x`.
        let mut vals: Vec<Option<ArrayD<f32>>> = vec![None; p.float_shapes.len()];
        let input_array = || ArrayD::from_shape_vec(IxDyn(p.input_shape()), x.to_vec()).expect("sized");
        for (i, step) in p.steps.iter().enumerate() {
            match step {
                Step::Int(op) => self.int_op(s, op),
                Step::Quantize { src, dst } => {
                    let v = match *src {
                        0 => None,
                        v => Some(vals[v].as_ref().expect("computed before use").as_standard_layout()),
                    };
                    let data = v.as_ref().map_or(x, |v| v.as_slice().expect("standard layout"));
                    // Quantisation would silently map NaN to the zero point's neighbourhood.
                    if !float::all_finite(data) {
                        let what = if *src == 0 { "model input".to_string() } else { format!("value before {}", p.label(step)) };
                        return Err(Error::NonFinite { what });
                    }
                    let t = p.tensors[*dst];
                    kernels::quantize_nchw_to_nhwc(self.isa, data, &t, &mut s.slots[slot(*dst)][..t.len()]);
                }
                Step::Dequantize { src, dst } => {
                    let t = p.tensors[*src];
                    let q = &s.slots[slot(*src)][..t.len()];
                    let pixels = t.h * t.w;
                    let mut f = vec![0f32; t.len()];
                    // Blocks of 16 pixels: each channel's row of the block is one cache line.
                    for p0 in (0..pixels).step_by(16) {
                        let n = (pixels - p0).min(16);
                        let block = &q[p0 * t.c..(p0 + n) * t.c];
                        for c in 0..t.c {
                            let row = &mut f[c * pixels + p0..c * pixels + p0 + n];
                            for (d, &v) in row.iter_mut().zip(block[c..].iter().step_by(t.c)) {
                                *d = (v as i32 - t.zp as i32) as f32 * t.scale;
                            }
                        }
                    }
                    vals[*dst] = Some(ArrayD::from_shape_vec(IxDyn(&p.shapes[*src]), f).expect("sized"));
                }
                Step::ConvToFloat { conv: h, dst } => {
                    let (pixels, cout) = (h.layout.pixels(), h.mult.len());
                    let acc = self.conv_sums(s, h.src, &h.layout, &h.kind);
                    let mut f = vec![0f32; pixels * cout];
                    for (px, a) in acc[..pixels * cout].chunks_exact(cout).enumerate() {
                        for c in 0..cout {
                            let v = (a[c] - h.offset[c]) as f32 * h.mult[c] + h.bias[c];
                            f[c * pixels + px] = v.max(h.lo[c]).min(h.hi[c]);
                        }
                    }
                    vals[*dst] = Some(ArrayD::from_shape_vec(IxDyn(&h.shape), f).expect("sized"));
                }
                Step::Float { op, inputs, dst, name } => {
                    if vals[0].is_none() && inputs.iter().any(|i| matches!(i, float::Operand::Value(0))) {
                        vals[0] = Some(input_array());
                    }
                    let args: Vec<&ArrayD<f32>> = inputs
                        .iter()
                        .map(|i| match i {
                            float::Operand::Value(v) => vals[*v].as_ref().expect("computed before use"),
                            float::Operand::Const(c) => c,
                        })
                        .collect();
                    let y = float::eval(op, &args).map_err(|e| Error::Invalid(format!("{name}: {e}")))?;
                    vals[*dst] = Some(y);
                }
            }
            for &v in &self.free_after[i] {
                vals[v] = None;
            }
            lap(times);
        }
        let outputs: Vec<ArrayD<f32>> = p
            .outputs
            .iter()
            .map(|&o| vals[o].clone().unwrap_or_else(|| if o == 0 { input_array() } else { unreachable!("outputs are kept") }))
            .collect();
        // Integer ops give finite values; only float arithmetic (overflow, 0/0, exp)
        // could make a non-finite output.
        if !outputs.iter().all(|y| float::all_finite(y.iter())) {
            return Err(Error::NonFinite { what: "model output".into() });
        }
        Ok(outputs)
    }

    fn int_op(&self, s: &mut Scratch, op: &Op) {
        let p = &self.plan;
        let slot = |t: usize| self.memory.slot_of[t];
        let dst_t = p.tensors[op.destination()];
        // The destination slot is taken out so that sources can be borrowed beside it.
        let mut dst = std::mem::take(&mut s.slots[slot(op.destination())]);
        let out = &mut dst[..dst_t.len()];
        match op {
            Op::Conv(c) => {
                // Whole slots: the kernels may read up to 64 bytes past the tensor.
                let src = &s.slots[slot(c.src)];
                let zp = p.tensors[c.src].zp;
                let cout = c.requant.mult.len();
                match &c.layout {
                    ConvLayout::Direct(g) => kernels::conv(self.isa, src, g, zp, &c.kind, &c.requant, &mut s.rows, &mut s.acc, out),
                    ConvLayout::Planes { g, plane } => {
                        let per = plane.ow * cout;
                        for (oz, o) in out.chunks_exact_mut(per).enumerate() {
                            volume::gather_plane(src, g, zp, oz, &mut s.gather);
                            kernels::conv(self.isa, &s.gather, plane, zp, &c.kind, &c.requant, &mut s.rows, &mut s.acc, o);
                        }
                    }
                    ConvLayout::Transposed { g, cols, col_offset } => {
                        kernels::accumulate(self.isa, src, cols, zp, &c.kind, &mut s.rows, &mut s.acc);
                        volume::scatter_columns(&s.acc, g, cout, col_offset, &mut s.acc2);
                        kernels::requantize(self.isa, &s.acc2[..out.len()], cout, &c.requant, out);
                    }
                }
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
            Op::Gather(g) => match &g.copies {
                Copies::Runs(runs) => {
                    let mut o = 0;
                    for r in runs {
                        let (k, from, len) = (r.src as usize, r.from as usize, r.len as usize);
                        let src = &s.slots[slot(g.srcs[k])][from..from + len];
                        let d = &mut out[o..o + len];
                        match &g.tables[k] {
                            None => d.copy_from_slice(src),
                            Some(table) => d.iter_mut().zip(src).for_each(|(d, &v)| *d = table[v as usize]),
                        }
                        o += len;
                    }
                }
                Copies::Bytes(per_source) => {
                    for (k, pairs) in per_source.iter().enumerate() {
                        let src = &s.slots[slot(g.srcs[k])][..p.tensors[g.srcs[k]].len()];
                        match &g.tables[k] {
                            None => pairs.iter().for_each(|&(o, f)| out[o as usize] = src[f as usize]),
                            Some(table) => pairs.iter().for_each(|&(o, f)| out[o as usize] = table[src[f as usize] as usize]),
                        }
                    }
                }
            },
            Op::GatherMax { src, group, index, table, .. } => {
                let x = &s.slots[slot(*src)][..p.tensors[*src].len()];
                for (o, g) in out.iter_mut().zip(index.chunks_exact(*group)) {
                    let m = g.iter().fold(0u8, |m, &i| m.max(x[i as usize]));
                    *o = table.as_ref().map_or(m, |t| t[m as usize]);
                }
            }
            Op::Multiply { src, tables, select, .. } => {
                let x = &s.slots[slot(*src)][..p.tensors[*src].len()];
                for ((o, &v), &k) in out.iter_mut().zip(x).zip(select) {
                    *o = tables[k as usize * 256 + v as usize];
                }
            }
            Op::MeanPool { src, .. } => {
                let t = p.tensors[*src];
                let x = &s.slots[slot(*src)][..t.len()];
                let sums = &mut s.acc[..t.c];
                sums.fill(0);
                for px in x.chunks_exact(t.c) {
                    sums.iter_mut().zip(px).for_each(|(a, &v)| *a += v as i32);
                }
                // The exact integer sum, rounded once by the scale and once by the mean.
                let pixels = t.h * t.w;
                let zp_sum = pixels as i32 * t.zp as i32;
                for (o, &a) in out.iter_mut().zip(sums.iter()) {
                    *o = kernels::quantize_u8((a - zp_sum) as f32 * t.scale / pixels as f32, dst_t.scale, dst_t.zp);
                }
            }
        }
        s.slots[slot(op.destination())] = dst;
    }

    /// The int32 sums [pixels][cout] of a conv (dense sums still carry zp * Σw).
    fn conv_sums<'s>(&self, s: &'s mut Scratch, src: usize, layout: &ConvLayout, kind: &ConvKind) -> &'s [i32] {
        let x = &s.slots[self.memory.slot_of[src]];
        let zp = self.plan.tensors[src].zp;
        match layout {
            ConvLayout::Direct(g) => {
                kernels::accumulate(self.isa, x, g, zp, kind, &mut s.rows, &mut s.acc);
                &s.acc
            }
            ConvLayout::Planes { g, plane } => {
                let per = plane.ow * plane_cout(kind);
                for oz in 0..g.output[0] {
                    volume::gather_plane(x, g, zp, oz, &mut s.gather);
                    kernels::accumulate(self.isa, &s.gather, plane, zp, kind, &mut s.rows, &mut s.acc[oz * per..]);
                }
                &s.acc
            }
            ConvLayout::Transposed { g, cols, col_offset } => {
                kernels::accumulate(self.isa, x, cols, zp, kind, &mut s.rows, &mut s.acc);
                let cout = plane_cout(kind) / g.taps();
                volume::scatter_columns(&s.acc, g, cout, col_offset, &mut s.acc2);
                &s.acc2
            }
        }
    }
}

/// Output channels of a dense product (a transposed conv's: taps x cout).
fn plane_cout(kind: &ConvKind) -> usize {
    match kind {
        ConvKind::Dense(w) => w.cout,
        ConvKind::Depthwise(w) => w.c,
        ConvKind::Grouped(w) => w.cout,
    }
}
