//! Cross-layer equalization: for conv -> activation -> conv, scale output channel i
//! of the first layer by 1/s_i and input channel i of the second by s_i, with
//! s = sqrt(r1 / r2) so both weight ranges become sqrt(r1 r2); for
//! conv -> depthwise -> conv, cube-root scales equalize all three. Grouped convs
//! take part as well (escnn's equivariant depthwise layer has one group of N in
//! and N out channels per regular field): a weight is scaled by the input channel
//! it reads, which for a grouped conv is a channel of its output's group; a grouped
//! middle layer of a triplet gets scales shared within each group, so that its
//! block of weights scales as a whole, like a depthwise channel. Positive scaling
//! commutes with ReLU; ReLU6's fixed bound does not, so Clip(0, 6) becomes
//! Relu + Min with a per-channel bound that is scaled too (function kept), or, on
//! request, plain Relu as AIMET does (function changed above 6).
//! With `field_size` N every scale is shared within blocks of N channels, so a
//! C_N-equivariant model stays equivariant.

use anyhow::Result;

use super::{in_ranges, layer_at, out_ranges, scale_axis, set_weight_and_bias, share_within_fields, weight_and_bias, Layer, Stats};
use crate::graph::{Array, Graph};
use crate::passes::scale_inputs as scale_weight_inputs;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Relu6Policy {
    /// Relu + Min(per-channel bound): exact.
    PerChannelBound,
    /// Relu: what AIMET does; changes outputs wherever activations exceed 6.
    ReplaceWithRelu,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub field_size: usize,
    pub relu6: Relu6Policy,
    pub max_iterations: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { field_size: 1, relu6: Relu6Policy::PerChannelBound, max_iterations: 50 }
    }
}

/// The activation between two layers of a chain.
#[derive(Debug, Clone, PartialEq)]
pub enum Act {
    /// Layers connected directly (linear).
    Identity,
    Relu,
    /// Relu followed by Min with this per-channel bound initializer.
    Bounded {
        bound: String,
    },
}

/// `first -> act -> second`, the activation output being read only by `second`.
#[derive(Debug, Clone)]
pub struct Link {
    pub first: String,
    pub act: Act,
    pub second: String,
}

/// Chains found: triplets (conv, depthwise, conv) and the remaining pairs.
#[derive(Debug, Default, Clone)]
pub struct Chains {
    pub triplets: Vec<(Link, Link)>,
    pub pairs: Vec<Link>,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub pairs: usize,
    pub triplets: usize,
    pub iterations: usize,
    pub clips_rewritten: usize,
}

fn layer_by_output(g: &Graph, value: &str) -> Option<Layer> {
    layer_at(g, g.producer(value)?)
}

/// Follows `value` through an activation to the single layer reading it.
/// Clip(0, M) is rewritten on the way according to `relu6`.
fn follow(g: &mut Graph, value: &str, relu6: Relu6Policy, rewritten: &mut usize) -> Option<(Act, Layer)> {
    if !g.single_use(value) {
        return None;
    }
    let c = g.consumers(value)[0];
    let op = g.nodes()[c].op_type.clone();
    let (act, out) = match op.as_str() {
        "Conv" | "ConvTranspose" | "Gemm" => return layer_at(g, c).filter(|_| g.nodes()[c].input[0] == value).map(|l| (Act::Identity, l)),
        "Relu" => {
            let r_out = g.nodes()[c].output[0].clone();
            match g.single_use(&r_out).then(|| g.consumers(&r_out)[0]) {
                Some(m) if g.nodes()[m].op_type == "Min" => {
                    let (_, bound) = g.min_bound(&g.nodes()[m])?;
                    (Act::Bounded { bound }, g.nodes()[m].output[0].clone())
                }
                _ => (Act::Relu, r_out),
            }
        }
        "Clip" => {
            let n = g.nodes()[c].clone();
            let (lo, hi) = g.clip_bounds(&n);
            if lo != 0.0 || !(hi > 0.0 && hi.is_finite()) {
                return None;
            }
            let channels = layer_by_output(g, value)?.out_channels;
            let rank = g.constant(&layer_by_output(g, value)?.weight)?.shape.len().max(2);
            *rewritten += 1;
            let relu_out = g.fresh_name(&format!("{}.relu", n.output[0]));
            match relu6 {
                Relu6Policy::ReplaceWithRelu => {
                    let node = &mut g.g_mut().node[c];
                    node.op_type = "Relu".into();
                    node.input.truncate(1);
                    node.attribute.clear();
                    (Act::Relu, n.output[0].clone())
                }
                Relu6Policy::PerChannelBound => {
                    // Clip(x, 0, hi) == Min(Relu(x), hi) with hi per channel, shaped [1, C, 1, ...].
                    let bound = g.fresh_name(&format!("{}.bound", n.output[0]));
                    let mut shape = vec![1usize; rank];
                    shape[1] = channels;
                    g.set_initializer(&bound, &Array::new(shape, vec![hi; channels]));
                    let node = &mut g.g_mut().node[c];
                    node.op_type = "Relu".into();
                    node.input.truncate(1);
                    node.attribute.clear();
                    node.output[0] = relu_out.clone();
                    let min = edgemed_onnx::pb::NodeProto {
                        input: vec![relu_out.clone(), bound.clone()],
                        output: vec![n.output[0].clone()],
                        name: g.fresh_name(&format!("{}.min", n.name)),
                        op_type: "Min".into(),
                        ..Default::default()
                    };
                    g.g_mut().node.insert(c + 1, min);
                    (Act::Bounded { bound }, n.output[0].clone())
                }
            }
        }
        _ => return None,
    };
    if !g.single_use(&out) {
        return None;
    }
    let next = g.consumers(&out)[0];
    layer_at(g, next).filter(|_| g.nodes()[next].input[0] == out).map(|l| (act, l))
}

