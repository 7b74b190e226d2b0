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

// The subcommand's help text is the doc comment of its variant in main.rs. Without any
// argument it prints its help, which lists every architecture.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_required = false, arg_required_else_help = true)]
pub struct Args {
    #[command(subcommand)]
    arch: Option<Arch>,
    /// Rewrite IN.onnx (global pooling -> linear classifier) into a model whose output is the
    /// map of local logits (BagNet style); the map's spatial mean equals the original logits.
    #[arg(long, value_name = "IN.onnx", requires = "output")]
    local_map: Option<PathBuf>,
    /// With --local-map: the model to write (never the input; checked to load, recorded in
    /// the edgemed-manifest.json beside it).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// With --local-map: replace the output file if it exists.
    #[arg(long)]
    force: bool,
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

/// Where an architecture's parameters come from: trained weights or a seeded
/// initialisation; one of the two must be given.
#[derive(clap::Args)]
struct Source {
    /// Trained weights (safetensors); the architecture settings in its metadata decide, and a
    /// flag that contradicts them is refused.
    #[arg(long, value_name = "FILE", conflicts_with = "seed")]
    weights: Option<PathBuf>,
    /// An untrained, seeded initialisation instead of weights (for tests and benchmarks).
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
}

impl Source {
    fn get(&self, arch: &str) -> Result<Params<'_>> {
        params(self.weights.as_deref(), self.seed, arch)
    }
}

/// Where the parameters come from.
enum Params<'a> {
    Weights(&'a Path),
    Seed(u64),
}

/// The weights file, or the seed; giving neither is refused (an untrained model written by
/// accident would look like a trained one).
fn params<'a>(weights: Option<&'a Path>, seed: Option<u64>, arch: &str) -> Result<Params<'a>> {
    match (weights, seed) {
        (Some(w), _) => Ok(Params::Weights(w)),
        (None, Some(seed)) => Ok(Params::Seed(seed)),
        (None, None) => {
            anyhow::bail!("export {arch} needs --weights FILE (trained weights) or --seed N (an untrained, seeded initialisation)")
        }
    }
}

/// The model file an architecture is written to, and the options every export shares.
#[derive(clap::Args)]
struct Output {
    /// The model to write (checked to load, recorded in the edgemed-manifest.json beside it).
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Also write the base weights used (safetensors; useful with --seed).
    #[arg(long, value_name = "FILE")]
    save_weights: Option<PathBuf>,
    /// Replace output files that exist (by default an earlier result is kept).
    #[arg(long)]
    force: bool,
}

impl Output {
    /// Checks the output files before any work (`weights`: the file read, if any).
    fn check(&self, weights: Option<&Path>) -> Result<()> {
        let outputs: Vec<&Path> = std::iter::once(self.output.as_path()).chain(self.save_weights.as_deref()).collect();
        super::check_outputs(&outputs, &weights.into_iter().collect::<Vec<_>>(), self.force)
    }
}

#[derive(clap::Args)]
struct EqMobilenetV2Args {
    #[command(flatten)]
    source: Source,
    /// Order N of the rotation group C_N: 1 (a plain MobileNetV2), 2, 4, 8 or 12 [default: 4].
    #[arg(long, value_name = "N")]
    group_order: Option<usize>,
    /// Width multiplier of MobileNetV2's channel counts, in (0, 4] [default: 1].
    #[arg(long, value_name = "W")]
    width: Option<f32>,
    /// Side of the square input in pixels; odd, so 90-degree rotations stay exact.
    #[arg(long, value_name = "S", default_value_t = 95)]
    input_size: usize,
    /// Fold batch norm into the convolutions.
    #[arg(long)]
    fold_bn: bool,
    #[command(flatten)]
    out: Output,
}

