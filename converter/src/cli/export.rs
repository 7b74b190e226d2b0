//! `edgemed export`: writes the reference architectures of `edgemed-models` as ONNX
//! (the rotation-equivariant MobileNetV2, MONAI-shaped U-Nets, the GLOW aging twin,
//! 3-D ESPCN), from weights or a seeded initialisation, or rewrites a classifier into
//! a local prediction map with `--local-map`. Every model is checked to load before
//! it is renamed into place.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use edgemed_converter::graph::Graph;
use edgemed_models::eq_mobilenet_v2::{self, Config};
use edgemed_models::weights::Weights;
use edgemed_models::{espcn3d, glow3d, unet};

// The subcommand's help text is the doc comment of its variant in main.rs.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_required = false)]
pub struct Args {
    #[command(subcommand)]
    arch: Option<Arch>,
    /// Rewrite IN.onnx (global pooling -> linear classifier) into a model whose output is the
    /// map of local logits (BagNet style); the map's spatial mean equals the original logits.
    #[arg(long, value_name = "IN.onnx", requires = "output")]
    local_map: Option<PathBuf>,
    #[arg(short, long)]
    output: Option<PathBuf>,
}

// The doc comments here are the architectures' help texts; their options follow.
#[derive(Subcommand)]
enum Arch {
    /// Rotation-equivariant MobileNetV2 for C_N (see models/EQ_MOBILENET_V2.md for tensor names).
    EqMobilenetV2(EqMobilenetV2Args),
    /// MONAI-shaped 2-D / 3-D U-Net from a MONAI state_dict saved as safetensors (MONAI's
    /// parameter names; see models/src/unet.rs).
    Unet(UnetArgs),
    /// The aging twin: 3-D GLOW encoder, analytic decoder and temporal latent model from
    /// one weight file, written as DIR/encoder.onnx, DIR/decoder.onnx, DIR/temporal.onnx
    /// (tensor names in models/src/glow3d.rs). `edgemed-run age -m DIR` runs them.
    AgingTwin(AgingTwinArgs),
    /// 3-D ESPCN super-resolution (valid convolutions + 3-D pixel shuffle) for a fixed
    /// patch; tensor names in models/src/espcn3d.rs.
    Espcn3d(Espcn3dArgs),
    /// 3-D BagNet (ResNet-50, receptive field 9, 17 or 33) for brain age and sex from T1 MRI;
    /// tensor names in models/BAGNET3D.md.
    Bagnet3d(super::bagnet3d::Args),
}

#[derive(clap::Args)]
struct EqMobilenetV2Args {
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
}

#[derive(clap::Args)]
struct UnetArgs {
    /// MONAI UNet state_dict (safetensors). Its metadata key "constructor" (JSON of the
    /// UNet arguments) gives the settings unless --constructor does.
    #[arg(long, conflicts_with = "seed")]
    weights: Option<PathBuf>,
    /// Seeded initialisation instead of weights.
    #[arg(long)]
    seed: Option<u64>,
    /// The UNet constructor arguments as JSON, e.g.
    /// '{"spatial_dims":3,"in_channels":1,"out_channels":2,"channels":[16,32,64],"strides":[2,2],"num_res_units":2}'
    /// (default with --seed: MONAI's tutorial 3-D network).
    #[arg(long)]
    constructor: Option<String>,
    /// Fix the spatial input size (e.g. 96,96,96); default: any size divisible by the strides.
    #[arg(long, value_delimiter = ',')]
    window: Option<Vec<usize>>,
    #[arg(long)]
    save_weights: Option<PathBuf>,
    #[arg(short, long)]
    output: PathBuf,
}

#[derive(clap::Args)]
struct AgingTwinArgs {
    /// Weights (safetensors with in_channels/levels/steps/width/temporal_* metadata).
    #[arg(long, conflicts_with = "seed")]
    weights: Option<PathBuf>,
    /// Seeded initialisation (architecture from the flags below).
    #[arg(long)]
    seed: Option<u64>,
    /// Model grid X,Y,Z (or one size); each a multiple of 2^levels.
    #[arg(long, default_value = "128", value_delimiter = ',')]
    grid: Vec<usize>,
    #[arg(long, default_value_t = 3)]
    levels: usize,
    #[arg(long, default_value_t = 4)]
    steps: usize,
    /// Hidden width of the coupling networks.
    #[arg(long, default_value_t = 16)]
    width: usize,
    /// Temporal model widths, one per level.
    #[arg(long, default_value = "16,32,64", value_delimiter = ',')]
    temporal_widths: Vec<usize>,
    /// Temporal model depths (convolutions), one per level.
    #[arg(long, default_value = "2,2,2", value_delimiter = ',')]
    temporal_depths: Vec<usize>,
    /// Volume intensities LO,HI that map to the model's [-0.5, 0.5] (default: the CT window 0..255).
    #[arg(long, default_value = "0,255", value_delimiter = ',')]
    intensity_range: Vec<f32>,
    #[arg(long)]
    save_weights: Option<PathBuf>,
    /// Output directory.
    #[arg(short, long)]
    output: PathBuf,
}