/// Finds equalizable chains, rewriting the ReLU6s inside them.
pub fn find_chains(g: &mut Graph, relu6: Relu6Policy) -> Result<(Chains, usize)> {
    let mut rewritten = 0;
    let mut links = Vec::new();
    let outputs: Vec<String> = super::layers(g).into_iter().map(|l| l.output).collect();
    for out in outputs {
        if let Some((act, next)) = follow(g, &out, relu6, &mut rewritten) {
            // A malformed graph (an output name written twice) can lose the layer to the
            // ReLU6 rewrite above; it is then simply not equalized.
            let Some(first) = layer_by_output(g, &out) else { continue };
            // Any layer's outputs can be scaled channel by channel into any successor
            // (dense, depthwise or grouped: each weight follows its input channel);
            // channel counts must line up.
            if first.out_channels == next.in_channels {
                links.push(Link { first: first.output.clone(), act, second: next.output.clone() });
            }
        }
    }
    g.sort()?;
    let mut chains = Chains::default();
    let mut used = vec![false; links.len()];
    for i in 0..links.len() {
        let Some(mid) = layer_by_output(g, &links[i].second) else { continue };
        // A middle layer whose input channel i feeds output channel i (depthwise),
        // or whose groups map N channels to N (equalized per group).
        let square_groups = mid.is_grouped() && mid.group_sizes().0 == mid.group_sizes().1;
        if !(mid.is_depthwise() || square_groups) || used[i] {
            continue;
        }
        if let Some(j) = links.iter().position(|l| l.first == links[i].second) {
            if !used[j] {
                used[i] = true;
                used[j] = true;
                chains.triplets.push((links[i].clone(), links[j].clone()));
            }
        }
    }
    chains.pairs = links.into_iter().zip(used).filter(|(_, u)| !u).map(|(l, _)| l).collect();
    Ok((chains, rewritten))
}

/// Divides the outputs of the layer writing `value` (and its bound, stats) by `s`.
fn scale_outputs(g: &mut Graph, stats: &mut Stats, value: &str, act: &Act, s: &[f32], extra: Option<&[f32]>) -> Result<()> {
    let mut l = layer_by_output(g, value).expect("chain layer");
    let (mut w, mut b) = weight_and_bias(g, &l)?;
    let inv: Vec<f32> = s.iter().map(|x| 1.0 / x).collect();
    if let Some(in_scale) = extra {
        // The middle layer of a triplet also takes its input scale.
        scale_weight_inputs(&l, &mut w, in_scale);
    }
    scale_axis(&mut w, l.out_axis, &inv);
    b.iter_mut().zip(&inv).for_each(|(v, k)| *v *= k);
    set_weight_and_bias(g, &mut l, &w, &b);
    if let Some(st) = stats.get_mut(value) {
        st.beta.iter_mut().zip(&inv).for_each(|(v, k)| *v *= k);
        st.gamma.iter_mut().zip(&inv).for_each(|(v, k)| *v *= k);
    }
    if let Act::Bounded { bound } = act {
        let mut bnd = g.constant(bound).expect("bound initializer");
        bnd.data.iter_mut().zip(&inv).for_each(|(v, k)| *v *= k);
        g.set_initializer(bound, &bnd);
    }
    Ok(())
}

