//! `edgemed-run brain-age`: brain age and sex from a T1-weighted MRI with a 3-D BagNet
//! local-map model (runtime task `tasks::brain_age`): resample to 1 mm, mask, whiten,
//! compute the maps tile by tile, and write them as NIfTI in the input's space, a PNG of
//! the three mid-planes, and a JSON and a CSV summary into the output folder.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use edgemed_runtime::backend::BackendKind;
use edgemed_runtime::formats::volume::{self, Volume};
use edgemed_runtime::formats::{image_out, provenance};
use edgemed_runtime::fsutil::{self, Existing};
use edgemed_runtime::ndarray::Array4;
use edgemed_runtime::tasks::brain_age::{self, MapGeometry};

use crate::common::{progress_bar, Common, SummaryFormat};

/// Map voxels per tile side when the model allows tiles: 8 map voxels are an input of
/// 8*7 + rf voxels per side (65 to 89), a few hundred MiB of activations at half width.
const DEFAULT_TILE: usize = 8;

// The subcommand's help text is the doc comment of its variant in main.rs.
#[derive(clap::Args)]
pub struct Args {
    /// T1-weighted volume (.nii or .nii.gz, 3-D), skull-stripped unless --mask is given.
    input: PathBuf,
    /// Local-map model (`edgemed export bagnet3d`, then `edgemed export --local-map`; INT8 after `edgemed quantize`).
    #[arg(short, long)]
    model: PathBuf,
    /// Output folder: age_map.nii.gz, sex_map.nii.gz, overlay.png, summary.json, summary.csv
    /// (each recording what made it).
    #[arg(long, value_name = "DIR")]
    output_dir: PathBuf,
    /// Replace those files if the folder has them already (they are kept otherwise).
    #[arg(long)]
    force: bool,
    /// Brain mask (non-zero inside) on the input's grid; default: the input's non-zero voxels.
    #[arg(long)]
    mask: Option<PathBuf>,
    /// Refuse voxels other than 1 mm isotropic instead of resampling them.
    #[arg(long)]
    no_resample: bool,
    /// Map voxels per tile side (0: the whole volume at once); default 8, or what a model with
    /// a fixed input takes (`edgemed export bagnet3d --window W,W,W`: (W - rf) / 8 + 1). An
    /// instance-norm model runs whole by default; in tiles (INT8 only, and by default when the
    /// whole volume is over the memory budget) the engine streams its norms' statistics over them.
    #[arg(long)]
    tile: Option<usize>,
    /// Threads (each with one tile in flight); default: every core.
    #[arg(short, long)]
    threads: Option<usize>,
    /// The FP32 local-map model to compare the maps with (for an INT8 model): agreement in the summary.
    #[arg(long, value_name = "FP32_MODEL")]
    compare: Option<PathBuf>,
    /// The summary on standard output as text or as one JSON object (as summary.json).
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    format: SummaryFormat,
}

