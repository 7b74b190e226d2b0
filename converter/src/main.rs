//! edgemed: the host CLI. `quantize` turns FP32 ONNX into INT8 QDQ ONNX without
//! data (DFQ), `inspect` shows per-layer weight ranges before and after
//! equalization, `verify` compares an FP32 and an INT8 model, `export` builds the
//! reference architectures. This file parses the command line, sets up logging,
//! turns errors into the exit status and dispatches; each subcommand lives in a
//! module of its own under `cli/`.

mod cli;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use cli::{export, inspect, manifest, quantize, verify};

#[derive(Parser)]
#[command(
    name = "edgemed",
    version,
    about = "edgemed host converter: quantize ONNX models, inspect and verify them, export reference architectures"
)]
struct Cli {
    /// More logging (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

// The doc comments here are the subcommands' help texts; each one's options are in its module.
#[derive(Subcommand)]
enum Command {
    /// Quantize an FP32 ONNX model to INT8 (QDQ) with data-free quantization.
    Quantize(quantize::Args),
    /// Per layer: operator, weight shape, per-channel weight ranges before and after equalization.
    Inspect(inspect::Args),
    /// Compare an FP32 model and its INT8 version: SQNR, top-1 agreement, rotation invariance.
    Verify(verify::Args),
    /// Export a reference architecture to ONNX, or rewrite a classifier into a local prediction map.
    Export(export::Args),
    /// Record models in the edgemed-manifest.json beside them (name, version, SHA-256, inputs), for
    /// models made elsewhere; the converter records the models it writes itself.
    Manifest(manifest::Args),
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing to a closed pipe (`edgemed inspect m.onnx | head`)
    // would panic; a command-line tool ends quietly instead, as cat and grep do.
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to its default, before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    // As edgemed-run: no timestamps (a CLI's lines are read as they come); RUST_LOG still wins.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).format_timestamp(None).init();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgemed: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Manifest(args) => manifest::run(args),
        Command::Quantize(args) => quantize::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Export(args) => export::run(args),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Arguments and subcommands under `c` that a user sees without a help text (clap's own
    /// help and version aside), as "edgemed export unet --window".
    fn without_help(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
        let empty = |s: Option<&clap::builder::StyledStr>| s.is_none_or(|s| s.to_string().trim().is_empty());
        for a in c.get_arguments() {
            let id = a.get_id().as_str();
            if a.is_hide_set() || id == "help" || id == "version" {
                continue;
            }
            if empty(a.get_help()) && empty(a.get_long_help()) {
                let name = a.get_long().map(|l| format!("--{l}")).unwrap_or_else(|| id.to_uppercase());
                missing.push(format!("{path} {name}"));
            }
        }
        for s in c.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
            let sub = format!("{path} {}", s.get_name());
            if empty(s.get_about()) && empty(s.get_long_about()) {
                missing.push(sub.clone());
            }
            without_help(s, &sub, missing);
        }
    }

    #[test]
    fn every_argument_and_subcommand_has_help() {
        let mut cli = super::Cli::command();
        cli.build();
        let mut missing = Vec::new();
        without_help(&cli, "edgemed", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:#?}");
    }
}