/// Multiplies the weights reading input channel i of the layer writing `value` by `s_i`.
fn scale_inputs(g: &mut Graph, value: &str, s: &[f32]) -> Result<()> {
    let mut l = layer_by_output(g, value).expect("chain layer");
    let (mut w, b) = weight_and_bias(g, &l)?;
    scale_weight_inputs(&l, &mut w, s);
    set_weight_and_bias(g, &mut l, &w, &b);
    Ok(())
}

fn ranges_out(g: &Graph, value: &str, field: usize) -> Result<Vec<f32>> {
    let l = layer_by_output(g, value).expect("chain layer");
    Ok(share_within_fields(&out_ranges(&weight_and_bias(g, &l)?.0, l.out_axis), field))
}

fn ranges_in(g: &Graph, value: &str, field: usize) -> Result<Vec<f32>> {
    let l = layer_by_output(g, value).expect("chain layer");
    let w = weight_and_bias(g, &l)?.0;
    Ok(share_within_fields(&in_ranges(&l, &w), field))
}

/// Channels per shared scale in a triplet whose middle layer writes `mid`: the
/// field size, or the least common multiple of it and a grouped layer's group size.
fn triplet_block(g: &Graph, mid: &str, field: usize) -> usize {
    let group = layer_by_output(g, mid).filter(|l| l.is_grouped()).map_or(1, |l| l.group_sizes().0);
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let field = field.max(1);
    field / gcd(field, group) * group
}

fn safe_ratio(a: f32, b: f32) -> f32 {
    if a > 0.0 && b > 0.0 && (a / b).is_finite() {
        a / b
    } else {
        1.0
    }
}

/// Runs cross-layer equalization to convergence; `stats` follow the scaling.
pub fn cross_layer_equalize(g: &mut Graph, stats: &mut Stats, opts: &Options) -> Result<Report> {
    let (chains, clips_rewritten) = find_chains(g, opts.relu6)?;
    let f = opts.field_size;
    let mut iterations = 0;
    for _ in 0..opts.max_iterations {
        iterations += 1;
        let mut change = 0f32;
        for (a, b) in &chains.triplets {
            // Scales shared within fields and, for a grouped middle layer, within its groups.
            let f = triplet_block(g, &a.second, f);
            let (r1, r2, r3) = (ranges_out(g, &a.first, f)?, ranges_in(g, &a.second, f)?, ranges_in(g, &b.second, f)?);
            let cube: Vec<f32> = (0..r1.len()).map(|i| (r1[i] * r2[i] * r3[i]).cbrt()).collect();
            let s1: Vec<f32> = (0..r1.len()).map(|i| safe_ratio(r1[i], cube[i])).collect();
            let s2: Vec<f32> = (0..r1.len()).map(|i| safe_ratio(cube[i], r3[i])).collect();
            change = s1.iter().chain(&s2).fold(change, |m, s| m.max((s - 1.0).abs()));
            scale_outputs(g, stats, &a.first, &a.act, &s1, None)?;
            scale_outputs(g, stats, &a.second, &b.act, &s2, Some(&s1))?;
            scale_inputs(g, &b.second, &s2)?;
        }
        for p in &chains.pairs {
            let (r1, r2) = (ranges_out(g, &p.first, f)?, ranges_in(g, &p.second, f)?);
            let s: Vec<f32> = r1.iter().zip(&r2).map(|(a, b)| safe_ratio(*a, *b).sqrt()).collect();
            change = s.iter().fold(change, |m, s| m.max((s - 1.0).abs()));
            scale_outputs(g, stats, &p.first, &p.act, &s, None)?;
            scale_inputs(g, &p.second, &s)?;
        }
        if change < 1e-5 {
            break;
        }
    }
    Ok(Report { pairs: chains.pairs.len(), triplets: chains.triplets.len(), iterations, clips_rewritten })
}