pub fn run(args: Args, common: &Common) -> Result<ExitCode> {
    let model = common.load_model(Some(&args.model))?;
    let geo = brain_age::geometry(&model)?;
    std::fs::create_dir_all(&args.output_dir).with_context(|| format!("creating {}", args.output_dir.display()))?;
    let out = |name: &str| args.output_dir.join(name);
    let files = ["age_map.nii.gz", "sex_map.nii.gz", "overlay.png", "summary.json", "summary.csv"].map(out);
    let inputs: Vec<&Path> = [Some(args.input.as_path()), Some(args.model.as_path()), args.mask.as_deref(), args.compare.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    fsutil::check_outputs(&files.iter().map(|p| p.as_path()).collect::<Vec<_>>(), &inputs, Existing::from_flags(args.force, false))?;
    let vol = Volume::read(&args.input, common.memory_budget)?;
    let mask = args.mask.as_ref().map(|p| Volume::read(p, common.memory_budget)).transpose()?;
    let prepared = brain_age::prepare(&vol, mask.as_ref(), !args.no_resample).with_context(|| args.input.display().to_string())?;
    // A model with a fixed input (exported with --window) fixes the tile: (window - rf) / stride + 1 map voxels.
    let fixed_tile = geo.fixed_input.filter(|f| f[0] == f[1] && f[1] == f[2]).map(|f| geo.map_len(f[0]));
    let opts = common.backend()?;
    // Instance norms are streamed over tiles by the INT8 engine alone.
    let tiles_ok = |m: &edgemed_runtime::model::OnnxModel, g: &MapGeometry| g.local || opts.kind.resolve(m) == BackendKind::Int8;
    // An INT8 instance-norm model runs whole when that fits the memory budget (one pass),
    // else in streamed tiles (a pass per norm, memory that follows the tile).
    let streams = !geo.local && tiles_ok(&model, &geo) && args.tile.or(fixed_tile).is_none();
    let mut tile = args.tile.or(fixed_tile).unwrap_or(if geo.local { DEFAULT_TILE } else { 0 });
    let threads = args.threads.unwrap_or_else(crate::common::all_cores).max(1);
    let start = Instant::now();
    let compute = |m: &edgemed_runtime::model::OnnxModel, g: &MapGeometry, tile: usize| -> Result<Array4<f32>> {
        let bar = progress_bar("tiles");
        let maps = brain_age::local_maps(m, g, prepared.input.view(), tile, threads, &opts, |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })?;
        bar.finish_and_clear();
        Ok(maps)
    };
    let maps = match compute(&model, &geo, tile) {
        Err(e) if streams && matches!(e.downcast_ref::<edgemed_runtime::Error>(), Some(edgemed_runtime::Error::OverBudget { .. })) => {
            log::info!(
                "the whole volume is over the memory budget ({e}): streaming the instance norms over tiles of {DEFAULT_TILE} map voxels"
            );
            tile = DEFAULT_TILE;
            compute(&model, &geo, tile)?
        }
        r => r?,
    };
    let settings = format!("tile={tile} resample={} mask={}", !args.no_resample, args.mask.is_some());
    let made_by = common.volume_provenance(&model, &opts, settings)?;
    let seconds = start.elapsed().as_secs_f64();
    let pred = brain_age::predict(&geo, &maps);
    let dims = [maps.shape()[1], maps.shape()[2], maps.shape()[3]];
    let header = brain_age::map_header(&prepared.header, &geo, dims);
    let named = brain_age::named_maps(&geo, &maps, &prepared.mask);
    for (name, map) in &named {
        volume::write_nifti(&out(&format!("{name}_map.nii.gz")), &header, map.view(), Some(&made_by))?;
    }
    let (png, range) = brain_age::overlay(prepared.input.view(), &prepared.mask, &geo, &named[0].1);
    fsutil::write_atomic(&files[2], &image_out::png_with_record(&png, &made_by)?)?;
    // Agreement of the maps with the FP32 model's (same tiles, same input).
    let agreement = match &args.compare {
        None => None,
        Some(p) => {
            let fp32 = common.load_model(Some(p))?;
            let g32 = brain_age::geometry(&fp32)?;
            anyhow::ensure!(
                g32.outputs == geo.outputs && g32.receptive_field == geo.receptive_field,
                "{}: another map layout",
                p.display()
            );
            // An FP32 instance-norm model runs whole (the same cropped volume).
            let m32 = compute(&fp32, &g32, if tiles_ok(&fp32, &g32) { tile } else { 0 })?;
            Some(brain_age::agreement(&geo, &maps, &m32, &prepared.mask))
        }
    };
    let rss = edgemed_runtime::bench::peak_rss_mib();
    let mut summary = serde_json::json!({
        "input": args.input.display().to_string(),
        "model": args.model.display().to_string(),
        "receptive_field": geo.receptive_field,
        "map_stride_mm": geo.stride,
        "map_shape": dims,
        "local_normalisation": geo.local,
        "tile": if tile == 0 { serde_json::Value::Null } else { tile.into() },
        "threads": threads,
        "resampled_from_mm": prepared.resampled_from,
        "grid_1mm": prepared.input.shape(),
        "mask_ml": prepared.mask_voxels as f64 / 1000.0,
        "age": pred.age,
        "sex_logits": pred.sex_logits,
        "sex_prob_1": pred.sex_prob,
        "map_range": [range.0, range.1],
        "seconds": seconds,
        "peak_rss_mib": rss,
    });
    if let Some(a) = &agreement {
        summary["int8_vs_fp32"] = serde_json::to_value(a).unwrap_or_default();
    }
    summary["made_by"] = serde_json::to_value(&made_by)?;
    edgemed_runtime::fsutil::write_atomic(&files[3], format!("{}\n", serde_json::to_string_pretty(&summary)?).as_bytes())?;
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    let mut csv = csv::Writer::from_writer(Vec::new());
    let mut head = vec!["input", "receptive_field", "age", "sex_prob_1", "mask_ml", "map_x", "map_y", "map_z", "seconds", "peak_rss_mib"];
    head.extend(provenance::COLUMNS);
    csv.write_record(&head)?;
    let mut row = vec![
        args.input.display().to_string(),
        geo.receptive_field.to_string(),
        opt(pred.age),
        opt(pred.sex_prob),
        format!("{:.1}", prepared.mask_voxels as f64 / 1000.0),
        dims[0].to_string(),
        dims[1].to_string(),
        dims[2].to_string(),
        format!("{seconds:.3}"),
        opt(rss),
    ];
    row.extend(made_by.cells().iter().map(|c| c.to_string()));
    csv.write_record(&row)?;
    edgemed_runtime::fsutil::write_atomic(&files[4], &csv.into_inner()?)?;
    if args.format == SummaryFormat::Json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(ExitCode::SUCCESS);
    }
    let s = prepared.input.shape();
    println!(
        "volume       {} ({}x{}x{} at 1 mm{})",
        args.input.display(),
        s[0],
        s[1],
        s[2],
        match prepared.resampled_from {
            Some(sp) => format!(", resampled from {:.2}x{:.2}x{:.2} mm", sp[0], sp[1], sp[2]),
            None => String::new(),
        }
    );
    println!("brain        {:.0} mL", prepared.mask_voxels as f64 / 1000.0);
    if let Some(age) = pred.age {
        println!("age          {age:.2} years");
    }
    if let Some(p) = pred.sex_prob {
        println!("sex          p(sex_1) = {p:.3}");
    }
    println!(
        "maps         {}x{}x{} (BagNet-{}, {} mm apart) in {seconds:.2} s, {}",
        dims[0],
        dims[1],
        dims[2],
        geo.receptive_field,
        geo.stride,
        if tile == 0 { "whole volume".to_string() } else { format!("tiles of {tile} map voxels") }
    );
    if let Some(a) = &agreement {
        println!("vs FP32      {}", serde_json::to_string(a)?);
    }
    println!("wrote        {}", args.output_dir.display());
    if let Some(mib) = rss {
        println!("peak RSS     {mib:.0} MiB");
    }
    Ok(ExitCode::SUCCESS)
}
