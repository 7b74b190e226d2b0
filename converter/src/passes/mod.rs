//! Data-free quantization passes (Nagel et al. 2019), each usable alone:
//! [`fold_bn`] -> [`equalize`] (cross-layer equalization, ReLU6 handling) ->
//! [`absorb`] (high-bias absorption) -> quantization with bias correction
//! (`crate::quantize`). Layers are viewed through [`Layer`]; per-channel
//! batch-norm statistics travel beside the graph in [`ChannelStats`].

pub mod absorb;
pub mod equalize;
pub mod fold_bn;

use std::collections::HashMap;

use anyhow::{bail, Result};

use crate::graph::{attr_i, attr_ints, Array, Graph};

/// Distribution of a layer's pre-activation output per channel, N(beta, gamma^2),
/// taken from the batch norm folded into it (the paper's data-free assumption).
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelStats {
    pub beta: Vec<f32>,
    pub gamma: Vec<f32>,
}

/// Statistics keyed by the name of the layer's output value.
pub type Stats = HashMap<String, ChannelStats>;

/// What kind of layer a [`Layer`] is: it decides which weight element connects
/// which input channel to which output channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// Weights [out, in / group, k...]: output channel o reads the input channels of its group.
    Conv,
    /// Weights [in, out, k...] (group 1 only: a grouped transposed conv stays float).
    ConvTranspose,
    /// Weights [in, out] (or [out, in] with transB).
    Gemm,
}

/// A Conv, ConvTranspose or Gemm with constant weights, seen per output channel.
#[derive(Debug, Clone)]
pub struct Layer {
    pub node: usize,
    pub name: String,
    pub output: String,
    pub weight: String,
    pub bias: Option<String>,
    pub kind: LayerKind,
    /// Axis of the weight that indexes output channels (0 for Conv, 1 for ConvTranspose, 0 or 1 for Gemm).
    pub out_axis: usize,
    pub group: usize,
    pub out_channels: usize,
    pub in_channels: usize,
    /// Any non-zero padding (bias absorption into such a layer would not be exact at borders).
    pub padded: bool,
}

impl Layer {
    /// One input and one output channel per group.
    pub fn is_depthwise(&self) -> bool {
        self.group > 1 && self.group == self.out_channels && self.group == self.in_channels
    }

    /// Grouped with more than one channel per group (escnn's equivariant depthwise
    /// layer: one group per regular field).
    pub fn is_grouped(&self) -> bool {
        self.group > 1 && !self.is_depthwise()
    }

    /// Input and output channels of each group.
    pub fn group_sizes(&self) -> (usize, usize) {
        (self.in_channels / self.group.max(1), self.out_channels / self.group.max(1))
    }

    /// The output channel the weight element at multi-index `idx` writes.
    pub fn out_of(&self, idx: &[usize]) -> usize {
        idx[self.out_axis]
    }

    /// The input channel the weight element at multi-index `idx` reads: for a grouped
    /// conv, channel j of the group of its output channel.
    pub fn in_of(&self, idx: &[usize]) -> usize {
        match self.kind {
            LayerKind::Conv => {
                let (cin_g, cout_g) = self.group_sizes();
                (idx[0] / cout_g.max(1)) * cin_g + idx[1]
            }
            LayerKind::ConvTranspose => idx[0],
            LayerKind::Gemm => idx[1 - self.out_axis],
        }
    }
}

/// Whether a Conv's or ConvTranspose's weight axis 0 splits into `group` groups.
fn splits_into_groups(w: &Array, group: i64) -> bool {
    group >= 1 && w.shape.first().is_some_and(|c| c.is_multiple_of(group as usize))
}

/// Why the layer at node `i` cannot be read per channel, if it is a Conv,
/// ConvTranspose or Gemm with constant weights whose shapes contradict its attributes.
pub fn check_layer(g: &Graph, i: usize) -> Result<()> {
    let n = &g.nodes()[i];
    let Some(w) = n.input.get(1).and_then(|w| g.constant(w)) else { return Ok(()) };
    let group = attr_i(n, "group", 1);
    // Conv weights are [out, in/group, ...], ConvTranspose ones [in, out/group, ...]:
    // either way axis 0 must split into the groups.
    let splits = splits_into_groups(&w, group);
    let what = match n.op_type.as_str() {
        "Conv" => "output",
        "ConvTranspose" => "input",
        _ => return Ok(()),
    };
    if w.shape.len() >= 3 && !splits {
        bail!("{} {:?}: {} {what} channels do not split into {group} groups: not a valid model", n.op_type, n.name, w.shape[0]);
    }
    Ok(())
}

