//! `edgemed inspect`: per layer, the operator, the weight shape and the per-channel
//! weight ranges (median, max, max/min) after batch-norm folding and after cross-layer
//! equalization: the ranges quantization would face with and without CLE; as a table
//! or as JSON.

use std::path::PathBuf;

use anyhow::Result;
use edgemed_converter::graph::Graph;
use edgemed_converter::{dfq, passes};

use super::Format;

// The subcommand's help text is the doc comment of its variant in main.rs.
#[derive(clap::Args)]
pub struct Args {
    /// The FP32 ONNX model whose layers to list.
    #[arg(value_name = "MODEL")]
    model: PathBuf,
    /// Share equalization scales within blocks of N channels; default from the model's metadata.
    #[arg(long, value_name = "N")]
    field_size: Option<usize>,
    /// table (aligned columns) or json (one object per layer, with the same fields, and the model's totals).
    #[arg(long, value_enum, value_name = "FORMAT")]
    format: Option<Format>,
    /// The same as --format json (the old spelling).
    #[arg(long, hide = true, conflicts_with = "format")]
    json: bool,
}

/// A layer's per-output-channel weight ranges.
#[derive(serde::Serialize)]
struct Ranges {
    median: f32,
    max: f32,
    /// Largest over smallest range (the smallest taken as at least 1e-12).
    max_over_min: f32,
}

#[derive(serde::Serialize)]
struct Row {
    layer: String,
    /// The operator, or dw (depthwise) / grouped for grouped convolutions.
    op: String,
    weight_shape: Vec<usize>,
    bn_folded: Ranges,
    /// None when equalization removed or renamed the layer.
    after_cle: Option<Ranges>,
}

#[derive(serde::Serialize)]
struct Report {
    model: String,
    field_size: usize,
    batch_norms_folded: usize,
    cle: CleTotals,
    layers: Vec<Row>,
}

#[derive(serde::Serialize)]
struct CleTotals {
    triplets: usize,
    pairs: usize,
    iterations: usize,
}

pub fn run(args: Args) -> Result<()> {
    // "Before" is after batch-norm folding: those are the ranges quantization would face.
    let mut g = Graph::load(&args.model)?;
    let field = args.field_size.unwrap_or_else(|| dfq::field_size_of(&g));
    let mut stats = passes::fold_bn::fold_batch_norm(&mut g)?;
    let folded = stats.len();
    let mut eq = Graph::from_bytes(&g.to_bytes())?;
    let cle = passes::equalize::cross_layer_equalize(
        &mut eq,
        &mut stats,
        &passes::equalize::Options { field_size: field, ..Default::default() },
    )?;
    let after: std::collections::HashMap<String, passes::Layer> = passes::layers(&eq).into_iter().map(|l| (l.name.clone(), l)).collect();
    let mut rows = Vec::new();
    for l in passes::layers(&g) {
        let w = passes::weight_and_bias(&g, &l)?.0;
        let op = if l.is_depthwise() {
            "dw"
        } else if l.is_grouped() {
            "grouped"
        } else {
            g.nodes()[l.node].op_type.as_str()
        };
        rows.push(Row {
            layer: l.name.clone(),
            op: op.to_string(),
            weight_shape: w.shape.clone(),
            bn_folded: ranges(&g, &l)?,
            after_cle: after.get(&l.name).map(|a| ranges(&eq, a)).transpose()?,
        });
    }
    let report = Report {
        model: args.model.display().to_string(),
        field_size: field,
        batch_norms_folded: folded,
        cle: CleTotals { triplets: cle.triplets, pairs: cle.pairs, iterations: cle.iterations },
        layers: rows,
    };
    match Format::chosen(args.format, args.json) {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => print_table(&report),
    }
    Ok(())
}

fn print_table(r: &Report) {
    println!(
        "{:<32} {:<5} {:<18} | {:^29} | {:^29}",
        "layer", "op", "weight", "BN folded: median max max/min", "after CLE: median max max/min"
    );
    let cell = |x: &Ranges| format!("{:>9.3e} {:>9.3e} {:>9.1}", x.median, x.max, x.max_over_min);
    for l in &r.layers {
        let post = l.after_cle.as_ref().map(cell).unwrap_or_default();
        println!("{:<32} {:<5} {:<18} | {} | {}", l.layer, l.op, format!("{:?}", l.weight_shape), cell(&l.bn_folded), post);
    }
}

/// Median and largest per-channel weight range of a layer, and largest over smallest.
fn ranges(g: &Graph, l: &passes::Layer) -> Result<Ranges> {
    let mut s = passes::out_ranges(&passes::weight_and_bias(g, l)?.0, l.out_axis);
    s.sort_by(f32::total_cmp);
    let lo = s[0].max(1e-12);
    Ok(Ranges { median: s[s.len() / 2], max: s[s.len() - 1], max_over_min: s[s.len() - 1] / lo })
}
