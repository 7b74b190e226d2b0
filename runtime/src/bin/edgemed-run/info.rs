//! `edgemed-run info`: describes a model (inputs, outputs, operators, parameters,
//! precision, the preprocessing pipeline and metadata it declares) and the backend
//! it would run on, as text or JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use edgemed_runtime::backend::{BackendKind, BackendOptions};
use edgemed_runtime::model::{Dim, OnnxModel};

use crate::common::Common;

// The subcommand's help text is the doc comment of its variant in main.rs.
#[derive(clap::Args)]
pub struct Args {
    /// ONNX model; default: the bundled demonstration model.
    model: Option<PathBuf>,
    /// Print the description as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, common: &Common) -> Result<ExitCode> {
    let model = common.load_model(args.model.as_deref())?;
    let backend = common.backend()?;
    if args.json {
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
    println!(
        "pipeline   patch {}x{} -> crop {} -> (x/255 - {:?}) / {:?}{}",
        md.patch_size,
        md.patch_size,
        md.crop_size.map_or("model input".into(), |c| c.to_string()),
        md.mean,
        md.std,
        if md.circular_mask { " -> circular mask" } else { "" }
    );
    println!("classes    {} (reported: {})", md.class_names.join(", "), md.class_names[md.positive_class]);
    println!("backend    {}", backend_line(backend, model));
    println!("group      C{}{}", md.group_order, md.arch.as_ref().map_or(String::new(), |a| format!(" ({a})")));
    for (k, v) in &md.raw {
        println!("meta       {k} = {v}");
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
