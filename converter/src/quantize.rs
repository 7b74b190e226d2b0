//! INT8 quantization into QDQ ONNX: symmetric int8 weights (per tensor, the
//! paper's setting, or per channel, scales shared within fields of N channels),
//! analytic bias correction of the error that weight rounding adds on average, and
//! u8 activations whose ranges come from the batch-norm statistics (data-free) or
//! from calibration inputs. What cannot be quantized stays FP32 and is listed.

use std::collections::HashMap;

use anyhow::{bail, Result};
use edgemed_onnx::pb;
use pb::tensor_proto::DataType;

use crate::clipped_normal::{ClippedNormal, Family};
use crate::graph::{Array, Graph};
use crate::passes::{layer_at, layers, set_weight_and_bias, share_within_fields, weight_and_bias, ChannelStats, Layer, Stats};

#[derive(Debug, Clone, PartialEq)]
pub enum Granularity {
    PerTensor,
    PerChannel,
}

/// A closed range of real values an activation tensor is quantized over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub lo: f32,
    pub hi: f32,
}

impl Range {
    fn union(self, o: Range) -> Range {
        Range { lo: self.lo.min(o.lo), hi: self.hi.max(o.hi) }
    }

    /// u8 affine parameters, the range widened to contain zero (ONNX requires an exact zero).
    pub fn to_u8(self) -> (f32, u8) {
        let (lo, hi) = (self.lo.min(0.0), self.hi.max(0.0));
        let scale = ((hi - lo) / 255.0).max(1e-8);
        let zp = (-lo / scale).round_ties_even().clamp(0.0, 255.0) as u8;
        (scale, zp)
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub granularity: Granularity,
    pub field_size: usize,
    pub bias_correction: bool,
    /// Activation ranges by value name; `None`: data-free from the statistics.
    pub calibrated: Option<HashMap<String, Range>>,
    /// Range of the model input when data-free (from the model's normalisation metadata).
    pub input_range: Range,
    /// How data-free ranges are chosen.
    pub range_rule: RangeRule,
}

/// The rule choosing a data-free activation range from per-channel statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RangeRule {
    /// Least expected quantization error of the channels' clipped distributions, of
    /// this family, with the batch norms' means and deviations ([`crate::clipped_normal`]).
    MinError(Family),
    /// beta +- this many |gamma| per channel, the widest over the channels.
    Sigmas(f32),
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub weights_quantized: usize,
    pub activations_quantized: usize,
    pub bias_corrected: usize,
    /// Nodes left in FP32, with the reason.
    pub left_fp32: Vec<String>,
}

/// Symmetric int8 with the range [-127, 127]; the scale per output channel when asked.
pub fn weight_scales(w: &Array, out_axis: usize, g: &Granularity, field: usize) -> Vec<f32> {
    let ranges = crate::passes::out_ranges(w, out_axis);
    let ranges = match g {
        Granularity::PerTensor => vec![ranges.iter().copied().fold(0f32, f32::max); ranges.len()],
        Granularity::PerChannel => share_within_fields(&ranges, field),
    };
    ranges.into_iter().map(|r| if r > 0.0 { r / 127.0 } else { 1.0 }).collect()
}

fn quantize_weight(w: &Array, out_axis: usize, scales: &[f32]) -> (Vec<i8>, Array) {
    let inner: usize = w.shape[out_axis + 1..].iter().product();
    let n = w.shape[out_axis];
    let mut q = Vec::with_capacity(w.len());
    let mut deq = Vec::with_capacity(w.len());
    for (k, v) in w.data.iter().enumerate() {
        let s = scales[(k / inner) % n];
        let x = (v / s).round_ties_even().clamp(-127.0, 127.0);
        q.push(x as i8);
        deq.push(x * s);
    }
    (q, Array::new(w.shape.clone(), deq))
}