#[derive(clap::Args)]
struct Espcn3dArgs {
    /// Base weights (safetensors with kernels/channels/scale metadata).
    #[arg(long, conflicts_with = "seed")]
    weights: Option<PathBuf>,
    /// Seeded initialisation (default architecture: kernels 3,1,3, widths 16,8, rate 2).
    #[arg(long)]
    seed: Option<u64>,
    /// Interior patch per axis (the model's input adds the halo on both sides), e.g. 16 or 16,16,8.
    #[arg(long, default_value = "16", value_delimiter = ',')]
    patch: Vec<usize>,
    /// Also write the base weights used (useful with --seed).
    #[arg(long)]
    save_weights: Option<PathBuf>,
    #[arg(short, long)]
    output: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    match args {
        Args { arch: None, local_map: Some(input), output: Some(output) } => write_local_map(&input, &output),
        Args { arch: None, .. } => {
            anyhow::bail!("export needs an architecture (eq-mobilenet-v2, espcn3d) or --local-map IN.onnx -o OUT.onnx")
        }
        Args { arch: Some(Arch::AgingTwin(a)), .. } => write_aging_twin(a),
        Args { arch: Some(Arch::Unet(a)), .. } => write_unet(a),
        Args { arch: Some(Arch::Espcn3d(a)), .. } => write_espcn3d(a),
        Args { arch: Some(Arch::EqMobilenetV2(a)), .. } => write_eq_mobilenet_v2(a),
        Args { arch: Some(Arch::Bagnet3d(a)), .. } => super::bagnet3d::run(a),
    }
}

/// Writes an exported model (loaded and checked before the rename) and, when asked, the weights it came from.
fn write_export(model: &edgemed_onnx::pb::ModelProto, output: &Path, weights: &Weights, save_weights: Option<&Path>) -> Result<()> {
    edgemed_converter::export::save_verified(model, output).with_context(|| format!("exporting {}", output.display()))?;
    if let Some(p) = save_weights {
        weights.save(p)?;
    }
    Ok(())
}

/// One size for all three axes, or three (X,Y,Z); `what` names the flag in the error.
fn three_sizes(sizes: &[usize], what: &str) -> Result<[usize; 3]> {
    Ok(match sizes {
        [s] => [*s; 3],
        [a, b, c] => [*a, *b, *c],
        _ => anyhow::bail!("{what} takes one size or three (X,Y,Z)"),
    })
}

fn write_local_map(input: &Path, output: &Path) -> Result<()> {
    let mut g = Graph::load(input)?;
    let r = edgemed_converter::local_map::to_local_map(&mut g).with_context(|| format!("{}: no local map", input.display()))?;
    edgemed_converter::export::save_verified(&g.model, output).with_context(|| format!("writing {}", output.display()))?;
    eprintln!(
        "wrote {}: output {} = 1x1 convolution of {} ({} classes){}",
        output.display(),
        r.output,
        r.features,
        r.classes,
        if r.dropped_qdq > 0 {
            format!("; {} quantize/dequantize nodes of the pooled vector dropped", r.dropped_qdq)
        } else {
            String::new()
        }
    );
    Ok(())
}

