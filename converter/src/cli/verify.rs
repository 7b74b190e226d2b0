//! `edgemed verify`: compares an FP32 model and its INT8 version on patch images or
//! random inputs: SQNR per output, top-1 agreement and, for rotation-equivariant
//! models, the rotation error of each; as text or JSON.

use std::path::PathBuf;

use anyhow::Result;
use edgemed_converter::{inputs, verify};
use edgemed_runtime::model::OnnxModel;

// The subcommand's help text is the doc comment of its variant in main.rs.
#[derive(clap::Args)]
pub struct Args {
    fp32: PathBuf,
    int8: PathBuf,
    /// Patch images to run (default: --random 16, which says little about real data).
    #[arg(long, conflicts_with = "random")]
    inputs: Option<PathBuf>,
    /// This many seeded random inputs instead of images.
    #[arg(long)]
    random: Option<usize>,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
    /// Fail (non-zero exit) when any output's SQNR is below this many dB.
    #[arg(long)]
    min_sqnr: Option<f64>,
    /// Fail (non-zero exit) when the top-1 agreement is below this fraction.
    #[arg(long)]
    min_top1: Option<f64>,
}

pub fn run(args: Args) -> Result<()> {
    let a = OnnxModel::load(&args.fp32)?;
    let b = OnnxModel::load(&args.int8)?;
    let xs = match &args.inputs {
        Some(d) => inputs::from_images(&a, d, 1024)?,
        None => {
            eprintln!("edgemed: note: random inputs, not data: the figures say little about real patches (give --inputs DIR)");
            inputs::random(&a, args.random.unwrap_or(16), 1)?
        }
    };
    let rotation = a.metadata.group_order >= 4 && a.metadata.group_order % 4 == 0;
    let v = verify::verify(&a, &b, &xs, rotation)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("inputs           {}", v.inputs);
        for (name, db) in v.outputs.iter().zip(&v.sqnr_db) {
            println!("SQNR {name:<11} {db:.2} dB");
        }
        println!("top-1 agreement  {:.4}", v.top1_agreement);
        if let Some((f, q)) = v.rotation_error {
            println!("rotation error   first {f:.2e}, second {q:.2e} (max |f(rot90 x) - f(x)| / max |f(x)|)");
        }
    }
    // Thresholds make verify a gate: below them, one line and a non-zero exit.
    if let Some(min) = args.min_sqnr {
        if let Some((name, db)) = v.outputs.iter().zip(&v.sqnr_db).find(|(_, db)| db.is_nan() || **db < min) {
            anyhow::bail!("output {name}: SQNR {db:.2} dB is below --min-sqnr {min}");
        }
    }
    if let Some(min) = args.min_top1 {
        if v.top1_agreement.is_nan() || v.top1_agreement < min {
            anyhow::bail!("top-1 agreement {:.4} is below --min-top1 {min}", v.top1_agreement);
        }
    }
    Ok(())
}
