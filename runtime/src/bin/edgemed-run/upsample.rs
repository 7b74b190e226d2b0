//! `edgemed-run upsample`: super-resolves a NIfTI volume with an upsampling patch
//! model (3-D ESPCN from `edgemed export espcn3d`), patch by patch, and writes the
//! volume at r times the resolution with the matching affine.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use edgemed_runtime::budget;
use edgemed_runtime::formats::volume::{self, Volume};
use edgemed_runtime::tasks::upsample;

use crate::common::{print_peak_rss, progress_bar, Common};

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
}

pub fn run(args: Args, common: &Common) -> Result<ExitCode> {
    let model = common.load_model(Some(&args.model))?;
    let geo = upsample::geometry(&model)?;
    crate::common::check_outputs(&[&args.output], &[&args.input, &args.model])?;
    let vol = Volume::read(&args.input, common.memory_budget)?;
    let [x, y, z] = vol.shape();
    let r = geo.scale;
    budget::check(|| format!("the {}x upsampled volume", r), (x * y * z * r * r * r * 4) as u64, common.memory_budget)?;
    let start = Instant::now();
    let bar = progress_bar("patches");
    let out = upsample::upsample(&model, vol.data.view(), &common.backend()?, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    volume::write_nifti(&args.output, &upsample::upsampled_header(&vol.header, r), out.view())?;
    println!("volume       {} ({x}x{y}x{z})", args.input.display());
    println!(
        "upsampled    x{r} to {}x{}x{} in {:.2} s (patches of {:?}, halo {})",
        x * r,
        y * r,
        z * r,
        start.elapsed().as_secs_f64(),
        geo.patch,
        geo.halo
    );
    println!("wrote        {}", args.output.display());
    print_peak_rss();
    Ok(ExitCode::SUCCESS)
}
