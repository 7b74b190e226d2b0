//! `edgemed-run info`: describes a model (inputs, outputs, operators, parameters,
//! precision, the preprocessing pipeline and metadata it declares) and the backend
//! it would run on, as text or JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use edgemed_runtime::backend::{BackendKind, BackendOptions};
use edgemed_runtime::model::{Dim, OnnxModel};

use crate::common::{Common, SummaryFormat};

// The subcommand's help text is the doc comment of its variant in main.rs.
#[derive(clap::Args)]
pub struct Args {
    /// ONNX model (or -m MODEL); default: the bundled demonstration model.
    #[arg(value_name = "MODEL")]
    model_path: Option<PathBuf>,
    /// ONNX model, as every subcommand takes it.
    #[arg(short, long, conflicts_with = "model_path")]
    model: Option<PathBuf>,
    /// The description as text or as JSON.
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    format: SummaryFormat,
    /// Same as --format json (kept for scripts written before --format).
    #[arg(long, hide = true)]
    json: bool,
}

pub fn run(args: Args, common: &Common) -> Result<ExitCode> {
    let model = common.load_model(args.model.as_deref().or(args.model_path.as_deref()))?;
    let backend = common.backend()?;
    if args.json || args.format == SummaryFormat::Json {
        print_json(&model, &backend)?;
    } else {
        print_text(&model, &backend);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_json(model: &OnnxModel, backend: &BackendOptions) -> Result<()> {
    let v = serde_json::json!({
        "path": model.path,
        "opset": model.opset(),
        "producer": model.proto.producer_name,
        "inputs": model.inputs,
        "outputs": model.outputs,
        "ops": model.op_histogram(),
        "parameters": model.parameter_count(),
        "precision": model.precision(),
        "metadata": model.metadata,
        "kind": kind_of(model).name(),
        "pipeline": pipeline(model),
        "backend": backend_line(backend, model),
    });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

fn print_text(model: &OnnxModel, backend: &BackendOptions) {
    let dims = |d: &Option<Vec<Dim>>| {
        d.as_ref().map_or("?".into(), |d| format!("[{}]", d.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")))
    };
    println!("model      {}", model.path.display());
    println!("producer   {} {} (opset {})", model.proto.producer_name, model.proto.producer_version, model.opset());
    for i in &model.inputs {
        println!("input      {} {} {}", i.name, i.elem_type, dims(&i.dims));
    }
    for o in &model.outputs {
        println!("output     {} {} {}", o.name, o.elem_type, dims(&o.dims));
    }
    println!("parameters {}", model.parameter_count());
    println!("precision  {}", model.precision());
    let ops: Vec<String> = model.op_histogram().into_iter().map(|(k, v)| format!("{k} x{v}")).collect();
    println!("operators  {}", ops.join(", "));
    let md = &model.metadata;
    let kind = kind_of(model);
    println!("kind       {}", kind.name());
    println!("pipeline   {}", pipeline(model));
    if matches!(kind, Kind::Classifier | Kind::LocalMap) {
        println!("classes    {} (reported: {})", md.class_names.join(", "), md.class_names[md.positive_class]);
    }
    println!("backend    {}", backend_line(backend, model));
    if md.group_order > 1 || md.arch.is_some() {
        println!("group      C{}{}", md.group_order, md.arch.as_ref().map_or(String::new(), |a| format!(" ({a})")));
    }
    for (k, v) in &md.raw {
        println!("meta       {k} = {v}");
    }
}

/// What a model is for, read from its input and output shapes and metadata: it decides
/// which pipeline `info` describes and which command runs it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// [batch, 3, H, W] -> [batch, classes]: classify, heatmap.
    Classifier,
    /// [batch, 3, H, W] -> [batch, classes, h, w]: heatmap.
    LocalMap,
    /// A 3-D upsampling patch model (edgemed.upsample_scale): upsample.
    Upsampler,
    /// Part of the aging twin (edgemed.glow.*): age.
    AgingTwin,
    /// [batch, C, X, Y, Z] -> [batch, classes, X, Y, Z]: segment.
    Segmenter,
    /// Anything else: run.
    Other,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Classifier => "2-D patch classifier (classify, heatmap)",
            Kind::LocalMap => "2-D local prediction map (heatmap)",
            Kind::Upsampler => "3-D upsampling patch model (upsample)",
            Kind::AgingTwin => "part of the GLOW aging twin (age)",
            Kind::Segmenter => "3-D segmentation network (segment)",
            Kind::Other => "tensor model (run)",
        }
    }
}

fn kind_of(model: &OnnxModel) -> Kind {
    let raw = &model.metadata.raw;
    if raw.contains_key("edgemed.upsample_scale") {
        return Kind::Upsampler;
    }
    if raw.keys().any(|k| k.starts_with("edgemed.glow")) {
        return Kind::AgingTwin;
    }
    let rank = |d: Option<&Vec<Dim>>| d.map_or(0, |d| d.len());
    let (inp, out) = (rank(model.inputs.first().and_then(|i| i.dims.as_ref())), rank(model.outputs.first().and_then(|o| o.dims.as_ref())));
    match (inp, out) {
        (4, 2) if model.image_input().is_ok() => Kind::Classifier,
        (4, 4) if model.image_input().is_ok() => Kind::LocalMap,
        (5, 5) => Kind::Segmenter,
        _ => Kind::Other,
    }
}

/// The preprocessing the commands apply before this model, as its kind has it.
fn pipeline(model: &OnnxModel) -> String {
    let md = &model.metadata;
    let raw = |k: &str| md.raw.get(k).cloned().unwrap_or_else(|| "?".into());
    let input = model
        .inputs
        .first()
        .and_then(|i| i.dims.as_ref())
        .map_or("?".into(), |d| d.iter().skip(2).map(|x| x.to_string()).collect::<Vec<_>>().join("x"));
    match kind_of(model) {
        Kind::Classifier | Kind::LocalMap => format!(
            "patch {}x{} -> crop {} -> (x/255 - {:?}) / {:?}{}",
            md.patch_size,
            md.patch_size,
            md.crop_size.map_or("model input".into(), |c| c.to_string()),
            md.mean,
            md.std,
            if md.circular_mask { " -> circular mask" } else { "" }
        ),
        Kind::Upsampler => format!(
            "volume patches of {input} voxels with a halo of {} -> x{} per axis",
            raw("edgemed.receptive_halo"),
            raw("edgemed.upsample_scale")
        ),
        Kind::AgingTwin => format!("volume resampled to the model grid ({input}) -> encoder / temporal model / decoder"),
        Kind::Segmenter => format!("volume windows of {input} voxels, sliding window with overlap, blended -> label per voxel"),
        Kind::Other => format!("input tensor {input} after the batch, as given (run)"),
    }
}

/// What the chosen backend would run on: for ONNX Runtime, the library and its CUDA provider.
/// The backend that would run `model`, as the user should read it: for the INT8
/// engine, whether it covers the model (compiled here) or tract runs it, and why.
fn backend_line(opts: &BackendOptions, model: &OnnxModel) -> String {
    let kind = opts.kind.resolve(model);
    let chosen = if opts.kind == BackendKind::Auto {
        format!("auto -> {kind} ({}): ", if kind == BackendKind::Int8 { "a QDQ model" } else { "a float model" })
    } else {
        String::new()
    };
    let line = match kind {
        BackendKind::Auto => unreachable!("resolved"),
        BackendKind::Tract => "tract (CPU)".into(),
        BackendKind::Int8 => {
            let isa = edgemed_engine::kernels::Isa::detect().name();
            match edgemed_engine::Engine::new(model) {
                Ok(e) => {
                    let (int_ops, float_ops) = e.plan.counts();
                    format!(
                        "edgemed INT8 engine (CPU, {isa} kernels): {int_ops} integer ops ({:.1} MMAC), {float_ops} float ops",
                        e.plan.macs as f64 / 1e6
                    )
                }
                // Open sizes: the engine compiles the model for each input size it is run on.
                Err(edgemed_runtime::Error::Unsupported(_)) if open_sizes(model) => {
                    format!("edgemed INT8 engine (CPU, {isa} kernels), compiled for each input size it is run on (open sizes); tract where it does not cover the model")
                }
                Err(edgemed_runtime::Error::Unsupported(why)) => format!("tract (CPU): the INT8 engine does not cover this model ({why})"),
                Err(e) => format!("none: the INT8 engine refuses this model ({e})"),
            }
        }
        #[cfg(feature = "ort")]
        BackendKind::Ort => match edgemed_runtime::backend::ort::load(opts.ort_library.as_deref()) {
            Ok(path) => format!(
                "ort, library {}, CUDA provider {}",
                path.display(),
                match edgemed_runtime::backend::ort::cuda_available(None) {
                    Ok(true) => "available",
                    Ok(false) => "not available",
                    Err(_) => "unknown",
                }
            ),
            Err(e) => format!("ort, unavailable: {e}"),
        },
        #[cfg(not(feature = "ort"))]
        BackendKind::Ort => "ort, not in this build".into(),
    };
    format!("{chosen}{line}")
}

/// Whether the model's input leaves sizes after the batch open (symbolic).
fn open_sizes(model: &edgemed_runtime::model::OnnxModel) -> bool {
    model
        .inputs
        .first()
        .and_then(|i| i.dims.as_ref())
        .is_some_and(|d| d.iter().skip(1).any(|d| !matches!(d, edgemed_runtime::model::Dim::Fixed(_))))
}
