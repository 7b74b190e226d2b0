//! `edgemed-run segment`: segments a NIfTI volume with a segmentation network run
//! by sliding window (MONAI's sliding_window_inference semantics), keeps the largest
//! component per class unless told otherwise, and writes a uint8 label map with the
//! input's affine; with a reference label map, reports Dice per class.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use edgemed_runtime::formats::volume::{self, Volume};
use edgemed_runtime::fsutil::{self, Existing};
use edgemed_runtime::tasks::segment::{self, SegmentOptions};
use edgemed_runtime::tasks::sliding_window::{Blend, SlidingWindow};
use serde_json::json;

use crate::common::{all_cores, progress_bar, Common, Summary, VolumeRun};

// The subcommand's help text is the doc comment of its variant in main.rs.
#[derive(clap::Args)]
pub struct Args {
    /// Input volume (.nii or .nii.gz, 3-D).
    input: PathBuf,
    /// Label map to write (.nii or .nii.gz).
    #[arg(short, long)]
    output: PathBuf,
    /// ONNX segmentation model, input [batch, 1, X, Y, Z], output [batch, classes, X, Y, Z].
    #[arg(short, long)]
    model: PathBuf,
    /// Window size, e.g. 96,96,96; default: the model's fixed input size.
    #[arg(long, value_delimiter = ',')]
    roi: Option<Vec<usize>>,
    /// Fraction of each window shared with its neighbour.
    #[arg(long, default_value_t = 0.25)]
    overlap: f64,
    /// How overlapping windows are blended: constant or gaussian.
    #[arg(long, default_value = "constant")]
    blend: String,
    /// Gaussian blending: sigma as a fraction of the window size.
    #[arg(long, default_value_t = 0.125)]
    sigma_scale: f32,
    /// Keep every connected component (default: only the largest per class).
    #[arg(long)]
    all_components: bool,
    /// CT windowing before the model: clip(HU + 80, 0, 255).
    #[arg(long)]
    ct_window: bool,
    /// Reference label map: report Dice per class.
    #[arg(long)]
    label: Option<PathBuf>,
    #[command(flatten)]
    run: VolumeRun,
}

pub fn run(args: Args, common: &Common) -> Result<ExitCode> {
    let inputs: Vec<&std::path::Path> = [args.input.as_path(), args.model.as_path()].into_iter().chain(args.label.as_deref()).collect();
    fsutil::check_outputs(&[&args.output], &inputs, Existing::from_flags(args.run.force, false))?;
    let model = common.load_model(Some(&args.model))?;
    let blend = match args.blend.parse::<Blend>()? {
        Blend::Gaussian { .. } => Blend::Gaussian { sigma_scale: args.sigma_scale },
        b => b,
    };
    let window = SlidingWindow::new(segment::model_window(&model, args.roi.as_deref())?, args.overlap, blend)?;
    let mut vol = Volume::read(&args.input, common.memory_budget)?;
    if args.ct_window {
        volume::ct_window(&mut vol.data);
    }
    let reference = args.label.as_deref().map(|p| Volume::read(p, common.memory_budget)).transpose()?;
    if let Some(r) = &reference {
        anyhow::ensure!(r.shape() == vol.shape(), "label map is {:?}, the volume {:?}", r.shape(), vol.shape());
    }
    // Label maps are read as float like every volume; class indices once.
    let reference = reference.map(|r| r.data.mapv(|x| x.round().clamp(0.0, 255.0) as u8));
    let threads = args.run.threads.unwrap_or_else(all_cores).max(1);
    let backend = common.backend()?;
    let settings = format!(
        "roi={:?} overlap={} blend={:?} largest_component={} ct_window={}",
        window.roi, args.overlap, window.blend, !args.all_components, args.ct_window
    );
    let made_by = common.volume_provenance(&model, &backend, settings)?;
    let opts = SegmentOptions { window, largest_component: !args.all_components, backend, threads };
    let start = Instant::now();
    let bar = progress_bar("windows");
    let seg = segment::segment(&model, &vol, &opts, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    vol.write_labels_like(&args.output, seg.labels.view(), Some(&made_by))?;
    let [x, y, z] = vol.shape();
    let sp = vol.spacing();
    let voxel_ml = (sp[0] * sp[1] * sp[2]).abs() as f64 / 1000.0;
    let seconds = start.elapsed().as_secs_f64();
    let mut summary = Summary::new();
    summary.add(
        "volume",
        format!("{} ({x}x{y}x{z}, spacing {:.3}x{:.3}x{:.3})", args.input.display(), sp[0], sp[1], sp[2]),
        json!({ "path": args.input, "shape": [x, y, z], "spacing": sp }),
    );
    summary.add(
        "windows",
        format!(
            "{} of {:?} in {seconds:.2} s; {} voxels removed outside the largest components",
            seg.windows, opts.window.roi, seg.removed
        ),
        json!({ "count": seg.windows, "roi": opts.window.roi, "seconds": seconds, "voxels_removed": seg.removed }),
    );
    let mut classes = Vec::new();
    let mut lines = Vec::new();
    for (c, n) in seg.voxels.iter().enumerate().skip(1) {
        let d = reference.as_ref().and_then(|r| segment::dice(seg.labels.view(), r.view(), c as u8));
        let dice = d.map_or(String::new(), |d| format!("  Dice {d:.4}"));
        lines.push(format!("class {c}: {n} voxels, {:.2} mL{dice}", *n as f64 * voxel_ml));
        classes.push(json!({ "class": c, "voxels": n, "ml": *n as f64 * voxel_ml, "dice": d }));
    }
    summary.add("classes", lines.join("\n             "), json!(classes));
    summary.add("wrote", args.output.display().to_string(), json!(args.output));
    summary.add_peak_rss();
    summary.print(args.run.format, &made_by)?;
    Ok(ExitCode::SUCCESS)
}
