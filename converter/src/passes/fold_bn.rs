//! Folds BatchNormalization into the Conv or Gemm before it, keeping each channel's
//! beta and |gamma| as the pre-activation statistics later passes rely on.

use anyhow::Result;

use super::{layer_at, set_weight_and_bias, weight_and_bias, ChannelStats, Layer, Stats};
use crate::graph::{attr_f, Graph};

/// The first BatchNormalization whose input is a layer's output read by nothing else.
fn next_foldable(g: &Graph) -> Option<(usize, Layer)> {
    (0..g.nodes().len()).find_map(|i| {
        let n = &g.nodes()[i];
        // Five inputs (x, scale, bias, mean, var): a node missing one is not folded
        // (the model's check names it), never indexed past its end.
        if n.op_type != "BatchNormalization" || n.output.len() != 1 || n.input.len() < 5 {
            return None;
        }
        let layer = layer_at(g, g.producer(&n.input[0])?)?;
        (g.single_use(&n.input[0]) && n.input[1..5].iter().all(|x| g.constant(x).is_some())).then_some((i, layer))
    })
}

/// Returns the statistics of every folded layer, keyed by its (new) output name.
pub fn fold_batch_norm(g: &mut Graph) -> Result<Stats> {
    let mut stats = Stats::new();
    // Folding changes node indices, so the next pair is looked up afresh each time.
    while let Some((bn, mut layer)) = next_foldable(g) {
        let n = g.nodes()[bn].clone();
        let [gamma, beta, mean, var] = [1, 2, 3, 4].map(|k| g.constant(&n.input[k]).expect("checked").data);
        let eps = attr_f(&n, "epsilon", 1e-5);
        let a: Vec<f32> = gamma.iter().zip(&var).map(|(g, v)| g / (v + eps).sqrt()).collect();
        let (mut w, b) = weight_and_bias(g, &layer)?;
        let channels = w.shape.get(layer.out_axis).copied().unwrap_or(0);
        if [gamma.len(), beta.len(), mean.len(), var.len(), b.len()].iter().any(|&len| len != channels) {
            anyhow::bail!(
                "BatchNormalization {:?} has parameters of {}/{}/{}/{} channels after a layer of {channels}: not a valid model",
                n.name,
                gamma.len(),
                beta.len(),
                mean.len(),
                var.len()
            );
        }
        super::scale_axis(&mut w, layer.out_axis, &a);
        let b: Vec<f32> = (0..b.len()).map(|c| (b[c] - mean[c]) * a[c] + beta[c]).collect();
        set_weight_and_bias(g, &mut layer, &w, &b);
        // The layer now writes the batch norm's output value; the BN node goes.
        let out = n.output[0].clone();
        g.g_mut().node[layer.node].output[0] = out.clone();
        g.remove_nodes(vec![bn]);
        let gamma_eff: Vec<f32> = gamma.iter().zip(&var).map(|(g, v)| (g * (v / (v + eps)).sqrt()).abs()).collect();
        stats.insert(out, ChannelStats { beta, gamma: gamma_eff });
    }
    Ok(stats)
}