/// The layer at node `i`, if it is a Conv, ConvTranspose (group 1) or Gemm whose
/// weights are constants and whose shapes agree with its attributes.
pub fn layer_at(g: &Graph, i: usize) -> Option<Layer> {
    let n = &g.nodes()[i];
    let w = g.constant(n.input.get(1)?)?;
    let bias = n.input.get(2).filter(|b| !b.is_empty()).cloned();
    if let Some(b) = &bias {
        g.constant(b)?;
    }
    let padded_conv = || {
        attr_ints(n, "pads").is_some_and(|p| p.iter().any(|x| *x != 0))
            || crate::graph::attr(n, "auto_pad").is_some_and(|a| !a.s.is_empty() && a.s != b"NOTSET" && a.s != b"VALID")
    };
    // (kind, output-channel axis, group, input channels, padded) per op kind.
    let (kind, out_axis, group, in_channels, padded) = match n.op_type.as_str() {
        "Conv" if w.shape.len() >= 3 => {
            let group = attr_i(n, "group", 1);
            if !splits_into_groups(&w, group) {
                return None;
            }
            (LayerKind::Conv, 0, group as usize, w.shape[1] * group as usize, padded_conv())
        }
        "ConvTranspose" if w.shape.len() >= 3 && attr_i(n, "group", 1) == 1 => (LayerKind::ConvTranspose, 1, 1, w.shape[0], padded_conv()),
        "Gemm" if w.shape.len() == 2 && attr_i(n, "transA", 0) == 0 => {
            let out_axis = if attr_i(n, "transB", 0) == 1 { 0 } else { 1 };
            (LayerKind::Gemm, out_axis, 1, w.shape[1 - out_axis], false)
        }
        _ => return None,
    };
    Some(Layer {
        node: i,
        name: n.name.clone(),
        output: n.output[0].clone(),
        weight: n.input[1].clone(),
        bias,
        kind,
        out_axis,
        group,
        out_channels: w.shape[out_axis],
        in_channels,
        padded,
    })
}

pub fn layers(g: &Graph) -> Vec<Layer> {
    (0..g.nodes().len()).filter_map(|i| layer_at(g, i)).collect()
}

/// Weight and bias (zeros when the layer has none) of a layer.
pub fn weight_and_bias(g: &Graph, l: &Layer) -> Result<(Array, Vec<f32>)> {
    let w = match g.constant(&l.weight) {
        Some(w) => w,
        None => bail!("{}: weight {} is not a float constant", l.name, l.weight),
    };
    let b = match &l.bias {
        Some(b) => g.constant(b).map(|a| a.data).unwrap_or_else(|| vec![0.0; l.out_channels]),
        None => vec![0.0; l.out_channels],
    };
    Ok((w, b))
}

/// Writes a layer's weight and bias back, giving it private copies when the
/// initializers are shared with other nodes and a bias input when it had none.
pub fn set_weight_and_bias(g: &mut Graph, l: &mut Layer, w: &Array, b: &[f32]) {
    let shared = |g: &Graph, name: &str| g.nodes().iter().filter(|n| n.input.iter().any(|i| i == name)).count() > 1;
    if shared(g, &l.weight) {
        l.weight = g.fresh_name(&format!("{}.weight", l.name));
        g.g_mut().node[l.node].input[1] = l.weight.clone();
    }
    g.set_initializer(&l.weight, w);
    let bias_name = match &l.bias {
        Some(name) if !shared(g, name) => name.clone(),
        _ => {
            let name = g.fresh_name(&format!("{}.bias", if l.name.is_empty() { &l.output } else { &l.name }));
            let node = &mut g.g_mut().node[l.node];
            if node.input.len() < 3 {
                node.input.resize(3, String::new());
            }
            node.input[2] = name.clone();
            l.bias = Some(name.clone());
            name
        }
    };
    g.set_initializer(&bias_name, &Array::new(vec![b.len()], b.to_vec()));
}

/// Per-output-channel max |w|.
pub fn out_ranges(w: &Array, out_axis: usize) -> Vec<f32> {
    let n = w.shape[out_axis];
    let mut r = vec![0f32; n];
    for_each_index(w, |idx, v| {
        let o = idx[out_axis];
        r[o] = r[o].max(v.abs());
    });
    r
}

