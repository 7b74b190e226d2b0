//! `edgemed-run run`: runs a model on one input tensor (float32 .npy or raw) and
//! writes its outputs as .npy (with `made_by.json`, the record of what made them,
//! beside them), or checks them against outputs written elsewhere (e.g. on the host)
//! with `--expect DIR`; exit status 1 when one differs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use edgemed_runtime::backend::BackendOptions;
use edgemed_runtime::formats::provenance::Provenance;
use edgemed_runtime::formats::tensors;
use edgemed_runtime::fsutil::{self, Existing};
use edgemed_runtime::model::OnnxModel;

use crate::common::Common;

// The subcommand's help text is the doc comment of its variant in main.rs.
#[derive(clap::Args)]
pub struct Args {
    /// ONNX model (or -m MODEL).
    #[arg(value_name = "MODEL", required_unless_present = "model")]
    model_path: Option<PathBuf>,
    /// ONNX model, as every subcommand takes it.
    #[arg(short, long, conflicts_with = "model_path")]
    model: Option<PathBuf>,
    /// Input tensor: float32 .npy, or raw little-endian float32 in the model's declared input
    /// shape; a model with several inputs takes one --input each, in the graph's order.
    #[arg(short, long, required = true)]
    input: Vec<PathBuf>,
    /// Write each output as OUTPUT_DIR/<output name>.npy (atomically), and made_by.json.
    #[arg(long, value_name = "OUTPUT_DIR")]
    output_dir: Option<PathBuf>,
    /// Replace output files already in OUTPUT_DIR (they are kept otherwise).
    #[arg(long)]
    force: bool,
    /// Compare each output with DIR/<output name>.npy; exit status 1 when one differs.
    #[arg(long)]
    expect: Option<PathBuf>,
    /// Largest absolute difference accepted by --expect; 0 (default) demands identical bits.
    #[arg(long, default_value_t = 0.0)]
    tolerance: f64,
}

pub fn run(args: Args, common: &Common) -> Result<ExitCode> {
    let model_path = args.model.as_deref().or(args.model_path.as_deref()).expect("clap requires one");
    let model = common.load_model(Some(model_path))?;
    let opts = common.backend()?;
    anyhow::ensure!(args.tolerance >= 0.0, "--tolerance must not be negative");
    anyhow::ensure!(args.output_dir.is_some() || args.expect.is_some(), "nothing to do: give --output-dir, --expect, or both");
    // Before the run: every file it writes is checked (never the input or the model, never an earlier result without --force).
    let names: Vec<String> = model.outputs.iter().map(|o| o.name.clone()).collect();
    if let Some(dir) = &args.output_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut files: Vec<PathBuf> = names.iter().map(|n| tensors::output_file(dir, n)).collect();
        files.push(dir.join("made_by.json"));
        let files: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        let inputs: Vec<&Path> = args.input.iter().map(PathBuf::as_path).chain([model_path]).collect();
        fsutil::check_outputs(&files, &inputs, Existing::from_flags(args.force, false))?;
    }
    let made_by = common.volume_provenance(&model, &opts, String::new())?;
    run_tensor(&model, &args, &names, &opts, &made_by)
}

fn run_tensor(model: &OnnxModel, args: &Args, names: &[String], opts: &BackendOptions, made_by: &Provenance) -> Result<ExitCode> {
    let (expect, tolerance) = (args.expect.as_deref(), args.tolerance);
    let declared: Vec<&str> = model.inputs.iter().map(|i| i.name.as_str()).collect();
    anyhow::ensure!(
        args.input.len() == declared.len(),
        "the model takes {} input{} ({}); give --input once for each, in that order",
        declared.len(),
        if declared.len() == 1 { "" } else { "s" },
        declared.join(", ")
    );
    let xs =
        args.input.iter().enumerate().map(|(i, p)| tensors::read_input_at(p, model, i)).collect::<edgemed_runtime::Result<Vec<_>>>()?;
    let shapes: Vec<Vec<usize>> = xs.iter().map(|x| x.shape().to_vec()).collect();
    let backend = edgemed_runtime::backend::create_with_inputs(model, &shapes, opts)?;
    let outputs = backend.run_inputs(xs)?;
    anyhow::ensure!(outputs.len() == names.len(), "the model declares {} outputs and produced {}", names.len(), outputs.len());
    if let Some(dir) = &args.output_dir {
        for (name, y) in names.iter().zip(&outputs) {
            let path = tensors::output_file(dir, name);
            tensors::write_npy(&path, y)?;
            println!("wrote    {} {:?} -> {}", name, y.shape(), path.display());
        }
        let record = dir.join("made_by.json");
        fsutil::write_atomic(&record, format!("{}\n", serde_json::to_string_pretty(made_by)?).as_bytes())?;
        println!("wrote    what made them -> {}", record.display());
    }
    let mut all_within = true;
    if let Some(dir) = expect {
        for (name, y) in names.iter().zip(&outputs) {
            let reference = tensors::read_npy(&tensors::output_file(dir, name))?;
            let c = tensors::compare(&reference, y)?;
            let ok = c.within(tolerance);
            all_within &= ok;
            println!(
                "{}  {}: {} of {} elements differ, max |diff| {:.3e} (element {}), tolerance {}",
                if ok { "same   " } else { "DIFFERS" },
                name,
                c.differing,
                c.elements,
                c.max_abs_diff,
                c.worst,
                if tolerance == 0.0 { "identical bits".to_string() } else { format!("{tolerance:e}") }
            );
        }
    }
    Ok(if all_within { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