fn write_aging_twin(a: AgingTwinArgs) -> Result<()> {
    let grid = three_sizes(&a.grid, "--grid")?;
    let [lo, hi] = a.intensity_range.as_slice() else { anyhow::bail!("--intensity-range takes LO,HI") };
    anyhow::ensure!(hi > lo, "--intensity-range {lo},{hi}: HI must exceed LO");
    let mut cfg = glow3d::Config {
        levels: a.levels,
        steps: a.steps,
        width: a.width,
        temporal_widths: a.temporal_widths,
        temporal_depths: a.temporal_depths,
        grid,
        intensity_scale: 1.0 / (hi - lo),
        intensity_offset: -lo / (hi - lo) - 0.5,
        ..glow3d::Config::default()
    };
    let loaded = a.weights.as_ref().map(|p| Weights::load(p).map(|w| (w, p.display().to_string()))).transpose()?;
    if let Some((w, file)) = &loaded {
        cfg = cfg.with_weights_metadata(&w.metadata, file)?;
    }
    let twin = glow3d::build(&cfg, loaded.as_ref().map(|(w, f)| (w, f.as_str())), a.seed.unwrap_or(0))?;
    let output = &a.output;
    std::fs::create_dir_all(output).with_context(|| format!("creating {}", output.display()))?;
    for (name, model) in [("encoder", &twin.encoder), ("decoder", &twin.decoder), ("temporal", &twin.temporal)] {
        let path = output.join(format!("{name}.onnx"));
        edgemed_converter::export::save_verified(model, &path).with_context(|| format!("exporting {}", path.display()))?;
    }
    if let Some(p) = a.save_weights {
        twin.weights.save(&p)?;
    }
    let params: usize = twin.weights.tensors.values().map(|t| t.data.len()).sum();
    eprintln!(
        "wrote {}/{{encoder,decoder,temporal}}.onnx (grid {:?}, {} levels x {} steps, latent {} values, {} parameters)",
        output.display(),
        cfg.grid,
        cfg.levels,
        cfg.steps,
        cfg.latent_len(),
        params
    );
    Ok(())
}

fn write_unet(a: UnetArgs) -> Result<()> {
    let loaded = a.weights.as_ref().map(|p| Weights::load(p).map(|w| (w, p.display().to_string()))).transpose()?;
    let json = match (&a.constructor, &loaded) {
        (Some(j), _) => Some(j.clone()),
        (None, Some((w, file))) => Some(
            w.metadata
                .get("constructor")
                .cloned()
                .with_context(|| format!("{file} has no \"constructor\" metadata: give the UNet arguments with --constructor"))?,
        ),
        (None, None) => None,
    };
    let mut cfg = match json {
        Some(j) => unet::Config::from_constructor_json(&j)?,
        None => unet::Config::default(),
    };
    cfg.window = a.window;
    let (model, used) = unet::build_onnx(&cfg, loaded.as_ref().map(|(w, f)| (w, f.as_str())), a.seed.unwrap_or(0))?;
    write_export(&model, &a.output, &used, a.save_weights.as_deref())?;
    let params: usize = used.tensors.values().map(|t| t.data.len()).sum();
    eprintln!(
        "wrote {} ({}-D U-Net, channels {:?}, {} parameters, input sizes multiple of {})",
        a.output.display(),
        cfg.spatial_dims,
        cfg.channels,
        params,
        cfg.downsampling()
    );
    Ok(())
}

fn write_espcn3d(a: Espcn3dArgs) -> Result<()> {
    let patch = three_sizes(&a.patch, "--patch")?;
    let (cfg, w) = match a.weights {
        Some(path) => {
            let w = Weights::load(&path)?;
            let cfg = espcn3d::Config::from_weights_metadata(&w.metadata, patch, &path.display().to_string())?;
            espcn3d::check_weights(&cfg, &w, &path.display().to_string())?;
            (cfg, w)
        }
        None => {
            let cfg = espcn3d::Config { patch, ..Default::default() };
            let w = espcn3d::init_weights(&cfg, a.seed.unwrap_or(0))?;
            (cfg, w)
        }
    };
    let model = espcn3d::build_onnx(&cfg, &w)?;
    write_export(&model, &a.output, &w, a.save_weights.as_deref())?;
    eprintln!("wrote {} (rate {}, halo {}, patch {:?})", a.output.display(), cfg.scale, cfg.halo(), cfg.patch);
    Ok(())
}

fn write_eq_mobilenet_v2(a: EqMobilenetV2Args) -> Result<()> {
    let cfg =
        Config { group_order: a.group_order, width: a.width, input_size: a.input_size, fold_batch_norm: a.fold_bn, ..Config::default() };
    let (cfg, w) = match a.weights {
        Some(path) => {
            let w = Weights::load(&path)?;
            let cfg = cfg.with_weights_metadata(&w.metadata, &path.display().to_string())?;
            eq_mobilenet_v2::check_weights(&cfg, &w, &path.display().to_string())?;
            (cfg, w)
        }
        None => {
            let w = eq_mobilenet_v2::init_weights(&cfg, a.seed.unwrap_or(0))?;
            (cfg, w)
        }
    };
    let model = eq_mobilenet_v2::build_onnx(&cfg, &w)?;
    write_export(&model, &a.output, &w, a.save_weights.as_deref())?;
    let params: usize = w.tensors.values().map(|t| t.data.len()).sum();
    eprintln!("wrote {} (C{}, width {}, {} base parameters)", a.output.display(), cfg.group_order, cfg.width, params);
    Ok(())
}
