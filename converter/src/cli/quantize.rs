//! `edgemed quantize`: turns an FP32 ONNX model into INT8 QDQ ONNX with data-free
//! quantization (batch-norm folding, cross-layer equalization, high-bias absorption,
//! bias correction; activation ranges from batch-norm statistics or calibration
//! inputs), or into a float16 model with `--fp16`. What it writes is checked to load first.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use edgemed_converter::clipped_normal::Family;
use edgemed_converter::graph::Graph;
use edgemed_converter::passes::equalize::Relu6Policy;
use edgemed_converter::quantize::{Granularity, RangeRule};
use edgemed_converter::{dfq, inputs, passes};
use edgemed_onnx::fsutil;
use edgemed_runtime::model::OnnxModel;

// The subcommand's help text is the doc comment of its variant in main.rs.
#[derive(clap::Args)]
pub struct Args {
    /// The FP32 ONNX model to quantize.
    #[arg(value_name = "MODEL")]
    input: PathBuf,
    /// The model to write (never the input; written atomically and checked to load, and
    /// recorded in the edgemed-manifest.json beside it).
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Replace the output file if it exists (by default an earlier result is kept).
    #[arg(long)]
    force: bool,
    /// Per-channel weight scales (default: per tensor, the DFQ paper's setting).
    #[arg(long)]
    per_channel: bool,
    /// Share scales within blocks of N channels (C_N regular fields); default from the model's
    /// metadata, else from its grouped convs (escnn: one group of N channels per field).
    #[arg(long, value_name = "N")]
    field_size: Option<usize>,
    /// Activation ranges from these inputs instead of batch-norm statistics: a directory of
    /// patch images, or a .npy tensor (or directory of them) in the model's input shape.
    #[arg(long, value_name = "PATH")]
    calibrate: Option<PathBuf>,
    /// With --calibrate: clip ranges at this percentile (0 < P <= 100) instead of min/max.
    #[arg(long, value_name = "P", requires = "calibrate")]
    percentile: Option<f32>,
    /// Data-free activation ranges: beta +- this many |gamma| per channel, instead of
    /// the range of least expected quantization error (see --range-model).
    #[arg(long, value_name = "K")]
    range_sigmas: Option<f32>,
    /// The distribution each channel is assumed to follow around its batch norm's mean
    /// and deviation when choosing data-free ranges of least expected error: laplace
    /// (the heavy tails of trained networks) or normal (the DFQ paper's assumption).
    #[arg(long, value_enum, value_name = "FAMILY", default_value = "laplace", conflicts_with = "range_sigmas")]
    range_model: RangeModel,
    /// Skip cross-layer equalization.
    #[arg(long)]
    no_cle: bool,
    /// Skip high-bias absorption.
    #[arg(long)]
    no_bias_absorption: bool,
    /// Skip the analytic correction of the bias that weight rounding adds on average.
    #[arg(long)]
    no_bias_correction: bool,
    /// Replace ReLU6 by ReLU before equalizing (AIMET's way; changes outputs above 6).
    #[arg(long)]
    relu6_to_relu: bool,
    /// Write the transformed FP32 model (BN folded, equalized, biases absorbed) without quantizing.
    #[arg(long)]
    fp32_only: bool,
    /// Write a float16 model instead (batch norm folded; inputs and outputs stay float32).
    #[arg(long, conflicts_with_all = ["per_channel", "calibrate", "fp32_only"])]
    fp16: bool,
    /// With --fp16: float16 inputs and outputs too (the runtime converts from and to float32).
    #[arg(long, requires = "fp16")]
    fp16_io: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RangeModel {
    Laplace,
    Normal,
}

pub fn run(args: Args) -> Result<()> {
    // The converter never writes over its input (the FP32 model a user may need again),
    // and checks where it writes before any work.
    if fsutil::same_file(&args.input, &args.output) {
        anyhow::bail!("{}: the output is the input model; write the quantized model to another file", args.output.display());
    }
    let inputs: Vec<&Path> = std::iter::once(args.input.as_path()).chain(args.calibrate.as_deref()).collect();
    super::check_outputs(&[&args.output], &inputs, args.force)?;
    if let Some(k) = args.range_sigmas.filter(|k| !(k.is_finite() && *k > 0.0)) {
        anyhow::bail!("--range-sigmas {k}: give a positive number of standard deviations");
    }
    if let Some(p) = args.percentile.filter(|p| !(p.is_finite() && *p > 0.0 && *p <= 100.0)) {
        anyhow::bail!("--percentile {p}: give a percentile in (0, 100], e.g. 99.99");
    }
    let mut g = Graph::load(&args.input)?;
    if args.fp16 {
        return to_fp16(g, &args);
    }
    let declared = dfq::field_size_of(&g);
    let field_size = match (args.field_size, declared, dfq::field_size_from_groups(&mut g)) {
        (Some(n), _, _) => n,
        (None, 1, Some(n)) => {
            eprintln!("edgemed: note: field size {n} from the grouped convs (one group of {n} channels per field); --field-size overrides");
            n
        }
        (None, n, _) => n,
    };
    if field_size == 0 {
        anyhow::bail!("--field-size 0: give the number of channels of a field (1 for a model without fields)");
    }
    let calibration = match &args.calibrate {
        Some(path) => inputs::calibration(&OnnxModel::load(&args.input)?, path, 256)?,
        None => Vec::new(),
    };
    let opts = dfq::Options {
        granularity: if args.per_channel { Granularity::PerChannel } else { Granularity::PerTensor },
        field_size,
        cle: !args.no_cle,
        relu6: if args.relu6_to_relu { Relu6Policy::ReplaceWithRelu } else { Relu6Policy::PerChannelBound },
        bias_absorption: !args.no_bias_absorption,
        bias_correction: !args.no_bias_correction,
        calibration,
        percentile: args.percentile,
        range_rule: args.range_sigmas.map_or(
            RangeRule::MinError(match args.range_model {
                RangeModel::Laplace => Family::Laplace,
                RangeModel::Normal => Family::Normal,
            }),
            RangeRule::Sigmas,
        ),
        fp32_only: args.fp32_only,
    };
    let report = dfq::run(&mut g, &opts)?;
    for m in &report.messages {
        eprintln!("edgemed: note: {m}");
    }
    if !report.quant.left_fp32.is_empty() {
        eprintln!("edgemed: warning: {} tensors left in FP32:", report.quant.left_fp32.len());
        for n in &report.quant.left_fp32 {
            eprintln!("  {n}");
        }
    }
    let output = &args.output;
    edgemed_converter::export::save_verified(&g.model, output).with_context(|| format!("writing {}", output.display()))?;
    eprintln!(
        "wrote {}: folded {} batch norms; CLE {}; high-bias absorption {}; {} weights ({}), {} activations quantized, {} biases corrected; field size {field_size}",
        output.display(),
        report.folded,
        report.cle.map_or("off".into(), |c| format!("{} triplets + {} pairs in {} iterations", c.triplets, c.pairs, c.iterations)),
        report.absorbed.map_or("off".into(), |a| format!("{} layers", a.absorbed_layers)),
        report.quant.weights_quantized,
        if args.per_channel { "per channel" } else { "per tensor" },
        report.quant.activations_quantized,
        report.quant.bias_corrected,
    );
    Ok(())
}

/// `--fp16`: batch norm folded, float16 weights (and inputs and outputs with `--fp16-io`).
fn to_fp16(mut g: Graph, args: &Args) -> Result<()> {
    let folded = passes::fold_bn::fold_batch_norm(&mut g)?.len();
    edgemed_converter::fp16::convert_to_fp16(&mut g, args.fp16_io)?;
    let output = &args.output;
    edgemed_converter::export::save_verified(&g.model, output).with_context(|| format!("writing {}", output.display()))?;
    eprintln!(
        "wrote {}: float16 weights, {folded} batch norms folded, float{} inputs and outputs",
        output.display(),
        if args.fp16_io { 16 } else { 32 }
    );
    Ok(())
}
