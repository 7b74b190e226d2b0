//! `edgemed-run run`: runs a model on one input tensor (float32 .npy or raw) and
//! writes its outputs as .npy, or checks them against outputs written elsewhere
//! (e.g. on the host) with `--expect DIR`; exit status 1 when one differs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use edgemed_runtime::backend::BackendOptions;
use edgemed_runtime::formats::tensors;
use edgemed_runtime::model::OnnxModel;

use crate::common::Common;

// The subcommand's help text is the doc comment of its variant in main.rs.
#[derive(clap::Args)]
pub struct Args {
    /// ONNX model.
    model: PathBuf,
    /// Input tensor: float32 .npy, or raw little-endian float32 in the model's declared input shape.
    #[arg(short, long)]
    input: PathBuf,
    /// Write each output as OUTPUT_DIR/<output name>.npy (atomically).
    #[arg(short, long)]
    output_dir: Option<PathBuf>,
    /// Compare each output with DIR/<output name>.npy; exit status 1 when one differs.
    #[arg(long)]
    expect: Option<PathBuf>,
    /// Largest absolute difference accepted by --expect; 0 (default) demands identical bits.
    #[arg(long, default_value_t = 0.0)]
    tolerance: f64,
}

pub fn run(args: Args, common: &Common) -> Result<ExitCode> {
    let model = common.load_model(Some(&args.model))?;
    run_tensor(&model, &args.input, args.output_dir.as_deref(), args.expect.as_deref(), args.tolerance, &common.backend()?)
}

fn run_tensor(
    model: &OnnxModel,
    input: &Path,
    output_dir: Option<&Path>,
    expect: Option<&Path>,
    tolerance: f64,
    opts: &BackendOptions,
) -> Result<ExitCode> {
    anyhow::ensure!(tolerance >= 0.0, "--tolerance must not be negative");
    anyhow::ensure!(output_dir.is_some() || expect.is_some(), "nothing to do: give --output-dir, --expect, or both");
    let x = tensors::read_input(input, model)?;
    let backend = edgemed_runtime::backend::create(model, x.shape(), opts)?;
    let outputs = backend.run(x)?;
    let names: Vec<String> =
        (0..outputs.len()).map(|i| model.outputs.get(i).map_or_else(|| format!("output{i}"), |o| o.name.clone())).collect();
    if let Some(dir) = output_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, y) in names.iter().zip(&outputs) {
            let path = tensors::output_file(dir, name);
            tensors::write_npy(&path, y)?;
            println!("wrote    {} {:?} -> {}", name, y.shape(), path.display());
        }
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
