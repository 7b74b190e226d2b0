//! edgemed-engine: edgemed's own INT8 engine, on the base layer (edgemed-onnx) alone.
//!
//! A QDQ ONNX graph is compiled ([`compile`]: a driver and one file per fusion rule)
//! into a [`plan::Plan`] of fused integer ops (u8 activations channels last, s8
//! weights, i32 accumulation, requantisation with the activation folded in as a clamp
//! or a lookup table), with the float ops a QDQ graph leaves between them
//! (normalisations, a flow's coupling arithmetic, a classifier head) run by edgemed's
//! interpreter ([`float`]). [`kernels`] holds the scalar reference and one file per
//! ISA (AVX2, AVX-512 VNNI and AMX-INT8 tiles on x86-64, NEON and `sdot` on aarch64,
//! NEON on armv7),
//! each with the weight packing it reads; the ISA is chosen once per engine
//! ([`kernels::Isa::detect`]) and the weights are packed for it alone at compile time.
//! [`volume`] runs 3-D convs on the 2-D kernels (gathered rows) and [`subpixel`] a
//! transposed conv as a dense conv on its input and a shuffle. [`Engine`] (this
//! file) holds a plan with its memory plan and runs it one item at a time, each
//! integer op cut into parts ([`split`]) over a thread pool made once per engine
//! ([`pool`]; one thread unless [`Engine::with_threads`] asks for more). The parts
//! write disjoint output bytes with unchanged integer arithmetic, so the output is
//! the same bits at any thread count. Float ops run on the calling thread. Several
//! items ([`Engine::run_items`]; [`Engine::run_batch`] joins their outputs along the
//! batch axis) run whole side by side on the same threads instead. Buffers kept
//! between runs and the dense weights start a cache line (`lined.rs`).
//! [`norms`] streams a volume's instance-norm statistics over tiles
//! ([`Engine::run_pass`]).
//!
//! Constructs the engine does not cover are [`Error::Unsupported`]; the runtime then
//! runs the whole model elsewhere.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod compile;
pub mod float;
pub mod kernels;
mod lined;
pub mod norms;
pub mod plan;
pub mod pool;
pub mod split;
pub mod subpixel;
pub mod volume;

// The base layer's modules under the names the engine's files use.
use edgemed_onnx::{error, model};
pub use ndarray;

use crate::error::{Error, Result};
use crate::model::OnnxModel;
use crate::ndarray::{ArrayD, IxDyn};
use std::ops::Range;
use std::sync::Mutex;

use kernels::{ConvGeometry, Isa, QTensor, Requant, Rows2, ROWS2_PITCH};
use lined::Lined;
use norms::{NormPass, NormSite, NormSums, PassResult};
use plan::{ConvKind, ConvLayout, Copies, Op, Plan, Step};
use pool::Pool;
use split::{avx2_conv_parts, conv_parts, cut, ranges, small_conv_parts, PIXEL_ALIGN};

/// MACs below which a part of a conv is not worth a thread. Handing a part to a polling
/// worker and waiting for it costs well under a microsecond on a free core; 64 K MACs
/// are 0.6 us at the pointwise kernels' 100 GMAC/s, 1.6 us at the depthwise kernels' 40.
/// (Measured on MobileNetV2 x1.0 at 224 on two threads: 3% faster than with 256 K.)
const MIN_PART_MACS: u64 = 1 << 16;
/// Output voxels per part of a 3-D conv on padded planes below which it is not cut.
const MIN_PART_VOXELS: usize = 256;
/// Bytes (or floats) per part of an element-wise op below which it is not cut: 8 KiB
/// of quantised adds or (de)quantisation take a few microseconds, and a part of less
/// costs more in its hand-over and in cache lines moving between cores than it saves
/// (measured on two threads, against 1 KiB: the U-Net 32³ window 6-8% faster, its 4³
/// and 8³ levels' norms and adds no longer cut; MobileNetV2 x1.0 and x0.25 2% faster;
/// 16 KiB slower again for the U-Net).
const MIN_PART_BYTES: usize = 1 << 13;

/// A compiled plan with its memory plan, ready to run one item at a time.
pub struct Engine {
    pub plan: Plan,
    /// The kernels that run the plan (its weights are packed for them).
    isa: Isa,
    memory: MemoryPlan,
    /// Float values each step reads for the last time (dropped after it).
    free_after: Vec<Vec<usize>>,
    /// Buffers kept between runs, one set per caller running at once: a run takes a
    /// set (or makes one) and puts it back, so callers side by side (a volume's windows,
    /// a classifier's batches) each reuse their own instead of allocating ~1 MB a run.
    /// Each set is tagged with the pool lane that last ran on it ([`Engine::run_items`]
    /// takes back its lane's own), so that its buffers stay in that core's cache.
    scratch: Mutex<Vec<(usize, Scratch)>>,
    /// Threads for one run's ops (the caller is one of them).
    pool: Pool,
    /// Least work per part: MACs of a conv, bytes of an element-wise op, output voxels
    /// of a 3-D conv on padded planes.
    min_part: (u64, u64, usize),
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
    /// The zero-point padded planes of a narrow 3-D conv's input.
    pub planar_len: usize,
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
        let mut m = MemoryPlan { slot_of, slot_len, rows_len: 0, gather_len: 0, acc_len: 0, acc2_len: 0, planar_len: 0 };
        for step in &plan.steps {
            match step {
                Step::Int(Op::Conv(c)) => m.fit_conv(&c.layout, &c.kind, c.requant.mult.len()),
                Step::ConvToFloat { conv: c, .. } => m.fit_conv(&c.layout, &c.kind, c.mult.len()),
                Step::Int(Op::ConvNorm(n)) => m.fit_conv(&n.conv.layout, &n.conv.kind, n.conv.mult.len()),
                _ => {}
            }
        }
        // A global average pool sums each channel in the accumulator.
        for step in &plan.steps {
            if let Step::Int(Op::MeanPool { src, .. }) = step {
                m.acc_len = m.acc_len.max(plan.tensors[*src].c);
            }
        }
        m
    }

    /// Grows the scratch lengths to what a conv of `cout` channels needs.
    fn fit_conv(&mut self, layout: &ConvLayout, kind: &ConvKind, cout: usize) {
        match layout {
            ConvLayout::Direct(g) => {
                self.acc_len = self.acc_len.max(g.oh * g.ow * cout);
                self.rows_len = self.rows_len.max(kernels::conv_scratch_len(g, kind));
            }
            ConvLayout::Planes { plane, .. } => {
                self.acc_len = self.acc_len.max(layout.pixels() * cout);
                self.gather_len = self.gather_len.max(plane.w * plane.cin);
                self.rows_len = self.rows_len.max(kernels::conv_scratch_len(plane, kind));
            }
            ConvLayout::Transposed { g, cols, .. } => {
                self.acc_len = self.acc_len.max(cols.ow * g.taps() * cout);
                self.acc2_len = self.acc2_len.max(layout.pixels() * cout);
                self.rows_len = self.rows_len.max(kernels::conv_scratch_len(cols, kind));
            }
            ConvLayout::Narrow(n) => {
                self.acc_len = self.acc_len.max(layout.pixels() * cout);
                self.planar_len = self.planar_len.max(n.planar_len());
            }
            ConvLayout::Padded(p) => {
                self.acc_len = self.acc_len.max(layout.pixels() * cout);
                self.planar_len = self.planar_len.max(p.planar_len());
            }
            ConvLayout::Rows(r) => {
                let n = Rows2::CHUNK.min(layout.pixels());
                self.acc_len = self.acc_len.max(layout.pixels() * cout);
                self.gather_len = self.gather_len.max(n * ROWS2_PITCH);
                self.rows_len = self.rows_len.max(kernels::conv_scratch_len(&r.rows_of(n), kind));
            }
            ConvLayout::SubPixel(sp) => {
                // The sub-conv's sums in `acc`, the shuffled ones in `acc2`; requantised,
                // a sub plane's bytes at a time in a lane's `rows`.
                self.fit_conv(&sp.inner, kind, sp.offset.len());
                self.acc2_len = self.acc2_len.max(layout.pixels() * cout);
                self.rows_len = self.rows_len.max(sp.sub[1] * sp.sub[2] * sp.offset.len());
            }
        }
    }

    /// Bytes held between runs.
    pub fn bytes(&self) -> usize {
        self.slot_len.iter().sum::<usize>() + self.rows_len + self.gather_len + self.planar_len + 4 * (self.acc_len + self.acc2_len)
    }
}