#[derive(clap::Args)]
struct UnetArgs {
    /// MONAI UNet state_dict (safetensors). Its metadata key "constructor" (JSON of the
    /// UNet arguments) gives the settings unless --constructor does.
    #[arg(long, value_name = "FILE", conflicts_with = "seed")]
    weights: Option<PathBuf>,
    /// An untrained, seeded initialisation instead of weights (for tests and benchmarks).
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// The UNet constructor arguments as JSON, e.g.
    /// '{"spatial_dims":3,"in_channels":1,"out_channels":2,"channels":[16,32,64],"strides":[2,2],"num_res_units":2}'
    /// (default with --seed: MONAI's tutorial 3-D network). With --weights it overrides the
    /// file's metadata, and the weights must fit it.
    #[arg(long, value_name = "JSON")]
    constructor: Option<String>,
    /// Fix the spatial input size (e.g. 96,96,96); default: any size divisible by the strides.
    #[arg(long, value_name = "X,Y[,Z]", value_delimiter = ',')]
    window: Option<Vec<usize>>,
    #[command(flatten)]
    out: Output,
}

#[derive(clap::Args)]
struct AgingTwinArgs {
    #[command(flatten)]
    source: Source,
    /// Model grid X,Y,Z (or one size); each a multiple of 2^levels.
    #[arg(long, value_name = "X,Y,Z", default_value = "128", value_delimiter = ',')]
    grid: Vec<usize>,
    /// Levels of the multi-scale flow [default: 3].
    #[arg(long, value_name = "L")]
    levels: Option<usize>,
    /// Flow steps per level [default: 4].
    #[arg(long, value_name = "K")]
    steps: Option<usize>,
    /// Hidden width of the coupling networks [default: 16].
    #[arg(long, value_name = "W")]
    width: Option<usize>,
    /// Temporal model widths, one per level [default: 16,32,64].
    #[arg(long, value_name = "W,...", value_delimiter = ',')]
    temporal_widths: Option<Vec<usize>>,
    /// Temporal model depths (convolutions), one per level [default: 2,2,2].
    #[arg(long, value_name = "D,...", value_delimiter = ',')]
    temporal_depths: Option<Vec<usize>>,
    /// Volume intensities LO,HI that map to the model's [-0.5, 0.5]; the default is the CT window 0..255.
    #[arg(long, value_name = "LO,HI", default_value = "0,255", value_delimiter = ',')]
    intensity_range: Vec<f32>,
    /// Also write the base weights used (safetensors; useful with --seed).
    #[arg(long, value_name = "FILE")]
    save_weights: Option<PathBuf>,
    /// The folder to write encoder.onnx, decoder.onnx and temporal.onnx in (made if missing).
    #[arg(long, value_name = "DIR", short_alias = 'o', alias = "output")]
    output_dir: PathBuf,
    /// Replace model files that exist in the folder (by default an earlier result is kept).
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args)]
struct Espcn3dArgs {
    #[command(flatten)]
    source: Source,
    /// Interior patch per axis (the model's input adds the halo on both sides), e.g. 16 or 16,16,8.
    #[arg(long, value_name = "N|X,Y,Z", default_value = "16", value_delimiter = ',')]
    patch: Vec<usize>,
    #[command(flatten)]
    out: Output,
}

pub fn run(args: Args) -> Result<()> {
    match args {
        Args { arch: None, local_map: Some(input), output: Some(output), force } => write_local_map(&input, &output, force),
        Args { arch: None, .. } => {
            let archs: Vec<String> = <Arch as clap::Subcommand>::augment_subcommands(clap::Command::new("export"))
                .get_subcommands()
                .map(|c| c.get_name().to_string())
                .collect();
            anyhow::bail!("export needs an architecture ({}) or --local-map IN.onnx -o OUT.onnx", archs.join(", "))
        }
        Args { arch: Some(Arch::AgingTwin(a)), .. } => write_aging_twin(a),
        Args { arch: Some(Arch::Unet(a)), .. } => write_unet(a),
        Args { arch: Some(Arch::Espcn3d(a)), .. } => write_espcn3d(a),
        Args { arch: Some(Arch::EqMobilenetV2(a)), .. } => write_eq_mobilenet_v2(a),
        Args { arch: Some(Arch::Bagnet3d(a)), .. } => super::bagnet3d::run(a),
    }
}