/// Per-input-channel max |w| over every weight reading that channel (for a
/// grouped conv, the output channels of its group).
pub fn in_ranges(l: &Layer, w: &Array) -> Vec<f32> {
    let mut r = vec![0f32; l.in_channels];
    for_each_index(w, |idx, v| {
        let i = l.in_of(idx);
        r[i] = r[i].max(v.abs());
    });
    r
}

/// Multiplies every weight by `s` of the input channel it reads.
pub fn scale_inputs(l: &Layer, w: &mut Array, s: &[f32]) {
    let mut factors = Vec::with_capacity(w.len());
    for_each_index(w, |idx, _| factors.push(s[l.in_of(idx)]));
    w.data.iter_mut().zip(factors).for_each(|(v, f)| *v *= f);
}

/// Calls `f` with the multi-index of every element (row-major).
pub fn for_each_index(w: &Array, mut f: impl FnMut(&[usize], f32)) {
    let mut idx = vec![0usize; w.shape.len()];
    for &v in &w.data {
        f(&idx, v);
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < w.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// Multiplies every element by `s[idx[axis]]`.
pub fn scale_axis(w: &mut Array, axis: usize, s: &[f32]) {
    let shape = w.shape.clone();
    let inner: usize = shape[axis + 1..].iter().product();
    let n = shape[axis];
    for (k, v) in w.data.iter_mut().enumerate() {
        *v *= s[(k / inner) % n];
    }
}

/// Spreads per-field values to channels: every block of `field` channels takes
/// the maximum over the block, so equivariant models keep equal scales within a field.
pub fn share_within_fields(r: &[f32], field: usize) -> Vec<f32> {
    if field <= 1 || !r.len().is_multiple_of(field) {
        return r.to_vec();
    }
    r.chunks(field).flat_map(|c| std::iter::repeat_n(c.iter().copied().fold(0f32, f32::max), field)).collect()
}

/// Makes per-channel values uniform within each field (their mean), undoing the
/// last-ulp differences that summing a permuted row in a different order leaves.
pub fn uniform_within_fields(v: &mut [f32], field: usize) {
    if field <= 1 || !v.len().is_multiple_of(field) {
        return;
    }
    for f in v.chunks_mut(field) {
        let mean = (f.iter().map(|x| *x as f64).sum::<f64>() / field as f64) as f32;
        f.iter_mut().for_each(|x| *x = mean);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A conv layer of `group` groups, for the index arithmetic alone.
    fn conv_layer(group: usize, out_channels: usize, in_channels: usize) -> Layer {
        Layer {
            node: 0,
            name: String::new(),
            output: String::new(),
            weight: String::new(),
            bias: None,
            kind: LayerKind::Conv,
            out_axis: 0,
            group,
            out_channels,
            in_channels,
            padded: false,
        }
    }

    #[test]
    fn ranges_and_scaling_follow_axes() {
        // [O=2, I=3, 1, 1]
        let mut w = Array::new(vec![2, 3, 1, 1], vec![1., -4., 2., 0.5, 3., -1.]);
        assert_eq!(out_ranges(&w, 0), vec![4., 3.]);
        assert_eq!(in_ranges(&conv_layer(1, 2, 3), &w), vec![1., 4., 2.]);
        scale_axis(&mut w, 1, &[1., 0.5, 2.]);
        assert_eq!(w.data, vec![1., -2., 4., 0.5, 1.5, -2.]);
        assert_eq!(share_within_fields(&[1., 3., 2., 0.5], 2), vec![3., 3., 2., 2.]);
    }

    #[test]
    fn grouped_layers_map_each_weight_to_its_groups_input_channel() {
        // Conv with 2 groups of 2 in / 2 out channels: w [4, 2, 1, 1].
        let l = conv_layer(2, 4, 4);
        assert!(l.is_grouped() && !l.is_depthwise());
        assert_eq!([l.in_of(&[0, 1, 0, 0]), l.in_of(&[1, 0, 0, 0]), l.in_of(&[2, 0, 0, 0]), l.in_of(&[3, 1, 0, 0])], [1, 0, 2, 3]);
        let mut w = Array::new(vec![4, 2, 1, 1], vec![1., -5., 2., 3., 0.5, 0.25, -4., 1.]);
        // Input channel 1 is read by w[0][1] = -5 and w[1][1] = 3; channel 2 by w[2][0], w[3][0].
        assert_eq!(in_ranges(&l, &w), vec![2., 5., 4., 1.]);
        scale_inputs(&l, &mut w, &[1., 2., 10., 100.]);
        assert_eq!(w.data, vec![1., -10., 2., 6., 5., 25., -40., 100.]);
    }
}