/// Bytes past each buffer's largest tensor that kernels may read (never use).
const SLACK: usize = 64;

struct Scratch {
    slots: Vec<Lined<u8>>,
    acc: Lined<i32>,
    acc2: Lined<i32>,
    /// A narrow 3-D conv's padded input planes (made by the calling thread, read by all).
    planar: Lined<u8>,
    /// One per pool thread (indexed by the pool's lane): the kernels' scratch of the
    /// part that thread runs. Parts of an op never need more than the whole op
    /// (`split`'s tests check the kernels' scratch lengths), so each lane is sized
    /// like the single-thread buffers. The locks are never contended: a lane runs one
    /// part at a time.
    lanes: Vec<Mutex<Lane>>,
}

#[derive(Default)]
struct Lane {
    /// im2row rows or a padded input.
    rows: Lined<u8>,
    /// A 3-D conv's gathered rows.
    gather: Lined<u8>,
}

impl Lane {
    /// Allocated on first use: a lane the pool never reaches costs nothing.
    fn fit(&mut self, m: &MemoryPlan) -> &mut Lane {
        if self.rows.len() < m.rows_len + SLACK {
            self.rows = Lined::zeroed(m.rows_len + SLACK);
        }
        if self.gather.len() < m.gather_len + SLACK {
            self.gather = Lined::zeroed(m.gather_len + SLACK);
        }
        self
    }
}

impl Scratch {
    fn new(m: &MemoryPlan, lanes: usize) -> Self {
        Scratch {
            slots: m.slot_len.iter().map(|&n| Lined::zeroed(n + SLACK)).collect(),
            acc: Lined::zeroed(m.acc_len),
            acc2: Lined::zeroed(m.acc2_len),
            planar: Lined::zeroed(if m.planar_len > 0 { m.planar_len + SLACK } else { 0 }),
            lanes: (0..lanes.max(1)).map(|_| Mutex::new(Lane::default())).collect(),
        }
    }
}

/// The requantisation that is [`plan::ConvNormOp`]'s clamp form for these statistics
/// (mean and variance, [`norms::IntMoments::mean_var`], computed once for both sides
/// of a PReLU) of the conv's accumulators (offsets included: `acc` are raw sums), its
/// output values times `slope` per channel (1 without one; a PReLU's negative side)
/// clamped to [lo, hi]: per channel, f = (acc - offset) mult + bias has mean
/// m_d mult + bias and variance v_d mult², and y = ((f - mean) inv scale + beta)
/// slope, over s_y, rounded once in f64 into the f32 multiplier and bias. None where a
/// channel has no values or a non-finite result.
fn conv_norm_requant(
    n: &plan::ConvNormOp,
    stats: &[Option<(f64, f64)>],
    slope: Option<&[f32]>,
    (lo, hi): (&[f32], &[f32]),
    dst: &QTensor,
) -> Option<Requant> {
    let h = &n.conv;
    let cout = h.mult.len();
    let (mut mult, mut bias) = (vec![0f32; cout], vec![0f32; cout]);
    for c in 0..cout {
        // The moments are of acc; those of acc - offset shift the mean only.
        let (mean_a, var_d) = stats[c]?;
        let m = h.mult[c] as f64;
        let a = slope.map_or(1.0, |s| s[c] as f64);
        let mean_f = (mean_a - h.offset[c] as f64) * m + h.bias[c] as f64;
        let inv = 1.0 / (var_d * m * m + n.eps as f64).sqrt();
        let k = inv * n.scale[c] as f64 / dst.scale as f64;
        mult[c] = (m * k * a) as f32;
        bias[c] = (((h.bias[c] as f64 - mean_f) * k + n.bias[c] as f64 / dst.scale as f64) * a) as f32;
        if !(mult[c].is_finite() && bias[c].is_finite()) {
            return None;
        }
    }
    let q = |v: &[f32]| v.iter().map(|&y| kernels::quantize_u8(y, dst.scale, dst.zp)).collect::<Vec<u8>>();
    Some(Requant { offset: h.offset.clone(), mult, bias, out_zp: dst.zp as f32, lo: q(lo), hi: q(hi) })
}