/// Writes an exported model (loaded and checked before the rename) and, when asked, the weights it came from.
fn write_export(model: &edgemed_onnx::pb::ModelProto, out: &Output, weights: &Weights) -> Result<()> {
    edgemed_converter::export::save_verified(model, &out.output).with_context(|| format!("exporting {}", out.output.display()))?;
    if let Some(p) = &out.save_weights {
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

/// Refuses an architecture flag given on the command line that the weights file's
/// metadata contradicts (the file decides what its weights are), naming both values.
fn agrees<T: PartialEq + std::fmt::Debug>(flag: &str, given: Option<T>, key: &str, from_file: T, file: &Path) -> Result<()> {
    match given {
        Some(g) if g != from_file => anyhow::bail!(
            "{flag} {g:?} contradicts {}, whose metadata says {key} = {from_file:?}; drop {flag} or give weights made for it",
            file.display()
        ),
        _ => Ok(()),
    }
}

fn write_local_map(input: &Path, output: &Path, force: bool) -> Result<()> {
    super::check_outputs(&[output], &[input], force)?;
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

/// The aging twin's three model files in its folder, checked with the saved weights
/// before any work. A folder that does not exist yet is checked as a new entry of its
/// parent (and made only when the models are written).
fn twin_outputs(a: &AgingTwinArgs) -> Result<Vec<PathBuf>> {
    let dir = &a.output_dir;
    anyhow::ensure!(!dir.exists() || dir.is_dir(), "{}: is a file; --output-dir takes a folder", dir.display());
    let files: Vec<PathBuf> = ["encoder", "decoder", "temporal"].iter().map(|n| dir.join(format!("{n}.onnx"))).collect();
    let mut outputs: Vec<&Path> = if dir.exists() { files.iter().map(PathBuf::as_path).collect() } else { vec![dir.as_path()] };
    // Weights saved into the new folder are new files there.
    outputs.extend(a.save_weights.as_deref().filter(|p| dir.exists() || edgemed_onnx::fsutil::folder_of(p) != dir.as_path()));
    super::check_outputs(&outputs, &a.source.weights.as_deref().into_iter().collect::<Vec<_>>(), a.force)?;
    Ok(files)
}

fn write_aging_twin(a: AgingTwinArgs) -> Result<()> {
    let source = a.source.get("aging-twin")?;
    let grid = three_sizes(&a.grid, "--grid")?;
    let [lo, hi] = a.intensity_range.as_slice() else { anyhow::bail!("--intensity-range takes LO,HI") };
    anyhow::ensure!(hi > lo, "--intensity-range {lo},{hi}: HI must exceed LO");
    let files = twin_outputs(&a)?;
    let d = glow3d::Config::default();
    let mut cfg = glow3d::Config {
        levels: a.levels.unwrap_or(d.levels),
        steps: a.steps.unwrap_or(d.steps),
        width: a.width.unwrap_or(d.width),
        temporal_widths: a.temporal_widths.clone().unwrap_or(d.temporal_widths),
        temporal_depths: a.temporal_depths.clone().unwrap_or(d.temporal_depths),
        grid,
        intensity_scale: 1.0 / (hi - lo),
        intensity_offset: -lo / (hi - lo) - 0.5,
        ..glow3d::Config::default()
    };
    let (loaded, seed) = match source {
        Params::Weights(p) => {
            let w = Weights::load(p)?;
            cfg = cfg.with_weights_metadata(&w.metadata, &p.display().to_string())?;
            agrees("--levels", a.levels, "levels", cfg.levels, p)?;
            agrees("--steps", a.steps, "steps", cfg.steps, p)?;
            agrees("--width", a.width, "width", cfg.width, p)?;
            agrees("--temporal-widths", a.temporal_widths, "temporal_widths", cfg.temporal_widths.clone(), p)?;
            agrees("--temporal-depths", a.temporal_depths, "temporal_depths", cfg.temporal_depths.clone(), p)?;
            (Some((w, p.display().to_string())), 0)
        }
        Params::Seed(seed) => (None, seed),
    };
    let twin = glow3d::build(&cfg, loaded.as_ref().map(|(w, f)| (w, f.as_str())), seed)?;
    std::fs::create_dir_all(&a.output_dir).with_context(|| format!("creating {}", a.output_dir.display()))?;
    for (path, model) in files.iter().zip([&twin.encoder, &twin.decoder, &twin.temporal]) {
        edgemed_converter::export::save_verified(model, path).with_context(|| format!("exporting {}", path.display()))?;
    }
    if let Some(p) = &a.save_weights {
        twin.weights.save(p)?;
    }
    let params: usize = twin.weights.tensors.values().map(|t| t.data.len()).sum();
    eprintln!(
        "wrote {} (grid {:?}, {} levels x {} steps, latent {} values, {} parameters)",
        a.output_dir.join("{encoder,decoder,temporal}.onnx").display(),
        cfg.grid,
        cfg.levels,
        cfg.steps,
        cfg.latent_len(),
        params
    );
    Ok(())
}

fn write_unet(a: UnetArgs) -> Result<()> {
    let source = params(a.weights.as_deref(), a.seed, "unet")?;
    a.out.check(a.weights.as_deref())?;
    let (loaded, seed) = match source {
        Params::Weights(p) => (Some((Weights::load(p)?, p.display().to_string())), 0),
        Params::Seed(seed) => (None, seed),
    };
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
    let (model, used) = unet::build_onnx(&cfg, loaded.as_ref().map(|(w, f)| (w, f.as_str())), seed)?;
    write_export(&model, &a.out, &used)?;
    let params: usize = used.tensors.values().map(|t| t.data.len()).sum();
    eprintln!(
        "wrote {} ({}-D U-Net, channels {:?}, {} parameters, input sizes multiple of {})",
        a.out.output.display(),
        cfg.spatial_dims,
        cfg.channels,
        params,
        cfg.downsampling()
    );
    Ok(())
}

fn write_espcn3d(a: Espcn3dArgs) -> Result<()> {
    let source = a.source.get("espcn3d")?;
    let patch = three_sizes(&a.patch, "--patch")?;
    a.out.check(a.source.weights.as_deref())?;
    let (cfg, w) = match source {
        Params::Weights(path) => {
            let w = Weights::load(path)?;
            let cfg = espcn3d::Config::from_weights_metadata(&w.metadata, patch, &path.display().to_string())?;
            espcn3d::check_weights(&cfg, &w, &path.display().to_string())?;
            (cfg, w)
        }
        Params::Seed(seed) => {
            let cfg = espcn3d::Config { patch, ..Default::default() };
            let w = espcn3d::init_weights(&cfg, seed)?;
            (cfg, w)
        }
    };
    let model = espcn3d::build_onnx(&cfg, &w)?;
    write_export(&model, &a.out, &w)?;
    eprintln!("wrote {} (rate {}, halo {}, patch {:?})", a.out.output.display(), cfg.scale, cfg.halo(), cfg.patch);
    Ok(())
}

fn write_eq_mobilenet_v2(a: EqMobilenetV2Args) -> Result<()> {
    let source = a.source.get("eq-mobilenet-v2")?;
    a.out.check(a.source.weights.as_deref())?;
    let d = Config::default();
    let cfg = Config {
        group_order: a.group_order.unwrap_or(d.group_order),
        width: a.width.unwrap_or(d.width),
        input_size: a.input_size,
        fold_batch_norm: a.fold_bn,
        ..d
    };
    let (cfg, w) = match source {
        Params::Weights(path) => {
            let w = Weights::load(path)?;
            let cfg = cfg.with_weights_metadata(&w.metadata, &path.display().to_string())?;
            agrees("--group-order", a.group_order, "group_order", cfg.group_order, path)?;
            agrees("--width", a.width, "width", cfg.width, path)?;
            eq_mobilenet_v2::check_weights(&cfg, &w, &path.display().to_string())?;
            (cfg, w)
        }
        Params::Seed(seed) => {
            let w = eq_mobilenet_v2::init_weights(&cfg, seed)?;
            (cfg, w)
        }
    };
    let model = eq_mobilenet_v2::build_onnx(&cfg, &w)?;
    write_export(&model, &a.out, &w)?;
    let params: usize = w.tensors.values().map(|t| t.data.len()).sum();
    eprintln!("wrote {} (C{}, width {}, {} base parameters)", a.out.output.display(), cfg.group_order, cfg.width, params);
    Ok(())
}
