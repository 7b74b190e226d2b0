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
    /// Patch images to run (default: --random 16).
    #[arg(long, conflicts_with = "random")]
    inputs: Option<PathBuf>,
    #[arg(long)]
    random: Option<usize>,
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let a = OnnxModel::load(&args.fp32)?;
    let b = OnnxModel::load(&args.int8)?;
    let xs = match args.inputs {
        Some(d) => inputs::from_images(&a, &d, 1024)?,
        None => inputs::random(&a, args.random.unwrap_or(16), 1)?,
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
    Ok(())
}