/// Where an instance norm of one run takes its statistics from.
enum NormUse<'a> {
    /// Its own input's.
    Own,
    /// A streamed volume's (index into [`NormPass::given`]).
    Given(usize),
    /// None: the pass sums its input over this box and stops.
    Collect(&'a [Range<usize>]),
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
        Engine::compiled(model, isa, None)
    }

    /// The engine for `model` run on inputs of `shape` (batch first; the batch runs
    /// item by item): the sizes the model leaves symbolic are taken from `shape`, and
    /// fixed ones must equal it. A model with symbolic spatial sizes (a 3-D segmenter
    /// or BagNet exported without a window) compiles this way for each tile size.
    pub fn for_input(model: &OnnxModel, shape: &[usize]) -> Result<Self> {
        Engine::compiled(model, Isa::detect(), Some(shape))
    }

    fn compiled(model: &OnnxModel, isa: Isa, shape: Option<&[usize]>) -> Result<Self> {
        if !isa.is_available() {
            return Err(Error::Unsupported(format!("the {} kernels need CPU features this CPU lacks", isa.name())));
        }
        let plan = compile::compile_for(model, isa, shape)?;
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
        Ok(Engine {
            plan,
            isa,
            memory,
            free_after,
            scratch: Mutex::new(Vec::new()),
            pool: Pool::new(1),
            min_part: (MIN_PART_MACS, MIN_PART_BYTES as u64, MIN_PART_VOXELS),
        })
    }

    /// The same engine running each integer op on `threads` threads (0 counts as 1): a
    /// pool of `threads - 1` workers made here, once, beside the calling thread. The
    /// outputs are the same bits at any count.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.pool = Pool::new(threads);
        // Buffers made for the old count go: the lanes follow the pool.
        self.scratch.get_mut().unwrap_or_else(|e| e.into_inner()).clear();
        self
    }

    /// Sets the least work per part (MACs of a conv, bytes of an element-wise op): ops
    /// with less than twice as much run on one thread; 3-D convs are then cut however
    /// few their voxels. For tests (1, 1 cuts every op that has rows to cut) and for
    /// tuning; the defaults suit the measured CPUs.
    #[doc(hidden)]
    pub fn with_min_part(mut self, macs: u64, bytes: u64) -> Self {
        self.min_part = (macs, bytes, 1);
        self
    }

    /// Threads that run one inference's integer ops.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Bytes of buffers held between runs at this thread count: the memory plan's,
    /// plus each further thread's kernel scratch.
    pub fn buffer_bytes(&self) -> usize {
        let m = &self.memory;
        m.bytes() + (self.threads() - 1) * (m.rows_len + m.gather_len + 2 * SLACK)
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
        self.with_scratch(|s| self.execute(s, x, &mut None, None)).map(PassResult::outputs)
    }

    /// Runs several inputs (each as [`Engine::run_one`] takes it); their outputs in
    /// order, or the first item's error. With more than one thread and more than one
    /// item, whole items run side by side, one per thread, each with its ops whole:
    /// a batch's throughput then grows with the threads as far as the cores allow,
    /// which cutting each op cannot do for small ops (MobileNetV2 x1.0 at 224: 1.5-1.6x
    /// on two threads cut op by op). Each item's outputs are the same bits either way.
    pub fn run_items(&self, items: &[&[f32]]) -> Result<Vec<Vec<ArrayD<f32>>>> {
        if self.threads() <= 1 || items.len() <= 1 {
            return items.iter().map(|x| self.run_one(x)).collect();
        }
        type Outputs = Result<Vec<ArrayD<f32>>>;
        let results: Vec<Mutex<Option<Outputs>>> = items.iter().map(|_| Mutex::new(None)).collect();
        // While this job holds the pool, each item's ops see it busy and run whole on
        // the item's thread (`parts`), each item in a scratch set of its own.
        self.pool.run(items.len(), &|i, lane| {
            let r = self.with_scratch_on(lane, |s| self.execute(s, items[i], &mut None, None)).map(PassResult::outputs);
            *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        });
        results.into_iter().map(|r| r.into_inner().unwrap_or_else(|e| e.into_inner()).expect("every item runs once")).collect()
    }

    /// [`Engine::run_items`] with the items' outputs joined along their first axis (the
    /// batch axis of a model run item by item): output k of the result is output k of
    /// every item, in order. Each item's share is copied in by the pool's threads, into
    /// memory allocated once per output and never zeroed: a serial join of a U-Net
    /// window's two 256 KiB outputs took ~25 us, 5% of a two-item batch on two threads.
    pub fn run_batch(&self, items: &[&[f32]]) -> Result<Vec<ArrayD<f32>>> {
        let mut per_item = self.run_items(items)?;
        if per_item.len() <= 1 {
            return per_item.pop().ok_or_else(|| Error::Invalid("an empty batch".into()));
        }
        // One plan made every item's outputs: the same count and shapes.
        let shapes: Vec<Vec<usize>> = per_item[0].iter().map(|y| y.shape().to_vec()).collect();
        if shapes.iter().any(|s| s.is_empty())
            || per_item.iter().any(|outs| outs.iter().map(|y| y.shape()).ne(shapes.iter().map(Vec::as_slice)))
        {
            return Err(Error::Invalid(format!("items' outputs cannot be joined along a batch axis (shapes {shapes:?})")));
        }
        let mut joined: Vec<Vec<f32>> = shapes.iter().map(|s| Vec::with_capacity(items.len() * s.iter().product::<usize>())).collect();
        {
            // Item i's share of output k: its len_k values from i len_k on.
            let mut shares: Vec<Vec<&mut [std::mem::MaybeUninit<f32>]>> = (0..items.len()).map(|_| Vec::new()).collect();
            for (buf, s) in joined.iter_mut().zip(&shapes) {
                let len: usize = s.iter().product();
                let mut rest = buf.spare_capacity_mut();
                for share in shares.iter_mut() {
                    let (head, tail) = rest.split_at_mut(len);
                    share.push(head);
                    rest = tail;
                }
            }
            let shares: Vec<Mutex<Vec<&mut [std::mem::MaybeUninit<f32>]>>> = shares.into_iter().map(Mutex::new).collect();
            self.pool.run(items.len(), &|i, _lane| {
                let mut dst = shares[i].lock().unwrap_or_else(|e| e.into_inner());
                for (d, y) in dst.iter_mut().zip(&per_item[i]) {
                    match y.as_slice() {
                        Some(v) => d.iter_mut().zip(v).for_each(|(d, &v)| {
                            d.write(v);
                        }),
                        None => d.iter_mut().zip(y.iter()).for_each(|(d, &v)| {
                            d.write(v);
                        }),
                    }
                }
            });
        }
        per_item.clear();
        joined
            .into_iter()
            .zip(shapes)
            .map(|(mut buf, mut shape)| {
                let len = items.len() * shape.iter().product::<usize>();
                // SAFETY: the job of each item wrote every value of its share (each share
                // is exactly as long as that item's output k, which has the shape of
                // item 0's: checked above), and the shares tile the first `len` values.
                unsafe { buf.set_len(len) };
                shape[0] *= items.len();
                ArrayD::from_shape_vec(IxDyn(&shape), buf).map_err(|e| Error::Invalid(e.to_string()))
            })
            .collect()
    }

    /// Scratch sets [`Engine::run_items`] holds at once for `items` items: one per
    /// item running side by side.
    pub fn sets_for(&self, items: usize) -> usize {
        if self.threads() <= 1 {
            1
        } else {
            items.clamp(1, self.threads())
        }
    }

    /// The instance norms of the plan, in the order it runs them.
    pub fn norm_sites(&self) -> Vec<NormSite> {
        let p = &self.plan;
        p.steps
            .iter()
            .filter_map(|st| match st {
                Step::Float { op: float::FloatOp::InstanceNorm(_), inputs, name, .. } => match inputs.first() {
                    Some(float::Operand::Value(v)) if p.float_shapes[*v].len() >= 3 => {
                        let shape = &p.float_shapes[*v];
                        Some(NormSite { name: name.clone(), channels: shape[1], spatial: shape[2..].to_vec(), bytes: false })
                    }
                    _ => None,
                },
                Step::Int(Op::InstanceNorm(n)) => {
                    let shape = &p.shapes[n.src];
                    Some(NormSite { name: p.label(st), channels: shape[1], spatial: shape[2..].to_vec(), bytes: true })
                }
                Step::Int(Op::ConvNorm(n)) => {
                    let shape = &n.conv.shape;
                    Some(NormSite { name: n.conv.name.clone(), channels: shape[1], spatial: shape[2..].to_vec(), bytes: false })
                }
                _ => None,
            })
            .collect()
    }

    /// One pass of a volume streamed in tiles ([`norms`]): runs `x` with the norms'
    /// statistics `pass.given`, and either sums the next norm's input over
    /// `pass.collect` (stopping there) or runs to the outputs.
    pub fn run_pass(&self, x: &[f32], pass: NormPass) -> Result<PassResult> {
        self.with_scratch(|s| self.execute(s, x, &mut None, Some(pass)))
    }

    /// Runs `x` `iterations` times and returns the total time of each step.
    pub fn profile(&self, x: &[f32], iterations: usize) -> Result<Vec<StepTime>> {
        let mut times: Option<Vec<f64>> = Some(Vec::new());
        self.with_scratch(|s| {
            for _ in 0..iterations.max(1) {
                self.execute(s, x, &mut times, None)?;
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
        self.with_scratch_on(0, f)
    }

    /// [`Engine::with_scratch`] on pool lane `lane`: the set that lane used last if it is
    /// spare, else any. Items side by side on two threads that took whichever set came
    /// first swapped sets at almost every batch, so each run began by pulling ~0.75 MB
    /// of buffers from the other core's cache: a U-Net window ran 5-10% slower beside
    /// another item than alone, against 2-4% for two processes side by side.
    fn with_scratch_on<T>(&self, lane: usize, f: impl FnOnce(&mut Scratch) -> Result<T>) -> Result<T> {
        // The lock is held only to take or return a set, never during a run.
        let spare = {
            let mut sets = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
            match sets.iter().rposition(|(last, _)| *last == lane) {
                Some(k) => Some(sets.swap_remove(k).1),
                None => sets.pop().map(|(_, s)| s),
            }
        };
        let mut s = spare.unwrap_or_else(|| Scratch::new(&self.memory, self.threads()));
        let r = f(&mut s);
        self.scratch.lock().unwrap_or_else(|e| e.into_inner()).push((lane, s));
        r
    }

    fn execute(&self, s: &mut Scratch, x: &[f32], times: &mut Option<Vec<f64>>, pass: Option<NormPass>) -> Result<PassResult> {
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
        // Instance norms met so far, and what the pass says of the next one.
        let mut norms = 0;
        let mut next_norm = || -> Result<NormUse> {
            let k = norms;
            norms += 1;
            Ok(match pass {
                None => NormUse::Own,
                Some(NormPass { given, .. }) if k < given.len() => NormUse::Given(k),
                Some(NormPass { collect: Some(region), .. }) => NormUse::Collect(region),
                Some(_) => return Err(Error::Invalid(format!("instance norm {k} has no statistics for this pass"))),
            })
        };
        let given = |k: usize| &pass.expect("given by a pass").given[k];
        for (i, step) in p.steps.iter().enumerate() {
            match step {
                Step::Int(Op::InstanceNorm(n)) => {
                    let t = p.tensors[n.src];
                    let x = &s.slots[slot(n.src)][..t.len()];
                    let counts = match next_norm()? {
                        NormUse::Own => self.byte_counts(&s.lanes, x, &t, None),
                        NormUse::Given(k) => match given(k) {
                            NormSums::Bytes(h) if h.len() == t.c * 256 => h.clone(),
                            _ => return Err(Error::Invalid(format!("{}: the given statistics are of another norm", p.label(step)))),
                        },
                        NormUse::Collect(region) => {
                            let runs = self.region_runs(&p.shapes[n.src][2..], region)?;
                            return Ok(PassResult::Sums(NormSums::Bytes(self.byte_counts(&s.lanes, x, &t, Some(&runs)))));
                        }
                    };
                    let table = self.instance_norm_tables(&counts, &t, n, &p.tensors[n.dst]);
                    let mut dst = std::mem::take(&mut s.slots[slot(n.dst)]);
                    self.apply_tables(&s.lanes, &s.slots[slot(n.src)][..t.len()], t.c, &table, &mut dst[..t.len()]);
                    s.slots[slot(n.dst)] = dst;
                }
                Step::Int(Op::ConvNorm(n)) => {
                    let h = &n.conv;
                    let (pixels, cout) = (h.layout.pixels(), h.mult.len());
                    let use_ = next_norm()?;
                    // A sub-pixel conv whose class voxels are all outputs is normalised and
                    // requantised on its sums as they are, then shuffled as bytes.
                    let sub = match &h.layout {
                        ConvLayout::SubPixel(sp) if sp.covers_exactly() && !matches!(use_, NormUse::Collect(_)) => Some(&**sp),
                        _ => None,
                    };
                    let acc = match sub {
                        Some(sp) => {
                            self.conv(s, h.src, &sp.inner, &h.kind, sp.inner_macs, None);
                            &s.acc[..sp.inner.pixels() * sp.offset.len()]
                        }
                        None => {
                            self.conv(s, h.src, &h.layout, &h.kind, h.macs, None);
                            let acc = if h.layout.sums_in_acc2() { &s.acc2 } else { &s.acc };
                            &acc[..pixels * cout]
                        }
                    };
                    let (lo, hi) = &n.clamp;
                    let macs = h.layout.products_per_output(h.macs, cout);
                    let moments = match use_ {
                        NormUse::Own => match sub {
                            Some(sp) => sp.output_moments(&self.conv_moments(&s.lanes, acc, sp.offset.len(), macs, None)),
                            None => self.conv_moments(&s.lanes, acc, cout, macs, None),
                        },
                        NormUse::Collect(region) => {
                            let runs = self.region_runs(&h.shape[2..], region)?;
                            return Ok(PassResult::Sums(NormSums::Ints(self.conv_moments(&s.lanes, acc, cout, macs, Some(&runs)))));
                        }
                        NormUse::Given(k) => match given(k) {
                            NormSums::Ints(v) if v.len() == cout => v.clone(),
                            _ => return Err(Error::Invalid(format!("{}: the given statistics are of another norm", p.label(step)))),
                        },
                    };
                    let dst_t = p.tensors[n.dst];
                    let non_finite = || Error::NonFinite { what: format!("the statistics of {}", p.label(step)) };
                    let stats: Vec<Option<(f64, f64)>> = moments.iter().map(|m| m.mean_var()).collect();
                    // Without a PReLU one requantisation; with one, its positive side
                    // clamped to [0, hi] and its negative side to [lo, 0] (ConvNormOp::slopes).
                    let zeros = vec![0f32; cout];
                    let (pos, neg) = match &n.slopes {
                        None => (conv_norm_requant(n, &stats, None, (lo, hi), &dst_t).ok_or_else(non_finite)?, None),
                        Some(a) => {
                            let side = |c: usize, v: &[f32], up: bool| if (a[c] < 0.0) == up { v[c] } else { 0.0 };
                            let neg_lo: Vec<f32> = (0..cout).map(|c| side(c, lo, false)).collect();
                            let neg_hi: Vec<f32> = (0..cout).map(|c| side(c, hi, true)).collect();
                            (
                                conv_norm_requant(n, &stats, None, (&zeros, hi), &dst_t).ok_or_else(non_finite)?,
                                Some(conv_norm_requant(n, &stats, Some(a), (&neg_lo, &neg_hi), &dst_t).ok_or_else(non_finite)?),
                            )
                        }
                    };
                    let mut dst = std::mem::take(&mut s.slots[slot(n.dst)]);
                    let out = &mut dst[..dst_t.len()];
                    if let Some(sp) = sub {
                        let neg = neg.map(|r| sp.sub_requant(&r));
                        self.sub_pixel_bytes(&s.lanes, sp, acc, &sp.sub_requant(&pos), neg.as_ref().map(|r| (r, dst_t.zp)), out);
                    } else {
                        let rs = ranges(pixels, self.parts(out.len() as u64, self.min_part.1), PIXEL_ALIGN);
                        let work: Vec<_> = rs.iter().zip(cut(out, rs.iter().map(|r| r.len() * cout))).collect();
                        let isa = self.isa;
                        self.split(&s.lanes, work, |(px, out), _| {
                            let acc = &acc[px.start * cout..px.end * cout];
                            match &neg {
                                None => kernels::requantize(isa, acc, cout, &pos, out),
                                Some(neg) => kernels::requantize_two_sided(isa, acc, cout, &pos, neg, dst_t.zp, out),
                            }
                        });
                    }
                    s.slots[slot(n.dst)] = dst;
                }
                Step::Int(op) => self.int_op(s, op),
                Step::Quantize { src, dst } => {
                    let v = match *src {
                        0 => None,
                        v => Some(vals[v].as_ref().expect("computed before use").as_standard_layout()),
                    };
                    let data = v.as_ref().map_or(x, |v| v.as_slice().expect("standard layout"));
                    let t = p.tensors[*dst];
                    let (isa, pixels) = (self.isa, t.h * t.w);
                    // Runs of pixels: each part reads them in every channel plane and
                    // writes them whole (channels last), and says whether they were all
                    // finite: quantisation would silently map NaN to the zero point's
                    // neighbourhood.
                    let non_finite = std::sync::atomic::AtomicBool::new(false);
                    let rs = ranges(pixels, self.parts(t.len() as u64, self.min_part.1), PIXEL_ALIGN);
                    let outs = cut(&mut s.slots[slot(*dst)][..t.len()], rs.iter().map(|r| r.len() * t.c));
                    self.split(&s.lanes, rs.iter().zip(outs).collect(), |(r, o), _| {
                        if !kernels::quantize_nchw_to_nhwc(isa, &data[r.start..], pixels, &QTensor { h: 1, w: r.len(), ..t }, o) {
                            non_finite.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                    });
                    if non_finite.into_inner() {
                        let what = if *src == 0 { "model input".to_string() } else { format!("value before {}", p.label(step)) };
                        return Err(Error::NonFinite { what });
                    }
                }
                Step::Dequantize { src, dst, plus } => {
                    let t = p.tensors[*src];
                    let q = &s.slots[slot(*src)][..t.len()];
                    // The second term: its own bytes and parameters (the same length).
                    let (tb, qb) = match plus {
                        Some(b) => (p.tensors[*b], Some(&s.slots[slot(*b)][..t.len()])),
                        None => (t, None),
                    };
                    let mut f = vec![0f32; t.len()];
                    let (c, isa) = (t.c, self.isa);
                    self.to_planes(&s.lanes, &mut f, c, t.h * t.w, |px, rows| {
                        let a = &q[px.start * c..px.end * c];
                        let b = qb.map(|qb| (&qb[px.start * c..px.end * c], &tb));
                        kernels::dequantize_rows(isa, a, &t, b, rows);
                    });
                    vals[*dst] = Some(ArrayD::from_shape_vec(IxDyn(&p.shapes[*src]), f).expect("sized"));
                }
                Step::ConvToFloat { conv: h, dst } => {
                    let (pixels, cout) = (h.layout.pixels(), h.mult.len());
                    self.conv(s, h.src, &h.layout, &h.kind, h.macs, None);
                    let acc = if h.layout.sums_in_acc2() { &s.acc2 } else { &s.acc };
                    let mut f = vec![0f32; pixels * cout];
                    self.to_planes(&s.lanes, &mut f, cout, pixels, |px, rows| {
                        for (i, a) in acc[px.start * cout..px.end * cout].chunks_exact(cout).enumerate() {
                            for (c, row) in rows.iter_mut().enumerate() {
                                let v = (a[c] - h.offset[c]) as f32 * h.mult[c] + h.bias[c];
                                row[i] = v.max(h.lo[c]).min(h.hi[c]);
                            }
                        }
                    });
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
                    let y = match (op, args.as_slice()) {
                        (float::FloatOp::InstanceNorm(eps), [x, scale, bias]) => {
                            let use_ = next_norm()?;
                            if let NormUse::Collect(region) = use_ {
                                return self.float_sums(x, region).map(PassResult::Sums);
                            }
                            let stats = match use_ {
                                NormUse::Given(k) => Some(given(k)),
                                _ => None,
                            };
                            self.instance_norm(&s.lanes, x, scale, bias, *eps, stats).map_err(|e| Error::Invalid(format!("{name}: {e}")))?
                        }
                        _ => None,
                    };
                    let y = match y {
                        Some(y) => y,
                        None => float::eval(op, &args).map_err(|e| Error::Invalid(format!("{name}: {e}")))?,
                    };
                    vals[*dst] = Some(y);
                }
            }
            for &v in &self.free_after[i] {
                vals[v] = None;
            }
            lap(times);
        }
        // Each output moved out of its value (copied only where the model lists one value
        // twice): a volume's output is megabytes.
        let outputs: Vec<ArrayD<f32>> = p
            .outputs
            .iter()
            .enumerate()
            .map(|(k, &o)| {
                let again = p.outputs[k + 1..].contains(&o);
                let v = if again { vals[o].clone() } else { vals[o].take() };
                v.unwrap_or_else(|| if o == 0 { input_array() } else { unreachable!("outputs are kept") })
            })
            .collect();
        // Integer ops give finite values; only float arithmetic (overflow, 0/0, exp)
        // could make a non-finite output.
        let finite = |y: &ArrayD<f32>| y.as_slice().map_or_else(|| float::all_finite(y.iter()), |v| kernels::all_finite(self.isa, v));
        if !outputs.iter().all(finite) {
            return Err(Error::NonFinite { what: "model output".into() });
        }
        Ok(PassResult::Outputs(outputs))
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
                self.conv(s, c.src, &c.layout, &c.kind, c.macs, Some((&c.requant, out)));
            }
            Op::Lut { src, table, .. } => {
                let x = &s.slots[slot(*src)][..p.tensors[*src].len()];
                self.apply_tables(&s.lanes, x, p.tensors[*src].c, table, out);
            }
            Op::InstanceNorm(_) | Op::ConvNorm(_) => unreachable!("run by execute"),
            Op::Add { a, b, bounds, .. } => {
                let (ta, tb) = (p.tensors[*a], p.tensors[*b]);
                let (xa, xb) = (&s.slots[slot(*a)][..ta.len()], &s.slots[slot(*b)][..tb.len()]);
                let (isa, n) = (self.isa, out.len());
                // Element-wise: any cut gives the same bytes; whole cache lines per part.
                let rs = ranges(n, self.parts(n as u64, self.min_part.1), 64);
                let work: Vec<_> = rs.iter().zip(cut(out, rs.iter().map(|r| r.len()))).collect();
                self.split(&s.lanes, work, |(r, out), _| {
                    kernels::add_quantized(isa, &xa[r.clone()], &ta, &xb[r.clone()], &tb, &dst_t, *bounds, out)
                });
            }
            Op::Gather(g) => match &g.copies {
                Copies::Runs(runs) => {
                    // Consecutive groups of runs: the runs cover dst in order, so each
                    // group's bytes start where the previous group's end.
                    let groups = ranges(runs.len(), self.parts(out.len() as u64, self.min_part.1), 1);
                    let lens: Vec<usize> = groups.iter().map(|k| runs[k.clone()].iter().map(|r| r.len as usize).sum()).collect();
                    let work: Vec<_> = groups.into_iter().zip(cut(out, lens)).collect();
                    let slots = &s.slots;
                    self.split(&s.lanes, work, |(group, out), _| {
                        let mut o = 0;
                        for r in &runs[group] {
                            let (k, from, len) = (r.src as usize, r.from as usize, r.len as usize);
                            let src = &slots[slot(g.srcs[k])][from..from + len];
                            let d = &mut out[o..o + len];
                            match &g.tables[k] {
                                None => d.copy_from_slice(src),
                                Some(table) => d.iter_mut().zip(src).for_each(|(d, &v)| *d = table[v as usize]),
                            }
                            o += len;
                        }
                    });
                }
                Copies::Channels(parts) => {
                    // Runs of whole pixels; each pixel takes its channels from every part.
                    let c = dst_t.c;
                    let rs = ranges(out.len() / c.max(1), self.parts(out.len() as u64, self.min_part.1), PIXEL_ALIGN);
                    let work: Vec<_> = rs.iter().zip(cut(out, rs.iter().map(|r| r.len() * c))).collect();
                    let slots = &s.slots;
                    self.split(&s.lanes, work, |(px, out), _| {
                        let mut at = 0;
                        for &(k, w) in parts {
                            let (k, w) = (k as usize, w as usize);
                            let src = &slots[slot(g.srcs[k])][px.start * w..px.end * w];
                            let table = g.tables[k].as_deref().map(|t| t.try_into().expect("256 entries"));
                            kernels::copy_channels(src, w, table, out, c, at);
                            at += w;
                        }
                    });
                }
                Copies::Bytes(per_source) => {
                    debug_assert!(per_source.iter().all(|v| v.windows(2).all(|w| w[0].0 < w[1].0)), "pairs in dst order");
                    // Ranges of dst bytes; each part takes, from every source, the pairs
                    // landing in its range (a bisection: they are in dst order).
                    let rs = ranges(out.len(), self.parts(out.len() as u64, self.min_part.1), 64);
                    let work: Vec<_> = rs.iter().zip(cut(out, rs.iter().map(|r| r.len()))).collect();
                    let slots = &s.slots;
                    self.split(&s.lanes, work, |(r, out), _| {
                        let (lo, hi) = (r.start as u32, r.end as u32);
                        for (k, pairs) in per_source.iter().enumerate() {
                            let pairs = &pairs[pairs.partition_point(|q| q.0 < lo)..pairs.partition_point(|q| q.0 < hi)];
                            let src = &slots[slot(g.srcs[k])][..p.tensors[g.srcs[k]].len()];
                            match &g.tables[k] {
                                None => pairs.iter().for_each(|&(o, f)| out[(o - lo) as usize] = src[f as usize]),
                                Some(table) => pairs.iter().for_each(|&(o, f)| out[(o - lo) as usize] = table[src[f as usize] as usize]),
                            }
                        }
                    });
                }
            },
            Op::GatherMax { src, group, index, table, .. } => {
                let x = &s.slots[slot(*src)][..p.tensors[*src].len()];
                kernels::max_groups(x, *group, index, table.as_deref(), out);
            }
            Op::Multiply { src, tables, factors, .. } => {
                let t = p.tensors[*src];
                kernels::map_bytes(&s.slots[slot(*src)][..t.len()], t.c, tables, factors, out);
            }
            Op::MeanPool { src, .. } => {
                let t = p.tensors[*src];
                let x = &s.slots[slot(*src)][..t.len()];
                kernels::mean_pool(self.isa, x, &t, &dst_t, &mut s.acc[..t.c], out);
            }
        }
        s.slots[slot(op.destination())] = dst;
    }

    /// How many parts an op of `work` units is cut into: one per thread, fewer where a
    /// part would get less than `per_part`; one while the pool is busy with another job
    /// (whole items side by side, [`Engine::run_items`], or another caller's op), whose
    /// parts would only run one after the other on this thread.
    fn parts(&self, work: u64, per_part: u64) -> usize {
        // (One thread first: no lock to look at.)
        if self.threads() <= 1 || self.pool.busy() {
            return 1;
        }
        (self.threads() as u64).min(work / per_part.max(1)).max(1) as usize
    }

    /// Runs `f` on every part, over the pool (on this thread alone for a single part),
    /// each with the scratch lane of the thread that runs it.
    fn split<T: Send>(&self, lanes: &[Mutex<Lane>], parts: Vec<T>, f: impl Fn(T, &mut Lane) + Sync) {
        let m = &self.memory;
        let lane = |i: usize| lanes[i].lock().unwrap_or_else(|e| e.into_inner());
        if parts.len() <= 1 {
            parts.into_iter().for_each(|p| f(p, lane(0).fit(m)));
            return;
        }
        // Each part is taken out of its cell by the one thread the pool gives it to.
        let cells: Vec<Mutex<Option<T>>> = parts.into_iter().map(|p| Mutex::new(Some(p))).collect();
        self.pool.run(cells.len(), &|i, l| {
            let part = cells[i].lock().unwrap_or_else(|e| e.into_inner()).take().expect("each part runs once");
            f(part, lane(l).fit(m));
        });
    }

    /// out[.., c] = table[c * 256 + x[.., c]] over the pool, in parts of whole pixels.
    fn apply_tables(&self, lanes: &[Mutex<Lane>], x: &[u8], c: usize, table: &[u8], out: &mut [u8]) {
        let rs = ranges(out.len() / c.max(1), self.parts(out.len() as u64, self.min_part.1), PIXEL_ALIGN);
        let work: Vec<_> = rs.iter().zip(cut(out, rs.iter().map(|r| r.len() * c))).collect();
        self.split(lanes, work, |(r, out), _| {
            for (dp, sp) in out.chunks_exact_mut(c).zip(x[r.start * c..r.end * c].chunks_exact(c)) {
                for (ch, (o, &v)) in dp.iter_mut().zip(sp).enumerate() {
                    *o = table[ch * 256 + v as usize];
                }
            }
        });
    }

    /// The parts a reduction over pixels is cut into for the pool: the pixel ranges
    /// `runs` (None: all `pixels`) of `c` values each, as consecutive groups of runs, or
    /// ranges of the one run.
    fn pixel_parts(&self, pixels: usize, runs: Option<&[Range<usize>]>, c: usize) -> Vec<Vec<Range<usize>>> {
        let all: Vec<Range<usize>> = std::iter::once(0..pixels).collect();
        let runs = runs.unwrap_or(&all);
        if let [r0] = runs {
            return ranges(r0.len(), self.parts((r0.len() * c) as u64, self.min_part.1), PIXEL_ALIGN)
                .into_iter()
                .map(|r| std::iter::once(r0.start + r.start..r0.start + r.end).collect())
                .collect();
        }
        let total: usize = runs.iter().map(|r| r.len()).sum();
        ranges(runs.len(), self.parts((total * c) as u64, self.min_part.1), 1).into_iter().map(|g| runs[g].to_vec()).collect()
    }

    /// Counts of each channel's bytes in `x` (tensor `t`), `[channel][256]`: over all
    /// pixels, or over the pixel ranges `runs`. Parts of the pixels on the pool,
    /// summed: integers, the same at any thread count and for any split of a volume.
    fn byte_counts(&self, lanes: &[Mutex<Lane>], x: &[u8], t: &QTensor, runs: Option<&[Range<usize>]>) -> Vec<u64> {
        let c = t.c;
        let parts = self.pixel_parts(t.h * t.w, runs, c);
        let mut counts = vec![0u32; parts.len() * c * 256];
        let work: Vec<_> = parts.iter().zip(cut(&mut counts, parts.iter().map(|_| c * 256))).collect();
        self.split(lanes, work, |(part, h), _| {
            for r in part {
                for px in x[r.start * c..r.end * c].chunks_exact(c) {
                    for (ch, &v) in px.iter().enumerate() {
                        h[ch * 256 + v as usize] += 1;
                    }
                }
            }
        });
        let mut total = vec![0u64; c * 256];
        for h in counts.chunks_exact(c * 256) {
            total.iter_mut().zip(h).for_each(|(a, &b)| *a += b as u64);
        }
        total
    }

    /// The tables of [`plan::InstanceNormOp`] (tensor `t` into `dst`) from the counts of
    /// each channel's bytes ([`Engine::byte_counts`], of this tensor or of a whole
    /// streamed volume): the float op's statistics and normalisation per value.
    fn instance_norm_tables(&self, counts: &[u64], t: &QTensor, n: &plan::InstanceNormOp, dst: &QTensor) -> Vec<u8> {
        let v: Vec<f32> = (0..=255u8).map(|q| t.deq(q)).collect();
        // Entries of values absent from a channel are never read (the table is applied
        // to bytes that were counted): left 0.
        let mut table = vec![0u8; t.c * 256];
        let mut present: Vec<(usize, u64)> = Vec::with_capacity(256);
        for (ch, k) in counts.chunks_exact(256).enumerate() {
            // The values present, in increasing order (the order of the sums below).
            present.clear();
            present.extend(k.iter().enumerate().filter(|(_, &k)| k > 0).map(|(q, &k)| (q, k)));
            let np = present.iter().map(|&(_, k)| k).sum::<u64>().max(1) as f64;
            let mean = present.iter().map(|&(q, k)| k as f64 * v[q] as f64).sum::<f64>() / np;
            let var = present.iter().map(|&(q, k)| k as f64 * (v[q] as f64 - mean) * (v[q] as f64 - mean)).sum::<f64>() / np;
            let (mean, inv) = (mean as f32, 1.0 / (var as f32 + n.eps).sqrt());
            for &(q, _) in &present {
                let y = n.steps.iter().fold((v[q] - mean) * inv * n.scale[ch] + n.bias[ch], |y, step| step.apply(y, ch));
                table[ch * 256 + q] = kernels::quantize_u8(y, dst.scale, dst.zp);
            }
        }
        table
    }

    /// Pixel ranges (row-major over `spatial`) of the box `region`, checked against it.
    fn region_runs(&self, spatial: &[usize], region: &[Range<usize>]) -> Result<Vec<Range<usize>>> {
        if region.len() != spatial.len() || region.iter().zip(spatial).any(|(r, &n)| r.start > r.end || r.end > n) {
            return Err(Error::Invalid(format!("the box {region:?} is not inside the norm's input {spatial:?}")));
        }
        Ok(norms::box_runs(spatial, region))
    }

    /// Exact integer moments of each channel of a conv's raw sums `acc` (pixel-major)
    /// over all pixels or the pixel ranges `runs`, parts on the pool, merged.
    fn conv_moments(
        &self,
        lanes: &[Mutex<Lane>],
        acc: &[i32],
        cout: usize,
        macs_per_output: u64,
        runs: Option<&[Range<usize>]>,
    ) -> Vec<norms::IntMoments> {
        let parts = self.pixel_parts(acc.len() / cout.max(1), runs, cout);
        let cells: Vec<Mutex<Vec<norms::IntMoments>>> = parts.iter().map(|_| Mutex::new(Vec::new())).collect();
        let work: Vec<_> = parts.iter().zip(&cells).collect();
        // |acc| <= 255 * 128 * k for k multiply-adds per output, so a square is below
        // 2^30 k^2: i64 partial sums of `flush` pixels' squares cannot overflow; they
        // go into i128 totals (exact, whatever the split).
        let k = (macs_per_output.max(1) as f64).min(1e9);
        let flush = ((2f64.powi(62) / (2f64.powi(30) * k * k)).floor() as usize).clamp(1, 1 << 20);
        // Partial sums over `width` values, whole pixels (at least 32 values: with few
        // channels a pixel at a time would not fill the vector lanes); value j of a
        // block belongs to channel j % cout.
        let width = cout.max(1) * 32usize.div_ceil(cout.max(1));
        let isa = self.isa;
        self.split(lanes, work, |(part, cell), _| {
            let (mut sum, mut squares) = (vec![0i128; cout], vec![0i128; cout]);
            let (mut s64, mut q64) = (vec![0i64; width], vec![0i64; width]);
            let mut count = 0u64;
            for r in part {
                for chunk in acc[r.start * cout..r.end * cout].chunks(flush * cout) {
                    let whole = chunk.len() / width * width;
                    kernels::moment_sums(isa, &chunk[..whole], &mut s64, &mut q64);
                    // The last pixels (fewer than a block), from slot 0.
                    for a in chunk[whole..].chunks_exact(cout) {
                        kernels::moment_sums(isa, a, &mut s64[..cout], &mut q64[..cout]);
                    }
                    for (j, (s, q)) in s64.iter_mut().zip(q64.iter_mut()).enumerate() {
                        sum[j % cout] += std::mem::take(s) as i128;
                        squares[j % cout] += std::mem::take(q) as i128;
                    }
                }
                count += r.len() as u64;
            }
            *cell.lock().unwrap_or_else(|e| e.into_inner()) =
                sum.iter().zip(&squares).map(|(&s, &q)| norms::IntMoments { count, sum: s, squares: q }).collect();
        });
        let mut total = vec![norms::IntMoments::default(); cout];
        for cell in cells {
            for (t, m) in total.iter_mut().zip(cell.into_inner().unwrap_or_else(|e| e.into_inner())) {
                t.merge(&m);
            }
        }
        total
    }

    /// The sums of each channel of the float value `x` ([1, C, spatial...]) over `region`.
    fn float_sums(&self, x: &ArrayD<f32>, region: &[Range<usize>]) -> Result<NormSums> {
        let shape = x.shape();
        if shape.len() < 3 || shape[0] != 1 {
            return Err(Error::Invalid(format!("an instance norm of shape {shape:?} cannot be streamed")));
        }
        let runs = self.region_runs(&shape[2..], region)?;
        let x = x.as_standard_layout();
        let data = x.as_slice().expect("standard layout");
        let plane: usize = shape[2..].iter().product();
        let sums = data
            .chunks_exact(plane)
            .map(|p| {
                let mut s = norms::ChannelSums::default();
                runs.iter().for_each(|r| s.add(&p[r.clone()]));
                s
            })
            .collect();
        Ok(NormSums::Float(sums))
    }

    /// The interpreter's InstanceNormalization over the pool, the same bits: each
    /// plane's statistics by one thread (or from `given`, a streamed volume's), then
    /// the normalisation element-wise in runs of pixels.
    fn instance_norm(
        &self,
        lanes: &[Mutex<Lane>],
        x: &ArrayD<f32>,
        scale: &ArrayD<f32>,
        bias: &ArrayD<f32>,
        eps: f32,
        given: Option<&NormSums>,
    ) -> std::result::Result<Option<ArrayD<f32>>, String> {
        let shape = x.shape();
        let c = shape.get(1).copied().unwrap_or(0);
        let plane: usize = shape.get(2..).map_or(0, |s| s.iter().product());
        if shape.len() < 3 || scale.len() != c || bias.len() != c || plane == 0 {
            // The interpreter says what is wrong (or does the degenerate case).
            return match given {
                None => Ok(None),
                Some(_) => Err(format!("InstanceNormalization of {shape:?} cannot take a streamed volume's statistics")),
            };
        }
        let (scale, bias): (Vec<f32>, Vec<f32>) = (scale.iter().copied().collect(), bias.iter().copied().collect());
        let mut y = x.as_standard_layout().into_owned();
        let data = y.as_slice_mut().expect("standard layout");
        let planes = data.len() / plane;
        let stats: Vec<(f32, f32)> = match given {
            Some(NormSums::Float(sums)) if sums.len() == planes => sums
                .iter()
                .map(|s| s.stats(eps).ok_or_else(|| "the streamed statistics are empty or not finite".to_string()))
                .collect::<std::result::Result<_, _>>()?,
            Some(_) => return Err("the given statistics are of another norm".into()),
            None => {
                // Statistics: whole planes per part.
                let stats: Vec<Mutex<(f32, f32)>> = (0..planes).map(|_| Mutex::new((0.0, 0.0))).collect();
                let rs = ranges(planes, self.parts(planes as u64, 1), 1);
                let reader: &[f32] = data;
                self.split(lanes, rs, |r, _| {
                    for i in r {
                        *stats[i].lock().unwrap_or_else(|e| e.into_inner()) =
                            float::instance_stats(&reader[i * plane..(i + 1) * plane], eps);
                    }
                });
                stats.into_iter().map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner())).collect()
            }
        };
        // Normalisation: runs of elements, split at plane boundaries where a run crosses one.
        let rs = ranges(data.len(), self.parts(data.len() as u64, self.min_part.1), PIXEL_ALIGN);
        let work: Vec<_> = rs.iter().zip(cut(data, rs.iter().map(|r| r.len()))).collect();
        self.split(lanes, work, |(r, mut rest), _| {
            let mut at = r.start;
            while !rest.is_empty() {
                let (i, n) = (at / plane, (plane - at % plane).min(rest.len()));
                let (piece, tail) = std::mem::take(&mut rest).split_at_mut(n);
                let (mean, inv) = stats[i];
                float::instance_apply(piece, mean, inv, scale[i % c], bias[i % c]);
                (rest, at) = (tail, at + n);
            }
        });
        Ok(Some(y))
    }

    /// Fills `f` ([c][pixels], a float value's NC... layout) from pixel-major data over
    /// the pool: each part gets a run of pixels and, for it, one slice per channel row.
    fn to_planes(
        &self,
        lanes: &[Mutex<Lane>],
        f: &mut [f32],
        c: usize,
        pixels: usize,
        fill: impl Fn(Range<usize>, &mut [&mut [f32]]) + Sync,
    ) {
        if f.is_empty() {
            return;
        }
        let rs = ranges(pixels, self.parts(f.len() as u64, self.min_part.1), PIXEL_ALIGN);
        let mut rows: Vec<Vec<&mut [f32]>> = rs.iter().map(|_| Vec::with_capacity(c)).collect();
        for plane in f.chunks_exact_mut(pixels) {
            for (k, piece) in cut(plane, rs.iter().map(|r| r.len())).into_iter().enumerate() {
                rows[k].push(piece);
            }
        }
        self.split(lanes, rs.into_iter().zip(rows).collect(), |(r, mut rows), _| fill(r, &mut rows));
    }

    /// A conv of the plan over the pool: requantised into `out` when given, else its
    /// int32 sums [pixels][cout] (dense sums still carry zp * Σw) left in `acc`
    /// (`acc2` for a transposed conv).
    fn conv(&self, s: &mut Scratch, src: usize, layout: &ConvLayout, kind: &ConvKind, macs: u64, out: Option<(&Requant, &mut [u8])>) {
        let isa = self.isa;
        // The whole slot: the kernels may read up to 64 bytes past the tensor.
        let x: &[u8] = &s.slots[self.memory.slot_of[src]];
        let zp = self.plan.tensors[src].zp;
        let mut parts = self.parts(macs, self.min_part.0);
        // A 2-D conv on a small map stays whole unless its work is long; on AVX2, one
        // part per 1.25 us of estimated work (the tests' cut of every op, a least part
        // of 1, keeps every cut).
        if matches!(layout, ConvLayout::Direct(_)) && self.min_part.0 > 1 {
            parts = match avx2_conv_parts(macs, kind) {
                Some(n) => self.parts(n as u64, 1),
                None => parts.min(small_conv_parts(layout.pixels(), macs, kind)),
            };
        }
        if matches!(layout, ConvLayout::Narrow(_) | ConvLayout::Padded(_)) {
            // A 3-D conv on padded planes pays per part for its set-up and its share of
            // the padding: a U-Net's 4³ convs (64 voxels, 0.2-1.8 M MACs) ran 1.3-1.6x
            // slower in two parts than whole.
            parts = parts.min(layout.pixels() / self.min_part.2.max(1)).max(1);
        }
        // A transposed conv's: taps x cout columns.
        let cout = plane_cout(kind);
        let (requant, out) = out.map_or((None, None), |(r, o)| (Some(r), Some(o)));
        match layout {
            ConvLayout::Direct(g) => {
                let cuts = conv_parts(g, parts, kernels::pixel_tile(kind));
                let lens = || cuts.iter().map(|p| p.pixels.len() * cout);
                let outs = outs_for(out, lens());
                let work: Vec<_> = cuts.iter().zip(cut(&mut s.acc, lens())).zip(outs).collect();
                self.split(&s.lanes, work, |((p, a), o), l| match (requant, o) {
                    (Some(r), Some(o)) => kernels::conv(isa, &x[p.from..], &p.g, zp, kind, r, &mut l.rows, a, o),
                    _ => kernels::accumulate(isa, &x[p.from..], &p.g, zp, kind, &mut l.rows, a),
                });
            }
            ConvLayout::Planes { g, plane } => {
                // Output voxels in order (plane by plane), each plane `per` pixels (a
                // plane's geometry has height 1); a run never crosses a plane.
                let per = plane.w;
                let run = |v: usize, end: usize| (per - v % per).min(end - v);
                let gather = |r: Range<usize>, rows: &mut [u8]| {
                    let p0 = r.start % per;
                    volume::gather_plane(x, g, zp, r.start / per, p0..p0 + r.len(), rows);
                    ConvGeometry::new(1, r.len(), plane.cin, 1, 1, [1, 1], [0; 4]).expect("a 1x1 conv fits any input")
                };
                self.on_gathered_rows((&s.lanes, &mut s.acc), (layout.pixels(), parts, cout), (kind, zp), requant.zip(out), run, gather);
            }
            ConvLayout::Rows(rows) => {
                // A chunk of rows at a time in the lane's buffer.
                let run = |v: usize, end: usize| (end - v).min(Rows2::CHUNK);
                let gather = |r: Range<usize>, buf: &mut [u8]| {
                    rows.gather(isa, x, zp, r.clone(), &mut buf[..r.len() * ROWS2_PITCH]);
                    rows.rows_of(r.len())
                };
                self.on_gathered_rows((&s.lanes, &mut s.acc), (layout.pixels(), parts, cout), (kind, zp), requant.zip(out), run, gather);
            }
            ConvLayout::Narrow(n) => {
                let pad = |r: Range<usize>, o: &mut [u8]| n.pad_planes(x, zp, r, o);
                let scratch = (&s.lanes[..], &mut s.planar[..], &mut s.acc[..]);
                self.on_padded_planes(scratch, (n.planes(), n.plane_len()), pad, (layout.pixels(), parts, cout), out, |planar, r, o, a| {
                    kernels::conv3d_narrow(isa, planar, n, r, requant.zip(o), a)
                });
            }
            ConvLayout::Padded(p) => {
                let pad = |r: Range<usize>, o: &mut [u8]| p.pad_planes(x, zp, r, o);
                let scratch = (&s.lanes[..], &mut s.planar[..], &mut s.acc[..]);
                self.on_padded_planes(scratch, (p.planes(), p.plane_len()), pad, (layout.pixels(), parts, cout), out, |planar, r, o, a| {
                    kernels::conv3d_padded(isa, planar, p, kind, r, requant.zip(o), a)
                });
            }
            ConvLayout::Transposed { g, cols, col_offset } => {
                // The columns: a pointwise product over the input pixels.
                let cuts = conv_parts(cols, parts, kernels::pixel_tile(kind));
                let work: Vec<_> = cuts.iter().zip(cut(&mut s.acc, cuts.iter().map(|p| p.pixels.len() * cout))).collect();
                self.split(&s.lanes, work, |(p, a), l| kernels::accumulate(isa, &x[p.from..], &p.g, zp, kind, &mut l.rows, a));
                // Their scatter into the output, by output planes.
                let cout = cout / g.taps();
                let plane = g.output[1] * g.output[2] * cout;
                let rs = ranges(g.output[0], parts, 1);
                let columns = &s.acc;
                let work: Vec<_> = rs.iter().cloned().zip(cut(&mut s.acc2, rs.iter().map(|r| r.len() * plane))).collect();
                self.split(&s.lanes, work, |(r, a), _| volume::scatter_columns(columns, g, cout, col_offset, r, a));
                if let (Some(r), Some(out)) = (requant, out) {
                    self.requantize_sums(&s.lanes, &s.acc2[..layout.pixels() * cout], cout, r, out);
                }
            }
            ConvLayout::SubPixel(sp) => {
                // The sub-conv into `acc`; requantised as they are and shuffled as bytes,
                // or shuffled into `acc2` by output planes.
                self.conv(s, src, &sp.inner, kind, sp.inner_macs, None);
                if let (Some(r), Some(out)) = (requant, out) {
                    let sums = &s.acc[..sp.inner.pixels() * sp.offset.len()];
                    self.sub_pixel_bytes(&s.lanes, sp, sums, &sp.sub_requant(r), None, out);
                    return;
                }
                let g = &sp.g;
                let plane = g.output[1] * g.output[2] * sp.cout;
                let rs = ranges(g.output[0], parts, 1);
                let sums = &s.acc;
                let work: Vec<_> = rs.iter().cloned().zip(cut(&mut s.acc2, rs.iter().map(|r| r.len() * plane))).collect();
                self.split(&s.lanes, work, |(r, a), _| sp.shuffle(sums, r, a));
            }
        }
    }

    /// A conv as a pointwise product on rows gathered a run at a time: its `pixels`
    /// outputs in `parts` ranges over the pool, each range in runs of `run(v, end)`
    /// outputs from v; `gather(run, lane's buffer)` writes a run's rows and returns
    /// their pointwise geometry. Each run is requantised into `out` when given, else
    /// its int32 sums go to `acc` (`cout` channels an output, both from the start).
    #[allow(clippy::too_many_arguments)]
    fn on_gathered_rows(
        &self,
        (lanes, acc): (&[Mutex<Lane>], &mut [i32]),
        (pixels, parts, cout): (usize, usize, usize),
        (kind, zp): (&ConvKind, u8),
        out: Option<(&Requant, &mut [u8])>,
        run: impl Fn(usize, usize) -> usize + Sync,
        gather: impl Fn(Range<usize>, &mut [u8]) -> ConvGeometry + Sync,
    ) {
        let isa = self.isa;
        let (requant, out) = out.map_or((None, None), |(r, o)| (Some(r), Some(o)));
        let rs = ranges(pixels, parts, PIXEL_ALIGN);
        let lens = || rs.iter().map(|r| r.len() * cout);
        let outs = outs_for(out, lens());
        let work: Vec<_> = rs.iter().zip(cut(acc, lens())).zip(outs).collect();
        self.split(lanes, work, |((r, a), mut o), l| {
            let mut v = r.start;
            while v < r.end {
                let n = run(v, r.end);
                let pg = gather(v..v + n, &mut l.gather);
                let span = (v - r.start) * cout..(v - r.start + n) * cout;
                match (requant, o.as_deref_mut()) {
                    (Some(rq), Some(o)) => {
                        kernels::conv(isa, &l.gather, &pg, zp, kind, rq, &mut l.rows, &mut a[span.clone()], &mut o[span])
                    }
                    _ => kernels::accumulate(isa, &l.gather, &pg, zp, kind, &mut l.rows, &mut a[span]),
                }
                v += n;
            }
        });
    }

    /// A conv on its input padded once into `s.planar` (`planes` planes of `plane_len`
    /// bytes, made by `pad` over the pool too: a 32³ window's padding is a tenth of its
    /// conv), then its `voxels` in runs over the pool (`parts` of them, `cout` channels
    /// each): `conv(planar, run, out, acc)` writes a run's bytes into `out` when the
    /// conv is requantised, else its sums into `acc` (both from the run's start).
    #[allow(clippy::type_complexity)]
    fn on_padded_planes(
        &self,
        (lanes, planar, acc): (&[Mutex<Lane>], &mut [u8], &mut [i32]),
        (planes, plane_len): (usize, usize),
        pad: impl Fn(Range<usize>, &mut [u8]) + Sync,
        (voxels, parts, cout): (usize, usize, usize),
        out: Option<&mut [u8]>,
        conv: impl Fn(&[u8], Range<usize>, Option<&mut [u8]>, &mut [i32]) + Sync,
    ) {
        let len = planes * plane_len;
        let rs = ranges(planes, self.parts(len as u64, self.min_part.1), 1);
        let work: Vec<_> = rs.iter().cloned().zip(cut(&mut planar[..len], rs.iter().map(|r| r.len() * plane_len))).collect();
        self.split(lanes, work, |(r, o), _| pad(r, o));
        // The whole scratch: the kernels read past the planes into its slack.
        let planar = &*planar;
        let rs = ranges(voxels, parts, PIXEL_ALIGN);
        let lens = || rs.iter().map(|r| r.len() * cout);
        let outs = outs_for(out, lens());
        let work: Vec<_> = rs.iter().zip(cut(acc, lens())).zip(outs).collect();
        self.split(lanes, work, |((r, a), o), _| conv(planar, r.clone(), o, a));
    }

    /// A sub-pixel conv's output bytes from its sub-conv's sums (`sums`: [sub voxels]
    /// [classes x cout], zp Σw still in them) and requantisation per sub channel
    /// ([`subpixel::SubPixel::sub_requant`]; with `neg`, a PReLU's negative side and
    /// the output's zero point): parts of sub planes over the pool, each plane
    /// requantised into the lane's buffer and placed at its output planes (one job for
    /// both steps, and bytes shuffled instead of int32 sums).
    fn sub_pixel_bytes(
        &self,
        lanes: &[Mutex<Lane>],
        sp: &subpixel::SubPixel,
        sums: &[i32],
        pos: &Requant,
        neg: Option<(&Requant, u8)>,
        out: &mut [u8],
    ) {
        let [od, oh, ow] = sp.g.output;
        let wide = sp.offset.len();
        let (sz, plane, out_plane) = (sp.g.stride[0], sp.sub[1] * sp.sub[2] * wide, oh * ow * sp.cout);
        let rs = ranges(sp.sub[0], self.parts(out.len() as u64, self.min_part.1), 1);
        let outs = cut(out, rs.iter().map(|r| ((r.end * sz).min(od) - (r.start * sz).min(od)) * out_plane));
        let isa = self.isa;
        self.split(lanes, rs.into_iter().zip(outs).collect(), |(r, o), l| {
            let bytes = &mut l.rows[..plane];
            for qz in r.clone() {
                let acc = &sums[qz * plane..][..plane];
                match neg {
                    None => kernels::requantize(isa, acc, wide, pos, bytes),
                    Some((neg, zp)) => kernels::requantize_two_sided(isa, acc, wide, pos, neg, zp, bytes),
                }
                let at = ((qz * sz).min(od) - (r.start * sz).min(od)) * out_plane;
                sp.place_bytes(bytes, qz, &mut o[at..]);
            }
        });
    }

    /// Exact int32 sums [pixels][cout] requantised into `out`, over the pool.
    fn requantize_sums(&self, lanes: &[Mutex<Lane>], sums: &[i32], cout: usize, r: &Requant, out: &mut [u8]) {
        let n = sums.len() / cout;
        let rs = ranges(n, self.parts((n * cout) as u64, self.min_part.1), PIXEL_ALIGN);
        let work: Vec<_> = rs.iter().zip(cut(out, rs.iter().map(|r| r.len() * cout))).collect();
        self.split(lanes, work, |(px, o), _| kernels::requantize(self.isa, &sums[px.start * cout..px.end * cout], cout, r, o));
    }
}

/// `out` cut like the sums when the conv is requantised, else no outputs.
fn outs_for(out: Option<&mut [u8]>, lens: impl Iterator<Item = usize>) -> Vec<Option<&mut [u8]>> {
    match out {
        Some(o) => cut(o, lens).into_iter().map(Some).collect(),
        None => lens.map(|_| None).collect(),
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
