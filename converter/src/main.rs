//! edgemed: the host CLI. `quantize` turns FP32 ONNX into INT8 QDQ ONNX without
//! data (DFQ), `inspect` shows per-layer weight ranges before and after
//! equalization, `verify` compares an FP32 and an INT8 model, `export` builds the
//! reference architectures.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use edgemed_converter::graph::Graph;
use edgemed_converter::passes::equalize::Relu6Policy;
use edgemed_converter::quantize::Granularity;
use edgemed_converter::{dfq, inputs, passes, verify};
use edgemed_models::eq_mobilenet_v2::{self, Config};
use edgemed_models::weights::Weights;
use edgemed_models::{espcn3d, glow3d, unet};
use edgemed_runtime::model::OnnxModel;

#[derive(Parser)]
#[command(name = "edgemed", version, about = "edgemed host converter: export reference architectures to ONNX")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Quantize an FP32 ONNX model to INT8 (QDQ) with data-free quantization.
    Quantize {
        input: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// Per-channel weight scales (default: per tensor, the DFQ paper's setting).
        #[arg(long)]
        per_channel: bool,
        /// Share scales within blocks of N channels (C_N regular fields); default from the model's metadata.
        #[arg(long)]
        field_size: Option<usize>,
        /// Activation ranges from these inputs instead of batch-norm statistics: a directory of
        /// patch images, or a .npy tensor (or directory of them) in the model's input shape.
        #[arg(long)]
        calibrate: Option<PathBuf>,
        /// With --calibrate: clip ranges at this percentile instead of min/max.
        #[arg(long)]
        percentile: Option<f32>,
        /// Data-free activation ranges: beta +- this many |gamma| per channel.
        #[arg(long, default_value_t = edgemed_converter::dfq::DEFAULT_RANGE_SIGMAS)]
        range_sigmas: f32,
        #[arg(long)]
        no_cle: bool,
        #[arg(long)]
        no_bias_absorption: bool,
        #[arg(long)]
        no_bias_correction: bool,
        /// Replace ReLU6 by ReLU before equalizing (AIMET's way; changes outputs above 6).
        #[arg(long)]
        relu6_to_relu: bool,
        /// Write the transformed FP32 model (BN folded, equalized, biases absorbed) without quantizing.
        #[arg(long)]
        fp32_only: bool,
        /// Write a float16 model instead (batch norm folded; inputs and outputs stay float32).
        #[arg(long, conflicts_with_all = ["per_channel", "calibrate", "fp32_only"])]
        fp16: bool,
        /// With --fp16: float16 inputs and outputs too (the runtime converts from and to float32).
        #[arg(long, requires = "fp16")]
        fp16_io: bool,
    },
    /// Per layer: operator, weight shape, per-channel weight ranges before and after equalization.
    Inspect {
        model: PathBuf,
        #[arg(long)]
        field_size: Option<usize>,
    },
    /// Compare an FP32 model and its INT8 version: SQNR, top-1 agreement, rotation invariance.
    Verify {
        fp32: PathBuf,
        int8: PathBuf,
        /// Patch images to run (default: --random 16).
        #[arg(long, conflicts_with = "random")]
        inputs: Option<PathBuf>,
        #[arg(long)]
        random: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Export a reference architecture to ONNX, or rewrite a classifier into a local prediction map.
    Export(ExportArgs),
    /// Record models in the edgemed-manifest.json beside them (name, version, SHA-256, inputs), for
    /// models made elsewhere; the converter records the models it writes itself.
    Manifest {
        #[arg(required = true)]
        models: Vec<PathBuf>,
    },
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_required = false)]
struct ExportArgs {
    #[command(subcommand)]
    arch: Option<Export>,
    /// Rewrite IN.onnx (global pooling -> linear classifier) into a model whose output is the
    /// map of local logits (BagNet style); the map's spatial mean equals the original logits.
    #[arg(long, value_name = "IN.onnx", requires = "output")]
    local_map: Option<PathBuf>,
    #[arg(short, long)]
    output: Option<PathBuf>,
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
    /// MONAI-shaped 2-D / 3-D U-Net from a MONAI state_dict saved as safetensors (MONAI's
    /// parameter names; see models/src/unet.rs).
    Unet {
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
    },
    /// The aging twin: 3-D GLOW encoder, analytic decoder and temporal latent model from
    /// one weight file, written as DIR/encoder.onnx, DIR/decoder.onnx, DIR/temporal.onnx
    /// (tensor names in models/src/glow3d.rs). `edgemed-run age -m DIR` runs them.
    AgingTwin {
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
    },
    /// 3-D ESPCN super-resolution (valid convolutions + 3-D pixel shuffle) for a fixed
    /// patch; tensor names in models/src/espcn3d.rs.
    Espcn3d {
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
    },
}

