//! edgemed: the host CLI. `export` builds reference architectures as ONNX.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use edgemed_models::eq_mobilenet_v2::{self, Config};
use edgemed_models::weights::Weights;

#[derive(Parser)]
#[command(name = "edgemed", version, about = "edgemed host converter: export reference architectures to ONNX")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Export a reference architecture to ONNX.
    #[command(subcommand)]
    Export(Export),
}

#[derive(Subcommand)]
enum Export {
    /// Rotation-equivariant MobileNetV2 for C_N (see models/EQ_MOBILENET_V2.md for tensor names).
    EqMobilenetV2 {
        /// Base weights (safetensors); settings stored in its metadata override the flags.
        #[arg(long, conflicts_with = "seed")]
        weights: Option<PathBuf>,
        /// Seeded initialisation instead of weights.
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, default_value_t = 4)]
        group_order: usize,
        #[arg(long, default_value_t = 1.0)]
        width: f32,
        #[arg(long, default_value_t = 95)]
        input_size: usize,
        /// Fold batch norm into the convolutions.
        #[arg(long)]
        fold_bn: bool,
        /// Also write the base weights used (useful with --seed).
        #[arg(long)]
        save_weights: Option<PathBuf>,
        #[arg(short, long)]
        output: PathBuf,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgemed: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Export(Export::EqMobilenetV2 { weights, seed, group_order, width, input_size, fold_bn, save_weights, output }) => {
            let cfg = Config { group_order, width, input_size, fold_batch_norm: fold_bn, ..Config::default() };
            let (cfg, w) = match weights {
                Some(path) => {
                    let w = Weights::load(&path)?;
                    let cfg = cfg.with_weights_metadata(&w.metadata, &path.display().to_string())?;
                    eq_mobilenet_v2::check_weights(&cfg, &w, &path.display().to_string())?;
                    (cfg, w)
                }
                None => {
                    let w = eq_mobilenet_v2::init_weights(&cfg, seed.unwrap_or(0))?;
                    (cfg, w)
                }
            };
            let model = eq_mobilenet_v2::build_onnx(&cfg, &w)?;
            edgemed_converter::export::save_verified(&model, &output).with_context(|| format!("exporting {}", output.display()))?;
            if let Some(p) = save_weights {
                w.save(&p)?;
            }
            let params: usize = w.tensors.values().map(|t| t.data.len()).sum();
            eprintln!("wrote {} (C{} width {} , {} base parameters)", output.display(), cfg.group_order, cfg.width, params);
            Ok(())
        }
    }
}
