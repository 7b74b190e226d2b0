//! `edgemed-run upsample`: super-resolves a NIfTI volume with an upsampling patch
//! model (3-D ESPCN from `edgemed export espcn3d`), patch by patch, and writes the
//! volume at r times the resolution with the matching affine.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use edgemed_runtime::budget;
use edgemed_runtime::formats::volume::{self, Volume};
use edgemed_runtime::fsutil::{self, Existing};
use edgemed_runtime::tasks::upsample;
use serde_json::json;

use crate::common::{all_cores, progress_bar, Common, Summary, VolumeRun};

// The subcommand's help text is the doc comment of its variant in main.rs.
#[derive(clap::Args)]
pub struct Args {
    /// Input volume (.nii or .nii.gz, 3-D).
    input: PathBuf,
    /// Volume to write (.nii or .nii.gz).
    #[arg(short, long)]
    output: PathBuf,
    /// ONNX upsampling model (metadata edgemed.upsample_scale and edgemed.receptive_halo).
    #[arg(short, long)]
    model: PathBuf,
    #[command(flatten)]
    run: VolumeRun,
}

pub fn run(args: Args, common: &Common) -> Result<ExitCode> {
    let model = common.load_model(Some(&args.model))?;
    let geo = upsample::geometry(&model)?;
    fsutil::check_outputs(&[&args.output], &[&args.input, &args.model], Existing::from_flags(args.run.force, false))?;
    let threads = args.run.threads.unwrap_or_else(all_cores).max(1);
    let backend = common.backend()?;
    let made_by = common.volume_provenance(&model, &backend, format!("scale={} patch={:?} halo={}", geo.scale, geo.patch, geo.halo))?;
    let vol = Volume::read(&args.input, common.memory_budget)?;
    let [x, y, z] = vol.shape();
    let r = geo.scale;
    budget::check(|| format!("the {}x upsampled volume", r), (x * y * z * r * r * r * 4) as u64, common.memory_budget)?;
    let start = Instant::now();
    let bar = progress_bar("patches");
    let out = upsample::upsample(&model, vol.data.view(), &backend, threads, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    volume::write_nifti(&args.output, &upsample::upsampled_header(&vol.header, r), out.view(), Some(&made_by))?;
    let seconds = start.elapsed().as_secs_f64();
    let mut summary = Summary::new();
    summary.add("volume", format!("{} ({x}x{y}x{z})", args.input.display()), json!({ "path": args.input, "shape": [x, y, z] }));
    summary.add(
        "upsampled",
        format!("x{r} to {}x{}x{} in {seconds:.2} s (patches of {:?}, halo {})", x * r, y * r, z * r, geo.patch, geo.halo),
        json!({ "scale": r, "shape": [x * r, y * r, z * r], "seconds": seconds, "patch": geo.patch, "halo": geo.halo }),
    );
    summary.add("wrote", args.output.display().to_string(), json!(args.output));
    summary.add_peak_rss();
    summary.print(args.run.format, &made_by)?;
    Ok(ExitCode::SUCCESS)
}
