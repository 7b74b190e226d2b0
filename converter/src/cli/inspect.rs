//! `edgemed inspect`: per layer, the operator, the weight shape and the per-channel
//! weight ranges (median, max, max/min) after batch-norm folding and after cross-layer
//! equalization: the ranges quantization would face with and without CLE.

use std::path::PathBuf;

use anyhow::Result;
use edgemed_converter::graph::Graph;
use edgemed_converter::{dfq, passes};

// The subcommand's help text is the doc comment of its variant in main.rs.
#[derive(clap::Args)]
pub struct Args {
    /// The FP32 ONNX model whose layers to list.
    model: PathBuf,
    /// Share equalization scales within blocks of N channels; default from the model's metadata.
    #[arg(long)]
    field_size: Option<usize>,
}

pub fn run(args: Args) -> Result<()> {
    // "Before" is after batch-norm folding: those are the ranges quantization would face.
    let mut g = Graph::load(&args.model)?;
    let field = args.field_size.unwrap_or_else(|| dfq::field_size_of(&g));
    let mut stats = passes::fold_bn::fold_batch_norm(&mut g)?;
    let mut eq = Graph::from_bytes(&g.to_bytes())?;
    passes::equalize::cross_layer_equalize(&mut eq, &mut stats, &passes::equalize::Options { field_size: field, ..Default::default() })?;
    println!(
        "{:<32} {:<5} {:<18} | {:^29} | {:^29}",
        "layer", "op", "weight", "BN folded: median max max/min", "after CLE: median max max/min"
    );
    let after: std::collections::HashMap<String, passes::Layer> = passes::layers(&eq).into_iter().map(|l| (l.name.clone(), l)).collect();
    for l in passes::layers(&g) {
        let w = passes::weight_and_bias(&g, &l)?.0;
        let kind = if l.is_depthwise() {
            "dw"
        } else if l.is_grouped() {
            "grouped"
        } else {
            g.nodes()[l.node].op_type.as_str()
        };
        let post = after.get(&l.name).map(|a| summary(&eq, a)).transpose()?.unwrap_or_default();
        println!("{:<32} {:<5} {:<18} | {} | {}", l.name, kind, format!("{:?}", w.shape), summary(&g, &l)?, post);
    }
    Ok(())
}

/// Median and largest per-channel weight range of a layer, and largest over smallest.
fn summary(g: &Graph, l: &passes::Layer) -> Result<String> {
    let r = passes::out_ranges(&passes::weight_and_bias(g, l)?.0, l.out_axis);
    let mut s = r.clone();
    s.sort_by(f32::total_cmp);
    let lo = s[0].max(1e-12);
    Ok(format!("{:>9.3e} {:>9.3e} {:>9.1}", s[s.len() / 2], s[s.len() - 1], s[s.len() - 1] / lo))
}