/// Writes an exported model (loaded and checked before the rename) and, when asked, the weights it came from.
fn write_export(
    model: &edgemed_onnx::pb::ModelProto,
    output: &Path,
    weights: &Weights,
    save_weights: Option<&Path>,
) -> Result<()> {
    edgemed_converter::export::save_verified(model, output).with_context(|| format!("exporting {}", output.display()))?;
    if let Some(p) = save_weights {
        weights.save(p)?;
    }
    Ok(())
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
        Command::Manifest { models } => {
            for path in models {
                let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                let model = edgemed_runtime::model::OnnxModel::from_bytes(&path, &bytes)?;
                let manifest = edgemed_runtime::formats::manifest::Manifest::record(&path, &bytes, &model)?;
                eprintln!("recorded {} in {}", path.display(), manifest.display());
            }
            Ok(())
        }
        Command::Quantize {
            input,
            output,
            per_channel,
            field_size,
            calibrate,
            percentile,
            range_sigmas,
            no_cle,
            no_bias_absorption,
            no_bias_correction,
            relu6_to_relu,
            fp32_only,
            fp16,
            fp16_io,
        } => {
            let mut g = Graph::load(&input)?;
            if fp16 {
                let folded = passes::fold_bn::fold_batch_norm(&mut g)?.len();
                edgemed_converter::fp16::convert_to_fp16(&mut g, fp16_io)?;
                edgemed_converter::export::save_verified(&g.model, &output).with_context(|| format!("writing {}", output.display()))?;
                eprintln!(
                    "wrote {}: float16 weights, {folded} batch norms folded, float{} inputs and outputs",
                    output.display(),
                    if fp16_io { 16 } else { 32 }
                );
                return Ok(());
            }
            let field_size = field_size.unwrap_or_else(|| dfq::field_size_of(&g));
            let calibration = match &calibrate {
                Some(path) => inputs::calibration(&OnnxModel::load(&input)?, path, 256)?,
                None => Vec::new(),
            };
            let opts = dfq::Options {
                granularity: if per_channel { Granularity::PerChannel } else { Granularity::PerTensor },
                field_size,
                cle: !no_cle,
                relu6: if relu6_to_relu { Relu6Policy::ReplaceWithRelu } else { Relu6Policy::PerChannelBound },
                bias_absorption: !no_bias_absorption,
                bias_correction: !no_bias_correction,
                calibration,
                percentile,
                range_sigmas,
                fp32_only,
            };
            let report = dfq::run(&mut g, &opts)?;
            for m in &report.messages {
                eprintln!("edgemed: note: {m}");
            }
            if !report.quant.left_fp32.is_empty() {
                eprintln!("edgemed: warning: {} tensors left in FP32:", report.quant.left_fp32.len());
                for n in &report.quant.left_fp32 {
                    eprintln!("  {n}");
                }
            }
            edgemed_converter::export::save_verified(&g.model, &output).with_context(|| format!("writing {}", output.display()))?;
            eprintln!(
                "wrote {}: folded {} batch norms; CLE {}; high-bias absorption {}; {} weights ({}), {} activations quantized, {} biases corrected; field size {field_size}",
                output.display(),
                report.folded,
                report.cle.map_or("off".into(), |c| format!("{} triplets + {} pairs in {} iterations", c.triplets, c.pairs, c.iterations)),
                report.absorbed.map_or("off".into(), |a| format!("{} layers", a.absorbed_layers)),
                report.quant.weights_quantized,
                if per_channel { "per channel" } else { "per tensor" },
                report.quant.activations_quantized,
                report.quant.bias_corrected,
            );
            Ok(())
        }
        Command::Inspect { model, field_size } => {
            // "Before" is after batch-norm folding: those are the ranges quantization would face.
            let mut g = Graph::load(&model)?;
            let field = field_size.unwrap_or_else(|| dfq::field_size_of(&g));
            let mut stats = passes::fold_bn::fold_batch_norm(&mut g)?;
            let mut eq = Graph::from_bytes(&g.to_bytes())?;
            passes::equalize::cross_layer_equalize(
                &mut eq,
                &mut stats,
                &passes::equalize::Options { field_size: field, ..Default::default() },
            )?;
            let summary = |g: &Graph, l: &passes::Layer| -> Result<String> {
                let r = passes::out_ranges(&passes::weight_and_bias(g, l)?.0, l.out_axis);
                let mut s = r.clone();
                s.sort_by(f32::total_cmp);
                let lo = s[0].max(1e-12);
                Ok(format!("{:>9.3e} {:>9.3e} {:>9.1}", s[s.len() / 2], s[s.len() - 1], s[s.len() - 1] / lo))
            };
            println!(
                "{:<32} {:<5} {:<18} | {:^29} | {:^29}",
                "layer", "op", "weight", "BN folded: median max max/min", "after CLE: median max max/min"
            );
            let after: std::collections::HashMap<String, passes::Layer> =
                passes::layers(&eq).into_iter().map(|l| (l.name.clone(), l)).collect();
            for l in passes::layers(&g) {
                let w = passes::weight_and_bias(&g, &l)?.0;
                let kind = if l.is_depthwise() { "dw" } else { g.nodes()[l.node].op_type.as_str() };
                let post = after.get(&l.name).map(|a| summary(&eq, a)).transpose()?.unwrap_or_default();
                println!("{:<32} {:<5} {:<18} | {} | {}", l.name, kind, format!("{:?}", w.shape), summary(&g, &l)?, post);
            }
            Ok(())
        }
        Command::Verify { fp32, int8, inputs: dir, random, json } => {
            let a = OnnxModel::load(&fp32)?;
            let b = OnnxModel::load(&int8)?;
            let xs = match dir {
                Some(d) => inputs::from_images(&a, &d, 1024)?,
                None => inputs::random(&a, random.unwrap_or(16), 1)?,
            };
            let rotation = a.metadata.group_order >= 4 && a.metadata.group_order % 4 == 0;
            let v = verify::verify(&a, &b, &xs, rotation)?;
            if json {
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
        Command::Export(ExportArgs { arch: None, local_map: Some(input), output: Some(output) }) => {
            let mut g = Graph::load(&input)?;
            let r = edgemed_converter::local_map::to_local_map(&mut g).with_context(|| format!("{}: no local map", input.display()))?;
            edgemed_converter::export::save_verified(&g.model, &output).with_context(|| format!("writing {}", output.display()))?;
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
        Command::Export(ExportArgs { arch: None, .. }) => {
            anyhow::bail!("export needs an architecture (eq-mobilenet-v2, espcn3d) or --local-map IN.onnx -o OUT.onnx")
        }
        Command::Export(ExportArgs {
            arch:
                Some(Export::AgingTwin {
                    weights,
                    seed,
                    grid,
                    levels,
                    steps,
                    width,
                    temporal_widths,
                    temporal_depths,
                    intensity_range,
                    save_weights,
                    output,
                }),
            ..
        }) => {
            let grid: [usize; 3] = match grid.as_slice() {
                [g] => [*g; 3],
                [a, b, c] => [*a, *b, *c],
                _ => anyhow::bail!("--grid takes one size or three (X,Y,Z)"),
            };
            let [lo, hi] = intensity_range.as_slice() else { anyhow::bail!("--intensity-range takes LO,HI") };
            anyhow::ensure!(hi > lo, "--intensity-range {lo},{hi}: HI must exceed LO");
            let mut cfg = glow3d::Config {
                levels,
                steps,
                width,
                temporal_widths,
                temporal_depths,
                grid,
                intensity_scale: 1.0 / (hi - lo),
                intensity_offset: -lo / (hi - lo) - 0.5,
                ..glow3d::Config::default()
            };
            let loaded = weights.as_ref().map(|p| Weights::load(p).map(|w| (w, p.display().to_string()))).transpose()?;
            if let Some((w, file)) = &loaded {
                cfg = cfg.with_weights_metadata(&w.metadata, file)?;
            }
            let twin = glow3d::build(&cfg, loaded.as_ref().map(|(w, f)| (w, f.as_str())), seed.unwrap_or(0))?;
            std::fs::create_dir_all(&output).with_context(|| format!("creating {}", output.display()))?;
            for (name, model) in [("encoder", &twin.encoder), ("decoder", &twin.decoder), ("temporal", &twin.temporal)] {
                let path = output.join(format!("{name}.onnx"));
                edgemed_converter::export::save_verified(model, &path).with_context(|| format!("exporting {}", path.display()))?;
            }
            if let Some(p) = save_weights {
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
        Command::Export(ExportArgs { arch: Some(Export::Unet { weights, seed, constructor, window, save_weights, output }), .. }) => {
            let loaded = weights.as_ref().map(|p| Weights::load(p).map(|w| (w, p.display().to_string()))).transpose()?;
            let json = match (&constructor, &loaded) {
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
            cfg.window = window;
            let (model, used) = unet::build_onnx(&cfg, loaded.as_ref().map(|(w, f)| (w, f.as_str())), seed.unwrap_or(0))?;
            write_export(&model, &output, &used, save_weights.as_deref())?;
            let params: usize = used.tensors.values().map(|t| t.data.len()).sum();
            eprintln!(
                "wrote {} ({}-D U-Net, channels {:?}, {} parameters, input sizes multiple of {})",
                output.display(),
                cfg.spatial_dims,
                cfg.channels,
                params,
                cfg.downsampling()
            );
            Ok(())
        }
        Command::Export(ExportArgs { arch: Some(Export::Espcn3d { weights, seed, patch, save_weights, output }), .. }) => {
            let patch: [usize; 3] = match patch.as_slice() {
                [p] => [*p; 3],
                [a, b, c] => [*a, *b, *c],
                _ => anyhow::bail!("--patch takes one size or three (X,Y,Z)"),
            };
            let (cfg, w) = match weights {
                Some(path) => {
                    let w = Weights::load(&path)?;
                    let cfg = espcn3d::Config::from_weights_metadata(&w.metadata, patch, &path.display().to_string())?;
                    espcn3d::check_weights(&cfg, &w, &path.display().to_string())?;
                    (cfg, w)
                }
                None => {
                    let cfg = espcn3d::Config { patch, ..Default::default() };
                    let w = espcn3d::init_weights(&cfg, seed.unwrap_or(0))?;
                    (cfg, w)
                }
            };
            let model = espcn3d::build_onnx(&cfg, &w)?;
            write_export(&model, &output, &w, save_weights.as_deref())?;
            eprintln!("wrote {} (rate {}, halo {}, patch {:?})", output.display(), cfg.scale, cfg.halo(), cfg.patch);
            Ok(())
        }
        Command::Export(ExportArgs {
            arch: Some(Export::EqMobilenetV2 { weights, seed, group_order, width, input_size, fold_bn, save_weights, output }),
            ..
        }) => {
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
            write_export(&model, &output, &w, save_weights.as_deref())?;
            let params: usize = w.tensors.values().map(|t| t.data.len()).sum();
            eprintln!("wrote {} (C{} width {} , {} base parameters)", output.display(), cfg.group_order, cfg.width, params);
            Ok(())
        }
    }
}
