//! Rule: `Relu`, `Min` (a bound, per channel or not), `Clip` after a pending conv
//! narrow its output bounds (fused as a clamp); after a u8 tensor's view they (and
//! `PRelu` with one slope or one per channel, a U-Net's activation) build a
//! per-channel lookup table of 256 entries at the `QuantizeLinear`, computed with the
//! same float operations, so it is exact. A table that only clamps (the activation
//! of a conv whose output was quantised on the activation's own grid first, as the
//! converter and ONNX Runtime write ReLU6 chains) on a conv's output that nothing else
//! reads narrows that conv's clamp instead: clamp(clamp(x, a, b), c, d) is
//! clamp(x, max(a, c), min(b, d)), the same bytes without a pass over the tensor.

use edgemed_onnx::pb;

use super::{input, output, Compiler, Val};
use crate::error::Result;
use crate::float::{self, FloatOp, Operand};
use crate::kernels;
use crate::ndarray::{ArrayD, IxDyn};
pub(super) use crate::plan::MapStep;
use crate::plan::{channel_value, Op, QTensor, Step};

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
            // One slope, or one per channel shaped to broadcast along axis 1 only.
            "PRelu" => match (self.konst(inp(1)), self.shape_of(inp(0))) {
                (Some(s), _) if s.data.len() == 1 => MapStep::PRelu(s.data),
                (Some(s), Ok(shape)) if per_channel_shape(&s.shape, &shape) => MapStep::PRelu(s.data),
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
        // Per-channel values (Min's bounds, PRelu's slopes) must be one or one per channel.
        let fits = |c: usize| step.per_channel().is_none_or(|b| b.len() == 1 || b.len() == c);
        match v {
            Some(Val::PendingConv { mut conv }) if single_use => {
                let cout = conv.mult.len();
                match &step {
                    MapStep::Relu => conv.lo.iter_mut().for_each(|l| *l = l.max(0.0)),
                    MapStep::Min(b) if b.len() == 1 || b.len() == cout => {
                        conv.hi.iter_mut().enumerate().for_each(|(c, h)| *h = h.min(channel_value(b, c)))
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
                if !fits(self.tensors[t].c) {
                    return Ok(false);
                }
                let alone = single_use && self.only_reader_of(t, inp(0));
                self.vals.insert(out, Val::PendingMap { src: t, steps: vec![step], alone });
                Ok(true)
            }
            // After an add: one clamp of its output bytes, so per-tensor bounds only.
            Some(Val::PendingAdd { a, b, mut steps }) if single_use => {
                if matches!(&step, MapStep::PRelu(_)) || !fits(1) {
                    return Ok(false);
                }
                steps.push(step);
                self.vals.insert(out, Val::PendingAdd { a, b, steps });
                Ok(true)
            }
            // After an instance norm: one more step of its tables.
            Some(Val::PendingNorm { src, scale, bias, eps, mut steps }) if single_use => {
                if !fits(self.tensors[src].c) {
                    return Ok(false);
                }
                steps.push(step);
                self.vals.insert(out, Val::PendingNorm { src, scale, bias, eps, steps });
                Ok(true)
            }
            Some(Val::PendingConvNorm { conv, scale, bias, eps, mut steps }) if single_use => {
                if !fits(conv.mult.len()) {
                    return Ok(false);
                }
                steps.push(step);
                self.vals.insert(out, Val::PendingConvNorm { conv, scale, bias, eps, steps });
                Ok(true)
            }
            Some(Val::PendingMap { src, mut steps, alone }) if single_use => {
                if !fits(self.tensors[src].c) {
                    return Ok(false);
                }
                steps.push(step);
                self.vals.insert(out, Val::PendingMap { src, steps, alone });
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Whether `view` (a DequantizeLinear of tensor `t`, read once) is the only way to
    /// `t`: every other name of `t` is read only by DequantizeLinears, and there is one.
    fn only_reader_of(&self, t: usize, view: &str) -> bool {
        let names: Vec<&String> = self.vals.iter().filter(|(_, v)| matches!(v, Val::Int(x) if *x == t)).map(|(k, _)| k).collect();
        let others: usize = names.iter().filter(|n| n.as_str() != view).map(|n| self.uses.get(n.as_str()).copied().unwrap_or(0)).sum();
        // The QuantizeLinear's output feeds this view's DequantizeLinear and nothing else.
        names.len() == 2 && others == 1
    }

    /// `steps` on the view of tensor `src`, quantised with (s, z): a table per channel,
    /// or, where the table only clamps a conv's output that nothing else reads, that
    /// conv's clamp narrowed.
    pub(super) fn lookup_table(&mut self, src: usize, steps: &[MapStep], s: f32, z: u8, alone: bool) -> usize {
        let st = self.tensors[src];
        let table = self.table(src, steps, s, z);
        if alone && st.scale == s && st.zp == z && self.narrow_conv_clamp(src, &table) {
            return src;
        }
        let dst = self.new_tensor(QTensor { scale: s, zp: z, ..st }, self.shapes[src].clone());
        self.steps.push(Step::Int(Op::Lut { src, dst, table }));
        dst
    }

    /// Narrows the clamp of the conv step writing `t` to `table`'s, when each channel's
    /// table is q -> clamp(q, lo, hi) and the intervals overlap; false otherwise.
    fn narrow_conv_clamp(&mut self, t: usize, table: &[u8]) -> bool {
        let Some(Step::Int(Op::Conv(conv))) = self.steps.iter_mut().rev().find(|s| s.tensor_destination() == Some(t)) else { return false };
        let c = conv.requant.lo.len();
        if table.len() != c * 256 {
            return false;
        }
        let mut bounds = Vec::with_capacity(c);
        let mut checked: Option<&[u8]> = None;
        for (ch, t) in table.chunks(256).enumerate() {
            let (lo, hi) = (t[0], t[255]);
            // Channels with shared steps have the same bytes (see `table`): checked once.
            if checked != Some(t) && !(0..256).all(|q| t[q] == (q as u8).clamp(lo, hi)) {
                return false;
            }
            checked = Some(t);
            let (nlo, nhi) = (conv.requant.lo[ch].max(lo), conv.requant.hi[ch].min(hi));
            if nlo > nhi {
                return false;
            }
            bounds.push((nlo, nhi));
        }
        for (ch, (lo, hi)) in bounds.into_iter().enumerate() {
            conv.requant.lo[ch] = lo;
            conv.requant.hi[ch] = hi;
        }
        true
    }

    /// The per-channel table of `steps` on tensor `src`'s values, quantised with (s, z):
    /// entry (c, q) = Q(steps(deq(q), c)), Q = [`kernels::quantize_u8`]. A model's
    /// activations make most of its tables (ReLU6s after cross-layer equalisation have
    /// a bound per channel), and evaluating every entry in floats took 40% of the
    /// bundled model's start-up on x86, more on a small core without fast floats or
    /// under an emulator. So:
    /// - steps with one value for all channels: one channel's 256 bytes, copied;
    /// - clamps only (ReLU, Min, Clip): Q is non-decreasing (a positive scale's
    ///   division, rounding and the clamp to 0..255 all are), so
    ///   Q(min(v, b)) = min(Q(v), Q(b)) and Q(max(v, a)) = max(Q(v), Q(a)) exactly, and
    ///   each channel's table is the channel-free Q(deq(q)) clamped in bytes. NaN
    ///   bounds (which `f32::min` ignores) take the float path;
    /// - otherwise (per-channel PReLU slopes: not monotone) every entry in floats.
    fn table(&self, src: usize, steps: &[MapStep], s: f32, z: u8) -> Vec<u8> {
        map_table(self.tensors[src], steps, s, z)
    }

    /// `steps` on the view of tensor `src` as float ops, for a float op that reads them.
    pub(super) fn map_to_float(&mut self, src: usize, steps: Vec<MapStep>, name: &str) -> Result<usize> {
        let f = self.dequantised(src);
        self.steps_in_float(f, self.shapes[src].len(), steps, name)
    }

    /// `steps` on float value `f` (of rank `rank`) as float ops.
    pub(super) fn steps_in_float(&mut self, mut f: usize, rank: usize, steps: Vec<MapStep>, name: &str) -> Result<usize> {
        for s in steps {
            let scalar = |v: f32| Operand::Const(ArrayD::from_elem(IxDyn(&[]), v));
            let (op, extra) = match s {
                MapStep::Relu => (FloatOp::Relu, vec![]),
                MapStep::Clip(lo, hi) => (FloatOp::Clip, vec![scalar(lo), scalar(hi)]),
                MapStep::Min(b) if b.len() == 1 => (FloatOp::Binary(float::Binary::Min), vec![scalar(b[0])]),
                MapStep::Min(b) => (FloatOp::Binary(float::Binary::Min), vec![per_channel(b, rank)]),
                MapStep::PRelu(s) if s.len() == 1 => (FloatOp::PRelu, vec![scalar(s[0])]),
                MapStep::PRelu(s) => (FloatOp::PRelu, vec![per_channel(s, rank)]),
            };
            let inputs = std::iter::once(Operand::Value(f)).chain(extra).collect();
            f = self.push_float(op, inputs, name)?;
        }
        Ok(f)
    }
}

/// Whether a constant of `shape` broadcasts onto a value of `of` ([1, C, ...]) along
/// the channel axis alone: [C, 1, ...] one rank lower, or [1, C, 1, ...].
fn per_channel_shape(shape: &[usize], of: &[usize]) -> bool {
    let (r, c) = (of.len(), of.get(1).copied().unwrap_or(0));
    let ones = |s: &[usize]| s.iter().all(|&d| d == 1);
    match shape.len() {
        n if n + 1 == r => shape[0] == c && ones(&shape[1..]),
        n if n == r => shape[0] == 1 && shape[1] == c && ones(&shape[2..]),
        _ => false,
    }
}

/// Per-channel values as a [1, C, 1, ...] constant of rank `rank`.
fn per_channel(v: Vec<f32>, rank: usize) -> Operand {
    let mut shape = vec![1; rank];
    shape[1] = v.len();
    Operand::Const(ArrayD::from_shape_vec(IxDyn(&shape), v).expect("sized"))
}

/// [`Compiler::table`]'s bytes: entry (c, q) = Q(steps(deq(q), c)) for tensor `st`'s
/// channels, Q quantising with (s, z).
fn map_table(st: QTensor, steps: &[MapStep], s: f32, z: u8) -> Vec<u8> {
    let quantize = |v: f32| kernels::quantize_u8(v, s, z);
    let in_floats = |c: usize| (0..256usize).map(move |q| quantize(steps.iter().fold(st.deq(q as u8), |v, step| step.apply(v, c))));
    if steps.iter().all(|step| step.per_channel().is_none_or(|b| b.len() == 1)) {
        return in_floats(0).collect::<Vec<u8>>().repeat(st.c);
    }
    let clamps_only = s > 0.0
        && s.is_finite()
        && steps.iter().all(|step| match step {
            MapStep::Relu => true,
            MapStep::Min(b) => !b.iter().any(|v| v.is_nan()),
            MapStep::Clip(lo, hi) => !lo.is_nan() && !hi.is_nan(),
            MapStep::PRelu(_) => false,
        });
    if !clamps_only {
        return (0..st.c).flat_map(in_floats).collect();
    }
    let base: Vec<u8> = (0..256usize).map(|q| quantize(st.deq(q as u8))).collect();
    let mut table = Vec::with_capacity(st.c * 256);
    for c in 0..st.c {
        // The channel's steps as byte bounds: max with `lo`, then min with `hi`.
        let (mut lo, mut hi) = (0u8, 255u8);
        for step in steps {
            let (a, b) = match step {
                MapStep::Relu => (quantize(0.0), 255),
                MapStep::Min(b) => (0, quantize(channel_value(b, c))),
                MapStep::Clip(a, b) => (quantize(*a), quantize(*b)),
                MapStep::PRelu(_) => unreachable!("not a clamp"),
            };
            // clamp(clamp(x, lo, hi), a, b) as one (lo, hi): max then min, as
            // `MapStep::apply` does (crossed bounds give b).
            lo = lo.max(a).min(b);
            hi = hi.max(a).min(b);
        }
        table.extend(base.iter().map(|&x| x.max(lo).min(hi)));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testgen::Lcg;

    /// The same bytes as every entry evaluated in floats, on random tensors and
    /// chains of steps: per-channel and shared bounds, crossed and infinite Clips,
    /// NaN bounds, scales small and large, PReLU slopes of both signs (the float path).
    #[test]
    fn tables_are_the_float_steps_quantised() {
        let mut r = Lcg::new(23);
        let mut bytes = 0;
        for case in 0..1000 {
            let c = 1 + r.below(9);
            let st = QTensor { c, h: 1, w: 1, scale: r.pick(&[0.003, 0.02, 0.1, 0.7]), zp: r.u8() };
            // Bounds inside the tensor's range mostly (so the steps cut its values),
            // some outside it, some infinite or NaN.
            let value = |r: &mut Lcg| match r.below(14) {
                0 => f32::INFINITY,
                1 => f32::NEG_INFINITY,
                2 => 0.0,
                3 if case % 10 == 0 => f32::NAN,
                4 => (r.below(2001) as f32 - 1000.0) * st.scale,
                _ => (r.u8() as f32 - st.zp as f32 + (r.below(9) as f32 - 4.0) / 8.0) * st.scale,
            };
            let per = |r: &mut Lcg| if r.coin() { 1 } else { c };
            let steps: Vec<MapStep> = (0..r.below(4))
                .map(|_| match r.below(if case % 4 == 0 { 4 } else { 3 }) {
                    0 => MapStep::Relu,
                    1 => MapStep::Min((0..per(&mut r)).map(|_| value(&mut r)).collect()),
                    2 => MapStep::Clip(value(&mut r), value(&mut r)),
                    _ => MapStep::PRelu((0..per(&mut r)).map(|_| (r.below(41) as f32 - 20.0) / 10.0).collect()),
                })
                .collect();
            let (s, z) = (st.scale * r.pick(&[0.3, 0.5, 1.0, 1.7, 4.0]), r.u8());
            let table = map_table(st, &steps, s, z);
            assert_eq!(table.len(), c * 256);
            for ch in 0..c {
                for q in 0..=255u8 {
                    let v = steps.iter().fold(st.deq(q), |v, step| step.apply(v, ch));
                    assert_eq!(table[ch * 256 + q as usize], kernels::quantize_u8(v, s, z), "case {case}: {steps:?} channel {ch} byte {q}");
                }
            }
            let clamps = !steps.iter().any(|step| matches!(step, MapStep::PRelu(_)));
            bytes += (clamps && steps.iter().any(|step| step.per_channel().is_some_and(|b| b.len() > 1))) as usize;
        }
        assert!(bytes > 50, "{bytes} cases of per-channel clamps");
    }
}
