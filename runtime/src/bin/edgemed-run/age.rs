//! `edgemed-run age`: predicts aging with the GLOW digital twin,
//! x+ = G^-1(P^n(G(x))) on the model grid: encodes the volume, applies the temporal
//! model once per year, decodes the last year (or every year), and prints the volume
//! of each tracked intensity band per year.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use edgemed_runtime::formats::volume::{self, Volume};
use edgemed_runtime::tasks::aging;

use crate::common::{print_peak_rss, progress_bar, Common};

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
    /// Crop this many voxels (X,Y,Z or one size) around the centre of gravity before resampling to the grid.
    #[arg(long, value_delimiter = ',')]
    crop: Option<Vec<usize>>,
    /// Also write every intermediate year as OUT_yearK.nii(.gz).
    #[arg(long)]
    every_year: bool,
    /// Intensity band whose volume is reported per year, NAME:LO:HI in the written
    /// volume's units (repeatable); the default is CSF-dense voxels (0-15 HU) after --ct-window.
    #[arg(long, default_value = "csf:80:95")]
    track: Vec<String>,
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
    let models = aging::TwinModels::load(&args.model, |p| common.load_model(Some(p)))?;
    let vol = Volume::read(&args.input, common.memory_budget)?;
    let start = Instant::now();
    let twin = aging::Twin::new(&models, &common.backend()?)?;
    let prepared = aging::prepare(&vol, args.ct_window, crop, twin.spec.grid)?;
    let [x, y, z] = vol.shape();
    let [gx, gy, gz] = twin.spec.grid;
    let sp = prepared.header.pixdim;
    println!("volume       {} ({x}x{y}x{z}) -> grid {gx}x{gy}x{gz}, voxel {:.3}x{:.3}x{:.3}", args.input.display(), sp[1], sp[2], sp[3]);
    let (mut zn, logdet) = twin.encode(&prepared.data)?;
    twin.normalise(&mut zn);
    println!("encoded      {} latent values, log-determinant {logdet:.1}, in {:.2} s", zn.len(), start.elapsed().as_secs_f64());
    let header: String = bands.iter().map(|b| format!("  {:>12} {:>10}", format!("{} mL", b.name), "change")).collect();
    println!("year{header}");
    let base: Vec<usize> = bands.iter().map(|b| b.voxels(&prepared.data)).collect();
    let row = |year: usize, counts: &[usize]| {
        let cells: String = counts
            .iter()
            .zip(&base)
            .map(|(n, b0)| format!("  {:>12.2} {:>+10.2}", *n as f64 * prepared.voxel_ml, (*n as f64 - *b0 as f64) * prepared.voxel_ml))
            .collect();
        println!("{year:<4}{cells}");
    };
    row(0, &base);
    let bar = progress_bar("years");
    bar.set_length(years as u64);
    for (k, path) in (1..=years).zip(&paths) {
        zn = twin.step(&zn)?;
        if k == years || args.every_year {
            let aged = twin.decode(&zn)?;
            bar.suspend(|| row(k, &bands.iter().map(|b| b.voxels(&aged)).collect::<Vec<_>>()));
            volume::write_nifti(path, &prepared.header, aged.view())?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!("aged         {years} years in {:.2} s", start.elapsed().as_secs_f64());
    for p in if args.every_year { &paths[..] } else { &paths[years - 1..] } {
        println!("wrote        {}", p.display());
    }
    print_peak_rss();
    Ok(ExitCode::SUCCESS)
}

/// --crop: one size for all axes, or three (X,Y,Z).
fn crop_size(crop: Option<&[usize]>) -> Result<Option<[usize; 3]>> {
    Ok(match crop {
        None => None,
        Some([c]) => Some([*c; 3]),
        Some([a, b, c]) => Some([*a, *b, *c]),
        Some(_) => anyhow::bail!("--crop takes one size or three (X,Y,Z)"),
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
