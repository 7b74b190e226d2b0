//! The whole data-free quantization recipe over one graph, each step switchable,
//! with a report of what every step did.

use anyhow::Result;
use edgemed_runtime::metadata::ModelMetadata;
use edgemed_runtime::ndarray::ArrayD;

use crate::graph::Graph;
use crate::passes::{absorb, equalize, fold_bn};
use crate::quantize::{self, Granularity, Range};

#[derive(Debug, Clone)]
pub struct Options {
    pub granularity: Granularity,
    pub field_size: usize,
    pub cle: bool,
    pub relu6: equalize::Relu6Policy,
    pub bias_absorption: bool,
    pub bias_correction: bool,
    /// Stop before quantizing: write the folded, equalized FP32 graph (for debugging passes).
    pub fp32_only: bool,
    /// Calibration inputs; empty: data-free ranges.
    pub calibration: Vec<ArrayD<f32>>,
    pub percentile: Option<f32>,
    /// How data-free activation ranges are chosen.
    pub range_rule: quantize::RangeRule,
}

/// The CLI's defaults: the DFQ paper's recipe, per-tensor weights, data-free ranges.
impl Default for Options {
    fn default() -> Self {
        Options {
            granularity: Granularity::PerTensor,
            field_size: 1,
            cle: true,
            relu6: equalize::Relu6Policy::PerChannelBound,
            bias_absorption: true,
            bias_correction: true,
            fp32_only: false,
            calibration: Vec::new(),
            percentile: None,
            range_rule: quantize::RangeRule::MinError(crate::clipped_normal::Family::Laplace),
        }
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub folded: usize,
    pub cle: Option<equalize::Report>,
    pub absorbed: Option<absorb::Report>,
    pub quant: quantize::Report,
    pub messages: Vec<String>,
}

/// Field size from the models crate's metadata (1 when absent).
pub fn field_size_of(g: &Graph) -> usize {
    let md = metadata(g);
    md.raw.get("edgemed.field_size").and_then(|v| v.parse().ok()).unwrap_or(md.group_order as usize).max(1)
}

/// Ops whose computed constant inputs (biases, batch-norm parameters, clip bounds
/// that unoptimised exports build through shape plumbing) are made initializers first.
pub const CONSTANT_INPUT_OPS: &[&str] = &["Conv", "ConvTranspose", "Gemm", "BatchNormalization", "Clip", "PRelu"];

/// The field size a model's grouped convs imply when its metadata says none: escnn's
/// equivariant depthwise layer has one group of N input and N output channels per
/// regular field, so when every such layer has the same N > 1, the fields are N wide.
/// Computed constant weights are made initializers first, as [`run`] does anyway.
pub fn field_size_from_groups(g: &mut Graph) -> Option<usize> {
    g.materialize_constant_inputs(CONSTANT_INPUT_OPS);
    let sizes: Vec<(usize, usize)> = crate::passes::layers(g).iter().filter(|l| l.is_grouped()).map(|l| l.group_sizes()).collect();
    let (n, m) = *sizes.first()?;
    (n > 1 && n == m && sizes.iter().all(|&s| s == (n, n))).then_some(n)
}

pub fn metadata(g: &Graph) -> ModelMetadata {
    let props: Vec<(String, String)> = g.model.metadata_props.iter().map(|e| (e.key.clone(), e.value.clone())).collect();
    ModelMetadata::from_props(std::path::Path::new("model"), &props).unwrap_or_default()
}

/// Input range implied by the normalisation metadata: pixels in [0, 1], then (x - mean) / std.
pub fn input_range(md: &ModelMetadata) -> Range {
    (0..3).fold(Range { lo: f32::MAX, hi: f32::MIN }, |r, c| Range {
        lo: r.lo.min(-md.mean[c] / md.std[c]),
        hi: r.hi.max((1.0 - md.mean[c]) / md.std[c]),
    })
}

/// Grouped convs must split their channels into whole groups, and with a field size
/// N > 1 (a C_N model) each group must hold whole fields: scales are shared within
/// fields, and a group cutting a field could not keep them equal.
fn check_groups(g: &Graph, field: usize) -> Result<()> {
    for i in 0..g.nodes().len() {
        crate::passes::check_layer(g, i)?;
    }
    for l in crate::passes::layers(g) {
        let (cin, cout) = l.group_sizes();
        if field > 1 && l.is_grouped() && (!cin.is_multiple_of(field) || !cout.is_multiple_of(field)) {
            anyhow::bail!(
                "{:?}: a grouped conv with groups of {cin} input and {cout} output channels cuts across fields of {field} channels \
                 (--field-size {field}); give the model's field size, or --field-size 1 for a model without fields",
                if l.name.is_empty() { &l.output } else { &l.name }
            );
        }
    }
    Ok(())
}

pub fn run(g: &mut Graph, opts: &Options) -> Result<Report> {
    let mut report = Report::default();
    check_groups(g, opts.field_size)?;
    // Unoptimised exports compute biases and batch-norm parameters through shape plumbing.
    g.materialize_constant_inputs(CONSTANT_INPUT_OPS);
    let bn_nodes = g.nodes().iter().filter(|n| n.op_type == "BatchNormalization").count();
    let mut stats = fold_bn::fold_batch_norm(g)?;
    report.folded = bn_nodes - g.nodes().iter().filter(|n| n.op_type == "BatchNormalization").count();
    if stats.is_empty() {
        // Instance norms still give data-free ranges (their output's mean and deviation
        // are their bias and |scale|), from which statistics propagate.
        let instance = g.nodes().iter().any(|n| n.op_type == "InstanceNormalization");
        report.messages.push(if instance {
            "no batch-norm statistics in the model: high-bias absorption and bias correction are skipped; activation ranges come from the instance norms' parameters".into()
        } else {
            "no batch-norm statistics in the model: high-bias absorption, bias correction and data-free activation ranges are skipped".into()
        });
    }
    if opts.cle {
        report.cle = Some(equalize::cross_layer_equalize(
            g,
            &mut stats,
            &equalize::Options { field_size: opts.field_size, relu6: opts.relu6, ..Default::default() },
        )?);
    }
    if opts.bias_absorption && !stats.is_empty() {
        report.absorbed = Some(absorb::absorb_high_biases(g, &mut stats, opts.field_size)?);
    }
    if opts.fp32_only {
        return Ok(report);
    }
    let calibrated = if opts.calibration.is_empty() {
        None
    } else {
        let values: Vec<String> = g
            .nodes()
            .iter()
            .flat_map(|n| n.output.iter().cloned())
            .chain(g.g().input.iter().map(|i| i.name.clone()))
            .filter(|v| g.initializer(v).is_none() && g.constant(v).is_none())
            .collect();
        Some(crate::calibrate::calibrate(g, &values, &opts.calibration, opts.percentile)?)
    };
    let qopts = quantize::Options {
        granularity: opts.granularity.clone(),
        field_size: opts.field_size,
        bias_correction: opts.bias_correction,
        calibrated,
        input_range: input_range(&metadata(g)),
        range_rule: opts.range_rule,
    };
    report.quant = quantize::quantize(g, &stats, &qopts)?;
    g.model.metadata_props.retain(|e| e.key != "edgemed.precision");
    g.model.metadata_props.push(edgemed_onnx::pb::StringStringEntryProto { key: "edgemed.precision".into(), value: "int8-qdq".into() });
    Ok(report)
}
