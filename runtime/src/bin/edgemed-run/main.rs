//! edgemed-run: the device binary. Classifies PCam patches, describes models,
//! and benchmarks them. Every failure is one line on stderr and a non-zero exit.
//! This file holds the global options, the logging set-up, the error-to-exit-code
//! handling and the dispatch; each subcommand (its options and its work) lives in
//! a module of its own, and what several of them share in `common`.

mod age;
mod bench;
mod brain_age;
mod classify;
mod common;
mod heatmap;
mod info;
mod run;
mod segment;
mod upsample;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use common::Common;
use edgemed_runtime::backend::{BackendKind, BackendOptions, Device, OptLevel};
use edgemed_runtime::budget;
use edgemed_runtime::formats::manifest::IntegrityPolicy;

/// The backend without --backend: the INT8 engine for QDQ models, tract for float ones.
const DEFAULT_BACKEND: &str = "auto";

#[derive(Parser)]
#[command(
    name = "edgemed-run",
    version,
    about = "Run edgemed models on device: PCam patches, slide regions, volumes (segmentation, upsampling, aging), model info, benchmarks",
    subcommand_required = true,
    arg_required_else_help = true
)]
struct Cli {
    /// More logging (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Backend: auto (default: edgemed's integer engine for QDQ models, tract for float ones),
    /// int8 (the engine; tract for what it does not cover, logged), tract (pure Rust) or ort
    /// (ONNX Runtime); bench takes a list (auto,tract,ort,int8).
    #[arg(long, global = true, default_value = DEFAULT_BACKEND, value_delimiter = ',')]
    backend: Vec<String>,
    /// cpu, cuda, cuda:ID, or auto (CUDA when ONNX Runtime has the provider, else CPU).
    #[arg(long, global = true, default_value = "auto")]
    device: String,
    /// Fail when the requested device is unavailable instead of falling back to the CPU.
    #[arg(long, global = true)]
    strict_device: bool,
    /// ONNX Runtime library (file or folder); default: ORT_DYLIB_PATH, then next to this binary.
    #[arg(long, global = true, value_name = "PATH")]
    ort_lib: Option<PathBuf>,
    /// ONNX Runtime graph optimisation: disable, basic, extended or all.
    #[arg(long, global = true, default_value = "all")]
    ort_opt_level: String,
    /// Refuse models and inputs whose declared sizes (weights, input, peak activations)
    /// exceed this, e.g. 512M, 2G; 0 or none: no limit.
    #[arg(long, global = true, default_value = "1G", value_name = "SIZE")]
    memory_budget: String,
    /// Model manifest to check models against (default: edgemed-manifest.json beside the model, if any).
    #[arg(long, global = true, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// Refuse models that no manifest lists.
    #[arg(long, global = true)]
    require_manifest: bool,
    #[command(subcommand)]
    command: Command,
}

// The doc comments here are the subcommands' help texts; each one's options are in its module.
#[derive(Subcommand)]
enum Command {
    /// Classify PCam patches (files, directories, glob patterns): probability of metastatic tissue.
    Classify(classify::Args),
    /// Probability map over a large image (a slide region): overlay PNG, raw map (.npy), summary.
    Heatmap(heatmap::Args),
    /// Segment a volume (NIfTI) with a segmentation network run by sliding window
    /// (MONAI's sliding_window_inference semantics); writes a uint8 label map with the
    /// input's affine.
    Segment(segment::Args),
    /// Super-resolve a volume (NIfTI) with an upsampling patch model (3-D ESPCN from
    /// `edgemed export espcn3d`), patch by patch; writes the volume at r times the
    /// resolution with the matching affine.
    Upsample(upsample::Args),
    /// Predict aging with the GLOW digital twin: x+ = G^-1(P^n(G(x))) on the model grid;
    /// prints the volume of each tracked intensity band per year.
    Age(age::Args),
    /// Brain age and sex from a T1 MRI with a 3-D BagNet local-map model: the subject's
    /// prediction and its local maps (NIfTI in the input's space, PNG, JSON/CSV), tile by tile.
    BrainAge(brain_age::Args),
    /// Describe a model: inputs, outputs, operators, parameters, precision, metadata.
    Info(info::Args),
    /// Run a model on one input tensor and write its outputs, or check them against
    /// outputs written elsewhere (e.g. on the host): `--expect DIR`.
    Run(run::Args),
    /// Measure latency (p50/p90/p99), throughput and peak memory; with --quantized, the
    /// FP32 model and its INT8 version side by side (speed-up against ONNX Runtime INT8).
    Bench(bench::Args),
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing to a closed pipe (`edgemed-run classify ... | head`)
    // would fail every later write; a command-line tool ends quietly instead, as cat does.
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to its default, before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    edgemed_runtime::parallel::keep_freed_memory();
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).format_timestamp(None).init();
    match common_options(&cli).and_then(|common| dispatch(cli.command, &common)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgemed-run: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn dispatch(command: Command, common: &Common) -> Result<ExitCode> {
    match command {
        Command::Classify(args) => classify::run(args, common),
        Command::Heatmap(args) => heatmap::run(args, common),
        Command::Segment(args) => segment::run(args, common),
        Command::Upsample(args) => upsample::run(args, common),
        Command::Age(args) => age::run(args, common),
        Command::BrainAge(args) => brain_age::run(args, common),
        Command::Info(args) => info::run(args, common),
        Command::Run(args) => run::run(args, common),
        Command::Bench(args) => bench::run(args, common),
    }
}

/// The global options every subcommand sees: the memory budget first, then the backends.
fn common_options(cli: &Cli) -> Result<Common> {
    let memory_budget = budget::parse_bytes(&cli.memory_budget)?;
    let integrity = IntegrityPolicy { manifest: cli.manifest.clone(), require: cli.require_manifest };
    Ok(Common { backends: backend_options(cli, memory_budget)?, integrity, memory_budget })
}

/// The backends named on the command line (bench may take several), with the shared options.
fn backend_options(cli: &Cli, memory_budget: u64) -> Result<Vec<BackendOptions>> {
    let device: Device = cli.device.parse()?;
    let opt_level: OptLevel = cli.ort_opt_level.parse()?;
    cli.backend
        .iter()
        .map(|b| {
            Ok(BackendOptions {
                kind: b.parse::<BackendKind>()?,
                device,
                strict_device: cli.strict_device,
                ort_library: cli.ort_lib.clone(),
                intra_threads: 0,
                opt_level,
                memory_budget,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand and every argument a user can see says what it is for.
    #[test]
    fn every_argument_and_subcommand_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let builtin = matches!(a.get_id().as_str(), "help" | "version");
                if !builtin && !a.is_hide_set() && a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {}", a.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_name() == "help" {
                    continue;
                }
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {} (the subcommand)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "edgemed-run", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
        super::Cli::command().debug_assert();
    }
}
