//! `edgemed-run age`: predicts aging with the GLOW digital twin,
//! x+ = G^-1(P^n(G(x))) on the model grid: encodes the volume, applies the temporal
//! model once per year, decodes the last year (or every year), and prints the volume
//! of each tracked intensity band per year.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use edgemed_runtime::formats::provenance::{sha256_hex, Provenance};
use edgemed_runtime::formats::volume::{self, Volume};
use edgemed_runtime::fsutil::{self, Existing};
use edgemed_runtime::tasks::aging;
use serde_json::json;

use crate::common::{all_cores, progress_bar, Common, Summary, SummaryFormat, VolumeRun};

// The subcommand's help text is the doc comment of its variant in main.rs.
#[derive(clap::Args)]
pub struct Args {
    /// Input volume (.nii or .nii.gz, 3-D).
    input: PathBuf,
    /// Volume after --years years, on the model grid (.nii or .nii.gz).
    #[arg(short, long)]
    output: PathBuf,
    /// The twin's directory (encoder.onnx, decoder.onnx, temporal.onnx from `edgemed export aging-twin`).
    #[arg(short, long)]
    model: PathBuf,
    /// Years to advance (applications of the temporal model).
    #[arg(long)]
    years: usize,
    /// CT windowing before the model: clip(HU + 80, 0, 255).
    #[arg(long)]
    ct_window: bool,
    /// Side of the box (voxels; X,Y,Z or one size for all) cut around the centre of gravity
    /// before resampling to the model grid. (Named apart from classify's --crop, a patch's
    /// centre crop in pixels; --crop is kept here as a hidden alias.)
    #[arg(long = "crop-box", alias = "crop", value_delimiter = ',', value_name = "VOXELS")]
    crop: Option<Vec<usize>>,
    /// Also write every intermediate year as OUT_yearK.nii(.gz).
    #[arg(long)]
    every_year: bool,
    /// Intensity band whose volume is reported per year, NAME:LO:HI in the written
    /// volume's units (repeatable); the default is CSF-dense voxels (0-15 HU) after --ct-window.
    #[arg(long, default_value = "csf:80:95")]
    track: Vec<String>,
    #[command(flatten)]
    run: VolumeRun,
}

