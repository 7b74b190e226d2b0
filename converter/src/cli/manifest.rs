//! `edgemed manifest`: records models made elsewhere in the edgemed-manifest.json
//! beside them (name, version, SHA-256, inputs); the converter records the models it
//! writes itself.

use std::path::PathBuf;

use anyhow::{Context, Result};

// The subcommand's help text is the doc comment of its variant in main.rs.
#[derive(clap::Args)]
pub struct Args {
    /// ONNX models to record in the edgemed-manifest.json beside each.
    #[arg(required = true, value_name = "MODEL")]
    models: Vec<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    for path in args.models {
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let model = edgemed_runtime::model::OnnxModel::from_bytes(&path, &bytes)?;
        let manifest = edgemed_runtime::formats::manifest::Manifest::record(&path, &bytes, &model)?;
        eprintln!("recorded {} in {}", path.display(), manifest.display());
    }
    Ok(())
}
