//! `edgemed export bagnet3d`: the 3-D BagNet for brain age and sex (models crate,
//! `edgemed_models::bagnet3d`) from a safetensors state_dict or a seed. Lives apart
//! from `export.rs`, which only names the subcommand and calls [`run`].

use std::path::PathBuf;

use anyhow::{Context, Result};
use edgemed_models::bagnet3d::{self, Config, Norm};
use edgemed_models::weights::Weights;

#[derive(clap::Args)]
pub struct Args {
    /// Weights (safetensors, names in models/BAGNET3D.md); width, heads and
    /// normalisation come from its tensors, the receptive field from its metadata.
    #[arg(long, conflicts_with = "seed", required_unless_present = "seed")]
    weights: Option<PathBuf>,
    /// Seeded initialisation instead of weights.
    #[arg(long)]
    seed: Option<u64>,
    /// Receptive field: 9, 17 or 33 (BagNet-9, -17, -33).
    #[arg(long, default_value_t = 17)]
    receptive_field: usize,
    /// age (1 output), sex (2 logits) or both (age, then the sex logits).
    #[arg(long, default_value = "both", value_parser = ["age", "sex", "both"])]
    heads: String,
    /// Base width (ResNet-50's 64 halved, as in the paper: 32).
    #[arg(long, default_value_t = 32)]
    width: usize,
    /// instance (per-subject statistics, the paper's) or running (stored statistics:
    /// every map value depends on its receptive field alone, so maps can be tiled).
    #[arg(long, default_value = "instance")]
    norm: String,
    /// Fix the spatial input size X,Y,Z; default: any size.
    #[arg(long, value_delimiter = ',', value_name = "X,Y,Z")]
    window: Option<Vec<usize>>,
    /// Also write the base weights used (safetensors; useful with --seed).
    #[arg(long, value_name = "FILE")]
    save_weights: Option<PathBuf>,
    /// The model to write (checked to load, recorded in the edgemed-manifest.json beside it).
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Replace output files that exist (by default an earlier result is kept).
    #[arg(long)]
    force: bool,
}

pub fn run(a: Args) -> Result<()> {
    // Before any weights are read: the outputs destroy nothing.
    let outputs: Vec<&std::path::Path> = std::iter::once(a.output.as_path()).chain(a.save_weights.as_deref()).collect();
    super::check_outputs(&outputs, &a.weights.as_deref().into_iter().collect::<Vec<_>>(), a.force)?;
    let window = match a.window.as_deref() {
        None => None,
        Some([x, y, z]) => Some([*x, *y, *z]),
        Some(_) => anyhow::bail!("--window takes three sizes X,Y,Z"),
    };
    let norm: Norm = a.norm.parse()?;
    let cfg = Config {
        receptive_field: a.receptive_field,
        width: a.width,
        age: a.heads != "sex",
        sex: a.heads != "age",
        norm,
        window,
        ..Config::default()
    };
    let loaded = a.weights.as_ref().map(|p| Weights::load(p).map(|w| (w, p.display().to_string()))).transpose()?;
    let cfg = match &loaded {
        Some((w, file)) => cfg.with_weights(w, file)?,
        None => cfg,
    };
    let (model, used) = bagnet3d::build_onnx(&cfg, loaded.as_ref().map(|(w, f)| (w, f.as_str())), a.seed.unwrap_or(0))?;
    edgemed_converter::export::save_verified(&model, &a.output).with_context(|| format!("exporting {}", a.output.display()))?;
    if let Some(p) = &a.save_weights {
        used.save(p)?;
    }
    let params: usize = used.tensors.values().map(|t| t.data.len()).sum();
    eprintln!(
        "wrote {} (BagNet-{} 3-D, width {}, heads {}, {} norm, {} parameters; map stride {})",
        a.output.display(),
        cfg.receptive_field,
        cfg.width,
        cfg.outputs().join(","),
        cfg.norm.name(),
        params,
        bagnet3d::STRIDE
    );
    Ok(())
}