pub fn run(args: Args, common: &Common) -> Result<ExitCode> {
    let years = args.years;
    anyhow::ensure!(years >= 1, "--years must be at least 1");
    let bands = args.track.iter().map(|t| t.parse::<aging::Band>()).collect::<edgemed_runtime::Result<Vec<_>>>()?;
    let crop = crop_size(args.crop.as_deref())?;
    // Every output name is checked before hours of work, not after.
    let paths: Vec<PathBuf> = (1..=years).map(|k| if k == years { args.output.clone() } else { year_path(&args.output, k) }).collect();
    for p in &paths {
        anyhow::ensure!(volume::is_nifti_name(p), "{}: output volumes are written as .nii or .nii.gz", p.display());
    }
    let written: Vec<&Path> =
        paths.iter().enumerate().filter(|(k, _)| args.every_year || k + 1 == years).map(|(_, p)| p.as_path()).collect();
    let model_files: Vec<PathBuf> = ["encoder", "decoder", "temporal"].iter().map(|n| args.model.join(format!("{n}.onnx"))).collect();
    let inputs: Vec<&Path> = std::iter::once(args.input.as_path()).chain(model_files.iter().map(PathBuf::as_path)).collect();
    fsutil::check_outputs(&written, &inputs, Existing::from_flags(args.run.force, false))?;
    let models = aging::TwinModels::load(&args.model, |p| common.load_model(Some(p)))?;
    let backend = common.backend()?.with_intra_threads(args.run.threads.unwrap_or_else(all_cores));
    let made_by = twin_provenance(common, &models, &args, &backend, crop)?;
    let vol = Volume::read(&args.input, common.memory_budget)?;
    let start = Instant::now();
    let twin = aging::Twin::new(&models, &backend)?;
    let prepared = aging::prepare(&vol, args.ct_window, crop, twin.spec.grid)?;
    let [x, y, z] = vol.shape();
    let [gx, gy, gz] = twin.spec.grid;
    let sp = prepared.header.pixdim;
    let text = args.run.format == SummaryFormat::Text;
    let mut summary = Summary::new();
    summary.add(
        "volume",
        format!("{} ({x}x{y}x{z}) -> grid {gx}x{gy}x{gz}, voxel {:.3}x{:.3}x{:.3}", args.input.display(), sp[1], sp[2], sp[3]),
        json!({ "path": args.input, "shape": [x, y, z], "grid": [gx, gy, gz], "voxel": [sp[1], sp[2], sp[3]] }),
    );
    let (mut zn, logdet) = twin.encode(&prepared.data)?;
    twin.normalise(&mut zn);
    let seconds = start.elapsed().as_secs_f64();
    summary.add(
        "encoded",
        format!("{} latent values, log-determinant {logdet:.1}, in {seconds:.2} s", zn.len()),
        json!({ "latent_values": zn.len(), "log_determinant": logdet, "seconds": seconds }),
    );
    if text {
        summary.print(args.run.format, &made_by)?;
        summary = Summary::new();
        let header: String = bands.iter().map(|b| format!("  {:>12} {:>10}", format!("{} mL", b.name), "change")).collect();
        println!("year{header}");
    }
    let base: Vec<usize> = bands.iter().map(|b| b.voxels(&prepared.data)).collect();
    let mut table = Vec::new();
    let mut row = |year: usize, counts: &[usize]| {
        let ml: Vec<(f64, f64)> =
            counts.iter().zip(&base).map(|(n, b0)| (*n as f64 * prepared.voxel_ml, (*n as f64 - *b0 as f64) * prepared.voxel_ml)).collect();
        let cells: String = ml.iter().map(|(v, d)| format!("  {v:>12.2} {d:>+10.2}")).collect();
        let bands_json: serde_json::Map<String, serde_json::Value> =
            bands.iter().zip(&ml).map(|(b, (v, d))| (b.name.clone(), json!({ "ml": v, "change_ml": d }))).collect();
        table.push(json!({ "year": year, "bands": bands_json }));
        format!("{year:<4}{cells}")
    };
    let first = row(0, &base);
    if text {
        println!("{first}");
    }
    let bar = progress_bar("years");
    bar.set_length(years as u64);
    for (k, path) in (1..=years).zip(&paths) {
        zn = twin.step(&zn)?;
        if k == years || args.every_year {
            let aged = twin.decode(&zn)?;
            let line = row(k, &bands.iter().map(|b| b.voxels(&aged)).collect::<Vec<_>>());
            if text {
                bar.suspend(|| println!("{line}"));
            }
            volume::write_nifti(path, &prepared.header, aged.view(), Some(&made_by))?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    summary.add("years", String::new(), json!(table));
    summary.add(
        "aged",
        format!("{years} year{} in {seconds:.2} s", if years == 1 { "" } else { "s" }),
        json!({ "years": years, "seconds": seconds }),
    );
    summary.add("wrote", written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "), json!(written));
    summary.add_peak_rss();
    if text {
        // The per-year rows are printed already.
        summary.remove("years");
    }
    summary.print(args.run.format, &made_by)?;
    Ok(ExitCode::SUCCESS)
}

/// What made the aged volumes: the twin's folder, and a SHA-256 over its three files' hashes
/// (encoder, decoder, temporal, in that order).
fn twin_provenance(
    common: &Common,
    models: &aging::TwinModels,
    args: &Args,
    backend: &edgemed_runtime::backend::BackendOptions,
    crop: Option<[usize; 3]>,
) -> Result<Provenance> {
    let settings = format!("years={} ct_window={} crop_box={crop:?}", args.years, args.ct_window);
    let mut made_by = common.volume_provenance(&models.encoder, backend, settings)?;
    let mut hashes = String::new();
    for m in [&models.encoder, &models.decoder, &models.temporal] {
        let bytes = std::fs::read(&m.path).map_err(|e| edgemed_runtime::Error::io(&m.path, e))?;
        hashes.push_str(&sha256_hex(&bytes));
    }
    made_by.model = args.model.display().to_string();
    made_by.model_sha256 = sha256_hex(hashes.as_bytes());
    Ok(made_by)
}

/// --crop-box: one size for all axes, or three (X,Y,Z).
fn crop_size(crop: Option<&[usize]>) -> Result<Option<[usize; 3]>> {
    Ok(match crop {
        None => None,
        Some([c]) => Some([*c; 3]),
        Some([a, b, c]) => Some([*a, *b, *c]),
        Some(_) => anyhow::bail!("--crop-box takes one size or three (X,Y,Z)"),
    })
}

/// OUT.nii.gz -> OUT_yearK.nii.gz (intermediate years).
fn year_path(output: &Path, k: usize) -> PathBuf {
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (stem, ext) = match name.strip_suffix(".nii.gz") {
        Some(s) => (s.to_string(), ".nii.gz"),
        None => (name.strip_suffix(".nii").unwrap_or(&name).to_string(), ".nii"),
    };
    output.with_file_name(format!("{stem}_year{k}{ext}"))
}