/// E[f(X)] for X ~ N(mu, sigma^2) and f the activation: identity, ReLU, or ReLU clipped at `hi`.
pub fn expected_activation(mu: f32, sigma: f32, lo: Option<f32>, hi: Option<f32>) -> f32 {
    let (mu, sigma) = (mu as f64, (sigma as f64).max(1e-12));
    let pdf = |z: f64| (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let cdf = |z: f64| 0.5 * (1.0 + libm::erf(z / std::f64::consts::SQRT_2));
    let e = match (lo, hi) {
        (None, _) => mu,
        (Some(a), None) => {
            let a = a as f64;
            let za = (a - mu) / sigma;
            // E[max(X, a)] = a P(X < a) + mu P(X > a) + sigma pdf(za)
            a * cdf(za) + mu * (1.0 - cdf(za)) + sigma * pdf(za)
        }
        (Some(a), Some(b)) => {
            let (a, b) = (a as f64, b as f64);
            let (za, zb) = ((a - mu) / sigma, (b - mu) / sigma);
            a * cdf(za) + mu * (cdf(zb) - cdf(za)) + sigma * (pdf(za) - pdf(zb)) + b * (1.0 - cdf(zb))
        }
    };
    e as f32
}

/// What feeds a layer's data input: a layer with statistics through an activation.
struct Source {
    stats: ChannelStats,
    lo: Option<f32>,
    /// Per-channel upper bound (ReLU6 or Relu + Min).
    hi: Option<Vec<f32>>,
}

fn source_of(g: &Graph, stats: &Stats, value: &str) -> Option<Source> {
    let mut v = value.to_string();
    let (mut lo, mut hi): (Option<f32>, Option<Vec<f32>>) = (None, None);
    for _ in 0..3 {
        if let Some(st) = stats.get(&v) {
            return Some(Source { stats: st.clone(), lo, hi });
        }
        let n = &g.nodes()[g.producer(&v)?];
        match n.op_type.as_str() {
            "Relu" => lo = Some(0.0),
            "Min" => {
                let (data, bound) = g.min_bound(n)?;
                hi = Some(g.constant(&bound)?.data);
                v = data;
                continue;
            }
            "Clip" => {
                let (l, h) = g.clip_bounds(n);
                lo = Some(l);
                hi = (h < f32::MAX).then(|| vec![h]);
            }
            _ => return None,
        }
        v = n.input[0].clone();
    }
    None
}

/// beta +- k |gamma|, the widest over the channels.
fn sigma_range(st: &ChannelStats, k: f32) -> Range {
    Range {
        lo: st.beta.iter().zip(&st.gamma).map(|(b, s)| b - k * s).fold(f32::MAX, f32::min),
        hi: st.beta.iter().zip(&st.gamma).map(|(b, s)| b + k * s).fold(f32::MIN, f32::max),
    }
}

/// The minimum-error range of a value whose channels are `src`'s normals clipped by its activation.
fn min_error_range(src: &Source, family: Family) -> Option<Range> {
    let n = src.stats.beta.len();
    if src.stats.gamma.len() != n || src.hi.as_ref().is_some_and(|h| h.len() != 1 && h.len() != n) {
        return None;
    }
    let channels: Vec<ClippedNormal> = (0..n)
        .map(|c| ClippedNormal {
            mu: src.stats.beta[c] as f64,
            sigma: src.stats.gamma[c] as f64,
            lo: src.lo.map_or(f64::NEG_INFINITY, |v| v as f64),
            hi: src.hi.as_ref().map_or(f64::INFINITY, |h| if h.len() == 1 { h[0] } else { h[c] } as f64),
            family,
        })
        .collect();
    crate::clipped_normal::optimal_range(&channels).map(|(lo, hi)| Range { lo, hi })
}

/// Data-free range of every tensor we can bound, propagated in topological order.
pub fn data_free_ranges(g: &Graph, stats: &Stats, input_range: Range, rule: RangeRule) -> Result<HashMap<String, Range>> {
    let mut r: HashMap<String, Range> = HashMap::new();
    for i in &g.g().input {
        if g.initializer(&i.name).is_none() {
            r.insert(i.name.clone(), input_range);
        }
    }
    let order = g.topological_order()?;
    let derived = propagated_stats(g, stats, &order, input_range);
    for &i in &order {
        let n = &g.nodes()[i];
        let out = n.output[0].clone();
        let ins: Vec<Option<Range>> = n.input.iter().map(|x| r.get(x).copied()).collect();
        // Under the minimum-error rule, a value whose channels are a batch norm's
        // normals (through Relu / Clip / Min) gets its range from them directly.
        let min_error = match rule {
            RangeRule::MinError(family) => source_of(g, stats, &out).and_then(|src| min_error_range(&src, family)),
            RangeRule::Sigmas(_) => None,
        };
        let sigmas = match rule {
            RangeRule::Sigmas(k) => k,
            RangeRule::MinError(_) => 6.0,
        };
        let range = if min_error.is_some() {
            min_error
        } else if let Some(st) = stats.get(&out) {
            Some(sigma_range(st, sigmas))
        } else {
            match (n.op_type.as_str(), ins.first().copied().flatten()) {
                ("Relu", Some(x)) => Some(Range { lo: x.lo.max(0.0), hi: x.hi.max(0.0) }),
                ("Clip", Some(x)) => {
                    let (lo, hi) = g.clip_bounds(n);
                    Some(Range { lo: x.lo.max(lo), hi: x.hi.min(hi) })
                }
                ("Min", Some(x)) => g.min_bound(n).and_then(|(_, bound)| g.constant(&bound)).map(|b| Range {
                    lo: x.lo.min(b.data.iter().copied().fold(f32::MAX, f32::min)),
                    hi: x.hi.min(b.data.iter().copied().fold(f32::MIN, f32::max)),
                }),
                ("Add", Some(a)) => ins.get(1).copied().flatten().map(|b| Range { lo: a.lo + b.lo, hi: a.hi + b.hi }),
                // PReLU keeps x >= 0 and scales x < 0 by each channel's slope.
                ("PRelu", Some(x)) => n.input.get(1).and_then(|a| g.constant(a).or_else(|| g.eval_constant(a, 8))).map(|slopes| {
                    let (neg_lo, neg_hi) = (x.lo.min(0.0), x.hi.min(0.0));
                    slopes
                        .data
                        .iter()
                        .flat_map(|a| [a * neg_lo, a * neg_hi])
                        .fold(Range { lo: x.lo.max(0.0), hi: x.hi.max(0.0) }, |r, v| Range { lo: r.lo.min(v), hi: r.hi.max(v) })
                }),
                // A 0/1 mask keeps values and adds zeros.
                ("Mul", Some(x))
                    if n.input.get(1).and_then(|m| g.constant(m)).is_some_and(|m| m.data.iter().all(|v| *v == 0.0 || *v == 1.0)) =>
                {
                    Some(x.union(Range { lo: 0.0, hi: 0.0 }))
                }
                (
                    "Reshape" | "Flatten" | "ReduceMax" | "ReduceMean" | "MaxPool" | "GlobalAveragePool" | "GlobalMaxPool" | "AveragePool"
                    | "Transpose" | "Squeeze" | "Unsqueeze" | "Identity",
                    Some(x),
                ) => Some(x),
                _ => None,
            }
        };
        // A value no batch norm describes and no rule above bounds (a conv without batch
        // norm, an Add of one): the statistics propagated to it, when they reach it.
        let range = range.or_else(|| {
            let st = derived.get(&out)?;
            let src = Source { stats: st.clone(), lo: None, hi: None };
            match rule {
                RangeRule::MinError(family) => min_error_range(&src, family),
                RangeRule::Sigmas(k) => Some(sigma_range(st, k)),
            }
        });
        if let Some(range) = range {
            r.insert(out, range);
        }
    }
    Ok(r)
}

/// Per-channel mean and deviation of values the batch norms do not describe,
/// propagated from those they do, in topological order: through activations (the
/// moments of the activated normal, by quadrature), layers without a batch norm (mean
/// W mu + b, variance sum of w^2 sigma^2: inputs taken as independent), instance
/// normalisations (mean: the bias, deviation: |scale|, exactly), spatial crops,
/// Add (sums) and channel Concat; the model input as uniform over its range. Only a fallback where
/// nothing else bounds a value.
fn propagated_stats(g: &Graph, stats: &Stats, order: &[usize], input_range: Range) -> Stats {
    let mut derived = Stats::new();
    // The model input, channel by channel: uniform over its range.
    for i in &g.g().input {
        let channels = crate::graph::value_dims(i).and_then(|d| d.get(1).copied()).filter(|c| *c > 0);
        if let (true, Some(c)) = (g.initializer(&i.name).is_none(), channels) {
            let (mean, sd) = ((input_range.lo + input_range.hi) / 2.0, (input_range.hi - input_range.lo) / 12f32.sqrt());
            derived.insert(i.name.clone(), ChannelStats { beta: vec![mean; c], gamma: vec![sd; c] });
        }
    }
    for &i in order {
        let n = &g.nodes()[i];
        let Some(out) = n.output.first() else { continue };
        if stats.contains_key(out) {
            continue;
        }
        let get = |v: &str| stats.get(v).or_else(|| derived.get(v)).cloned();
        let st = match n.op_type.as_str() {
            // A spatial crop (BagNet's residuals cropped to the body) keeps every channel's
            // statistics; a slice that may cut channels does not.
            "Slice" | "Identity" => {
                let Some(x) = n.input.first().and_then(|v| get(v)) else { continue };
                if n.op_type == "Slice" {
                    let axes = n.input.get(3).filter(|a| !a.is_empty()).and_then(|a| g.constant(a).or_else(|| g.eval_constant(a, 8)));
                    if !axes.is_some_and(|a| !a.data.is_empty() && a.data.iter().all(|&v| v >= 2.0)) {
                        continue;
                    }
                }
                x
            }
            "Relu" | "LeakyRelu" | "PRelu" | "Clip" => {
                let Some(x) = n.input.first().and_then(|v| get(v)) else { continue };
                let slopes: Vec<f32> = match n.op_type.as_str() {
                    "Relu" | "Clip" => vec![0.0],
                    "LeakyRelu" => vec![crate::graph::attr_f(n, "alpha", 0.01)],
                    _ => match n.input.get(1).and_then(|a| g.constant(a).or_else(|| g.eval_constant(a, 8))) {
                        Some(a) => a.data,
                        None => continue,
                    },
                };
                let (lo, hi) = if n.op_type == "Clip" { g.clip_bounds(n) } else { (f32::NEG_INFINITY, f32::INFINITY) };
                // A Clip with NaN or crossed bounds describes nothing (found by fuzzing:
                // clamp panicked on a NaN bound; kept in fuzz/regressions/converter_passes).
                if lo.partial_cmp(&hi).is_none_or(|o| o.is_gt()) {
                    continue;
                }
                let c = x.beta.len();
                if slopes.len() != 1 && slopes.len() != c {
                    continue;
                }
                let f = |ch: usize, v: f64| {
                    let a = slopes[if slopes.len() == 1 { 0 } else { ch }] as f64;
                    let y = if v >= 0.0 || n.op_type == "Clip" { v } else { a * v };
                    y.clamp(lo as f64, hi as f64).max(if n.op_type == "Relu" { 0.0 } else { f64::NEG_INFINITY })
                };
                let (beta, gamma) = (0..c).map(|ch| activated_moments(x.beta[ch], x.gamma[ch], |v| f(ch, v))).unzip();
                ChannelStats { beta, gamma }
            }
            "Conv" | "ConvTranspose" | "Gemm" => {
                let Some(l) = layer_at(g, i) else { continue };
                let Some(x) = get(&n.input[0]).filter(|x| x.beta.len() == l.in_channels) else { continue };
                let Ok((w, b)) = weight_and_bias(g, &l) else { continue };
                let mut mean: Vec<f64> = b.iter().map(|v| *v as f64).collect();
                let mut var = vec![0f64; l.out_channels];
                crate::passes::for_each_index(&w, |idx, v| {
                    let (o, k) = (l.out_of(idx), l.in_of(idx));
                    mean[o] += v as f64 * x.beta[k] as f64;
                    var[o] += (v as f64).powi(2) * (x.gamma[k] as f64).powi(2);
                });
                ChannelStats { beta: mean.iter().map(|v| *v as f32).collect(), gamma: var.iter().map(|v| v.sqrt() as f32).collect() }
            }
            // Instance normalisation makes each channel's values have mean 0 and deviation
            // 1 over the volume (up to eps), whatever its input, then scales and shifts
            // them: its output's mean is the bias and its deviation |scale|, exactly (a
            // 3-D BagNet's and a MONAI U-Net's normalisation, where no batch norm says).
            "InstanceNormalization" => {
                let param = |i: usize| n.input.get(i).and_then(|a| g.constant(a).or_else(|| g.eval_constant(a, 8)));
                let (Some(scale), Some(bias)) = (param(1), param(2)) else { continue };
                if scale.data.len() != bias.data.len() || scale.data.iter().chain(&bias.data).any(|v| !v.is_finite()) {
                    continue;
                }
                ChannelStats { beta: bias.data, gamma: scale.data.iter().map(|s| s.abs()).collect() }
            }
            "Add" if n.input.len() == 2 => {
                let (Some(a), Some(b)) = (get(&n.input[0]), get(&n.input[1])) else { continue };
                if a.beta.len() != b.beta.len() {
                    continue;
                }
                ChannelStats {
                    beta: a.beta.iter().zip(&b.beta).map(|(x, y)| x + y).collect(),
                    gamma: a.gamma.iter().zip(&b.gamma).map(|(x, y)| (x * x + y * y).sqrt()).collect(),
                }
            }
            "Concat" if matches!(crate::graph::attr_i(n, "axis", 1), 1 | -3 | -4 | -5) => {
                let parts: Option<Vec<ChannelStats>> = n.input.iter().map(|v| get(v)).collect();
                let Some(parts) = parts else { continue };
                ChannelStats {
                    beta: parts.iter().flat_map(|p| p.beta.iter().copied()).collect(),
                    gamma: parts.iter().flat_map(|p| p.gamma.iter().copied()).collect(),
                }
            }
            _ => continue,
        };
        derived.insert(out.clone(), st);
    }
    derived
}

/// Mean and deviation of f(X), X ~ N(mu, sigma^2), by a 257-point quadrature over mu +- 8 sigma.
fn activated_moments(mu: f32, sigma: f32, f: impl Fn(f64) -> f64) -> (f32, f32) {
    let (mu, sigma) = (mu as f64, (sigma as f64).abs().max(1e-12));
    let (mut m0, mut m1, mut m2) = (0f64, 0f64, 0f64);
    for k in 0..257 {
        let z = -8.0 + 16.0 * k as f64 / 256.0;
        let p = (-0.5 * z * z).exp();
        let y = f(mu + sigma * z);
        m0 += p;
        m1 += p * y;
        m2 += p * y * y;
    }
    let mean = m1 / m0;
    (mean as f32, ((m2 / m0 - mean * mean).max(0.0)).sqrt() as f32)
}

fn qdq_pair(g: &mut Graph, value: &str, scale: f32, zp: u8) {
    let s = g.fresh_name(&format!("{value}.scale"));
    let z = g.fresh_name(&format!("{value}.zero_point"));
    g.add_tensor(pb::TensorProto {
        name: s.clone(),
        data_type: DataType::Float as i32,
        raw_data: scale.to_le_bytes().to_vec(),
        ..Default::default()
    });
    g.add_tensor(pb::TensorProto { name: z.clone(), data_type: DataType::Uint8 as i32, raw_data: vec![zp], ..Default::default() });
    let q = g.fresh_name(&format!("{value}.q"));
    let dq = g.fresh_name(&format!("{value}.dq"));
    g.replace_uses(value, &dq);
    let node = |op: &str, input: Vec<String>, output: String| pb::NodeProto {
        name: output.clone(),
        op_type: op.into(),
        input,
        output: vec![output],
        ..Default::default()
    };
    g.g_mut().node.push(node("QuantizeLinear", vec![value.into(), s.clone(), z.clone()], q.clone()));
    g.g_mut().node.push(node("DequantizeLinear", vec![q, s, z], dq));
}

/// For `value` = act(layer(x)) with act a chain of Relu / Min(constant) / Clip, the layer's output.
fn activation_root(g: &Graph, value: &str) -> Option<String> {
    let mut v = value.to_string();
    let mut through_act = false;
    loop {
        let n = &g.nodes()[g.producer(&v)?];
        match n.op_type.as_str() {
            "Relu" | "Clip" => {}
            "Min" if g.min_bound(n).is_some() => {}
            "Conv" | "Gemm" if through_act && g.single_use(&v) => return Some(v),
            _ => return None,
        }
        through_act = true;
        let data = n.input.iter().find(|i| g.initializer(i).is_none() && g.constant(i).is_none())?.clone();
        if !g.single_use(&data) {
            return None;
        }
        v = data;
    }
}

/// The value `v` is moved from: back through Reshape, Transpose, Squeeze, Unsqueeze,
/// Flatten and Identity nodes whose output only they read.
fn movement_source(g: &Graph, v: &str) -> String {
    let mut v = v.to_string();
    while let Some(n) = g.producer(&v).map(|i| &g.nodes()[i]) {
        let moves = matches!(n.op_type.as_str(), "Reshape" | "Transpose" | "Squeeze" | "Unsqueeze" | "Flatten" | "Identity");
        if !moves || !g.single_use(&v) || n.input.is_empty() {
            break;
        }
        v = n.input[0].clone();
    }
    v
}

/// Values computed from tensor shapes and constants alone (Shape or Size, then
/// Gather, Cast, Div, Unsqueeze, Concat, ... on them): the dynamic-batch plumbing of
/// torch's exporters, which the runtime folds; never activations.
fn shape_values(g: &Graph) -> Result<std::collections::HashSet<String>> {
    let mut set = std::collections::HashSet::new();
    for &i in &g.topological_order()? {
        let n = &g.nodes()[i];
        // Constant nodes count too: an Unsqueeze of two Constants is shape plumbing
        // even where the graph's evaluator does not fold it.
        let from_shapes = matches!(n.op_type.as_str(), "Shape" | "Size" | "Constant")
            || (!n.input.is_empty()
                && n.input
                    .iter()
                    .all(|v| v.is_empty() || set.contains(v) || g.initializer(v).is_some() || g.eval_constant(v, 8).is_some()));
        if from_shapes {
            set.extend(n.output.iter().cloned());
        }
    }
    Ok(set)
}

/// Quantizes weights (with bias correction) and activations in place.
pub fn quantize(g: &mut Graph, stats: &Stats, opts: &Options) -> Result<Report> {
    if g.opset() < 13 && opts.granularity == Granularity::PerChannel {
        bail!("per-channel quantization needs opset 13 or later (the model has opset {})", g.opset());
    }
    let mut report = Report::default();
    let ranges = match &opts.calibrated {
        Some(r) => r.clone(),
        None => data_free_ranges(g, stats, opts.input_range, opts.range_rule)?,
    };

    // Weights first, bias correction from the exact rounding error.
    let all: Vec<Layer> = layers(g);
    let mut dequantize_nodes = Vec::new();
    // Outputs of the layers whose weights are quantized.
    let mut quantized_layers: std::collections::HashSet<String> = Default::default();
    for l in all {
        // Indices shift as weights are rewritten, so each layer is found again by its output;
        // in a malformed graph (an output name written twice) it may be gone: left in float.
        let Some(mut l) = g.producer(&l.output).and_then(|i| layer_at(g, i)) else {
            log::warn!("{}: layer not found again after rewriting (duplicate output name?); left in float", l.output);
            continue;
        };
        let (w, mut b) = weight_and_bias(g, &l)?;
        let scales = weight_scales(&w, l.out_axis, &opts.granularity, opts.field_size);
        let (q, deq) = quantize_weight(&w, l.out_axis, &scales);
        if opts.bias_correction {
            let input = g.nodes()[l.node].input[0].clone();
            // Statistics and clip bounds that disagree on the channel count (a malformed
            // model) give no correction rather than a wrong one.
            let consistent = |src: &Source| {
                let n = src.stats.beta.len();
                src.stats.gamma.len() == n && src.hi.as_ref().is_none_or(|h| h.len() == 1 || h.len() == n)
            };
            if let Some(src) = source_of(g, stats, &input).filter(|s| consistent(s)) {
                let ex: Vec<f32> = (0..src.stats.beta.len())
                    .map(|c| {
                        expected_activation(
                            src.stats.beta[c],
                            src.stats.gamma[c],
                            src.lo,
                            src.hi.as_ref().map(|h| if h.len() == 1 { h[0] } else { h[c] }),
                        )
                    })
                    .collect();
                if ex.len() == l.in_channels {
                    // E[(W_q - W) x] per output channel, each weight's error times the
                    // expected value of the input channel it reads.
                    let mut shift = vec![0f32; b.len()];
                    let mut k = 0;
                    crate::passes::for_each_index(&w, |idx, v| {
                        shift[l.out_of(idx)] += (deq.data[k] - v) * ex[l.in_of(idx)];
                        k += 1;
                    });
                    crate::passes::uniform_within_fields(&mut shift, opts.field_size);
                    b.iter_mut().zip(&shift).for_each(|(b, s)| *b -= s);
                    set_weight_and_bias(g, &mut l, &w, &b);
                    report.bias_corrected += 1;
                }
            }
        }
        let base = if l.name.is_empty() { l.output.clone() } else { l.name.clone() };
        let qn = g.fresh_name(&format!("{base}.weight_q"));
        let sn = g.fresh_name(&format!("{base}.weight_scale"));
        let zn = g.fresh_name(&format!("{base}.weight_zero_point"));
        let dqn = g.fresh_name(&format!("{base}.weight_dq"));
        let per_tensor = opts.granularity == Granularity::PerTensor;
        let (scale_dims, scale_data): (Vec<i64>, Vec<f32>) =
            if per_tensor { (vec![], vec![scales[0]]) } else { (vec![scales.len() as i64], scales.clone()) };
        g.add_tensor(pb::TensorProto {
            name: qn.clone(),
            dims: w.shape.iter().map(|d| *d as i64).collect(),
            data_type: DataType::Int8 as i32,
            raw_data: q.iter().map(|x| *x as u8).collect(),
            ..Default::default()
        });
        g.add_tensor(pb::TensorProto {
            name: sn.clone(),
            dims: scale_dims.clone(),
            data_type: DataType::Float as i32,
            raw_data: scale_data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ..Default::default()
        });
        g.add_tensor(pb::TensorProto {
            name: zn.clone(),
            dims: scale_dims,
            data_type: DataType::Int8 as i32,
            raw_data: vec![0; scale_data.len()],
            ..Default::default()
        });
        let mut node = pb::NodeProto {
            name: dqn.clone(),
            op_type: "DequantizeLinear".into(),
            input: vec![qn, sn, zn],
            output: vec![dqn.clone()],
            ..Default::default()
        };
        if !per_tensor {
            node.attribute.push(pb::AttributeProto {
                name: "axis".into(),
                r#type: pb::attribute_proto::AttributeType::Int as i32,
                i: l.out_axis as i64,
                ..Default::default()
            });
        }
        dequantize_nodes.push(node);
        g.g_mut().node[l.node].input[1] = dqn;
        quantized_layers.insert(l.output.clone());
        report.weights_quantized += 1;
    }
    g.g_mut().node.extend(dequantize_nodes);

    // Convolutions and products whose weights could not be quantized stay float: say why.
    for n in g.nodes() {
        if matches!(n.op_type.as_str(), "Conv" | "ConvTranspose" | "Gemm" | "MatMul") && !quantized_layers.contains(&n.output[0]) {
            let why = match n.op_type.as_str() {
                "ConvTranspose" if crate::graph::attr_i(n, "group", 1) != 1 => "a grouped ConvTranspose",
                "MatMul" => "MatMul weights are not read as a layer (export the layer as Gemm)",
                "Gemm" if crate::graph::attr_i(n, "transA", 0) != 0 => "Gemm with transA",
                _ => "its weights are not constants",
            };
            report.left_fp32.push(format!("{} {:?} ({why})", n.op_type, n.name));
        }
    }

    // Activations: every float tensor entering a Conv, ConvTranspose, Gemm, Add or pooling op.
    let shapes = shape_values(g)?;
    let mut targets: Vec<String> = Vec::new();
    for n in g.nodes() {
        // A 0/1 mask (the circular mask of an equivariant head): its input and output,
        // so that the activations before it fuse into their conv and the mask is a table.
        if n.op_type == "Mul" && n.input.len() == 2 {
            let is_mask = |v: &String| g.constant(v).is_some_and(|m| m.data.iter().all(|x| *x == 0.0 || *x == 1.0));
            if let Some(data) = n.input.iter().find(|v| !is_mask(v)).filter(|_| n.input.iter().any(is_mask)) {
                for v in [data, &n.output[0]] {
                    if g.initializer(v).is_none() && !targets.contains(v) {
                        targets.push(v.clone());
                    }
                }
            }
            continue;
        }
        // A reduction (escnn's group pooling `view(b, F, N, h, w).amax(2)`, the dynamo
        // exporter's mean pooling) reads a u8 tensor through byte moves: the value
        // before the moves is quantized, and the reduction's output.
        let moved_from;
        let data_inputs: &[String] = match n.op_type.as_str() {
            "Conv" | "ConvTranspose" | "Gemm" | "GlobalAveragePool" | "AveragePool" | "MaxPool" => &n.input[..1],
            "Add" | "Concat" => &n.input[..],
            "ReduceMax" | "ReduceMean" if !n.input.is_empty() => {
                moved_from = [movement_source(g, &n.input[0])];
                &moved_from
            }
            _ => continue,
        };
        // A pooling op's output too: the engine pools u8 tensors into u8 tensors.
        let pooled = matches!(n.op_type.as_str(), "GlobalAveragePool" | "AveragePool" | "MaxPool" | "ReduceMax" | "ReduceMean")
            .then(|| &n.output[0]);
        let data_inputs: Vec<&String> = data_inputs.iter().chain(pooled).collect();
        for v in data_inputs {
            // Constants (shape pieces, computed or stored) are not activations.
            if g.initializer(v).is_none()
                && g.eval_constant(v, 8).is_none()
                && !shapes.contains(v.as_str())
                && !targets.contains(v)
                && !v.ends_with(".weight_dq")
            {
                targets.push((*v).clone());
            }
        }
    }
    for v in targets {
        match ranges.get(&v) {
            Some(r) if r.lo.is_finite() && r.hi.is_finite() && r.hi > r.lo => {
                let (scale, zp) = r.to_u8();
                // Quantize the layer output itself on the activation's grid too, so the
                // convolution runs as one integer op (exact, order-independent: equivariance
                // survives) and the ReLU / per-channel bound act elementwise on grid values.
                if let Some(root) = activation_root(g, &v) {
                    qdq_pair(g, &root, scale, zp);
                }
                qdq_pair(g, &v, scale, zp);
                report.activations_quantized += 1;
            }
            _ => report.left_fp32.push(format!("{v} (no activation range: no batch-norm statistics reach it; use --calibrate)")),
        }
    }
    // Layer outputs read by something other than a QuantizeLinear (an instance norm, a
    // PReLU, ...) are quantized on their own range too, so that each layer is one
    // integer op with u8 input and output; graph outputs (logits, labels' scores) keep
    // the precision of the int32 sums.
    let mut outputs: Vec<String> = quantized_layers.into_iter().collect();
    outputs.sort();
    for v in outputs {
        let quantized = g.consumers(&v).iter().any(|&c| g.nodes()[c].op_type == "QuantizeLinear");
        // A normalization divides each channel by its own deviation: per-tensor rounding
        // of its input grows by (tensor range / channel deviation), which in a MONAI U-Net
        // costs 4 dB of output SQNR; such outputs keep the int32 sums' precision.
        let normalized = g
            .consumers(&v)
            .iter()
            .all(|&c| matches!(g.nodes()[c].op_type.as_str(), "InstanceNormalization" | "LayerNormalization" | "GroupNormalization"));
        // tract (which checks every written model) infers no rank through a
        // DequantizeLinear before an edge-mode Pad (MONAI BasicUNet's up-blocks).
        let padded = g.consumers(&v).iter().any(|&c| g.nodes()[c].op_type == "Pad");
        if quantized || normalized || padded || g.is_graph_output(&v) {
            continue;
        }
        if let Some(r) = ranges.get(&v).filter(|r| r.lo.is_finite() && r.hi.is_finite() && r.hi > r.lo) {
            let (scale, zp) = r.to_u8();
            qdq_pair(g, &v, scale, zp);
            report.activations_quantized += 1;
        }
    }
    g.sort()?;
    g.prune();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_clipped_normal_matches_monte_carlo_limits() {
        // Identity and the closed forms at extremes.
        assert_eq!(expected_activation(0.3, 1.0, None, None), 0.3);
        // E[ReLU(N(0,1))] = 1/sqrt(2 pi)
        assert!((expected_activation(0.0, 1.0, Some(0.0), None) - 0.398_942_3).abs() < 1e-6);
        // Far above the clip, the output is the bound; far below zero, zero.
        assert!((expected_activation(50.0, 1.0, Some(0.0), Some(6.0)) - 6.0).abs() < 1e-5);
        assert!(expected_activation(-50.0, 1.0, Some(0.0), Some(6.0)).abs() < 1e-5);
        // A numeric integral of clip(x, 0, 6) against N(2, 3^2).
        let (mu, s) = (2.0f64, 3.0f64);
        let mut acc = 0.0;
        let steps = 200_000;
        for k in 0..steps {
            let x = mu - 12.0 * s + 24.0 * s * (k as f64 + 0.5) / steps as f64;
            let p = (-(x - mu).powi(2) / (2.0 * s * s)).exp() / (s * (2.0 * std::f64::consts::PI).sqrt());
            acc += x.clamp(0.0, 6.0) * p * 24.0 * s / steps as f64;
        }
        assert!((expected_activation(2.0, 3.0, Some(0.0), Some(6.0)) as f64 - acc).abs() < 1e-4);
    }

    #[test]
    fn u8_parameters_contain_zero_exactly() {
        let (s, z) = Range { lo: 0.5, hi: 6.0 }.to_u8();
        assert_eq!(z, 0);
        assert!((s - 6.0 / 255.0).abs() < 1e-7);
        let (s, z) = Range { lo: -1.0, hi: 3.0 }.to_u8();
        assert!((z as f32 * s - 1.0).abs() < s);
    }

    #[test]
    fn per_channel_scales_are_shared_within_fields() {
        let w = Array::new(vec![4, 1, 1, 1], vec![1.0, -2.0, 0.5, 0.25]);
        let s = weight_scales(&w, 0, &Granularity::PerChannel, 2);
        assert_eq!(s, vec![2.0 / 127.0, 2.0 / 127.0, 0.5 / 127.0, 0.5 / 127.0]);
        assert_eq!(weight_scales(&w, 0, &Granularity::PerTensor, 1), vec![2.0 / 127.0; 4]);
    }
}
