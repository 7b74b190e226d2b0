//! `edgemed-run heatmap`: a probability map over a large image (a slide region),
//! from a patch classifier run at a stride or from a local-map model. Writes an
//! overlay PNG, the raw map beside it as .npy and the summary beside them as .json
//! (what made the map, the grid's geometry, the statistics), and prints the summary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::ValueEnum;
use edgemed_runtime::formats::{image_out, patch};
use edgemed_runtime::fsutil::{self, Existing};
use edgemed_runtime::tasks::heatmap::{self, HeatmapOptions, Tta};

use crate::common::{all_cores, progress_bar, Common, Summary, SummaryFormat};
use serde_json::json;

// The subcommand's help text is the doc comment of its variant in main.rs.
#[derive(clap::Args)]
pub struct Args {
    /// The image (PNG/JPEG/TIFF).
    image: PathBuf,
    /// ONNX model: a patch classifier, or a local-map model from `edgemed export --local-map`;
    /// default: the bundled demonstration model.
    #[arg(short, long)]
    model: Option<PathBuf>,
    /// Overlay PNG to write; the raw probability map goes beside it as .npy (float32, NaN =
    /// no prediction) and the summary as .json (with what made them).
    #[arg(short, long)]
    output: PathBuf,
    /// Classifiers: pixels between patch positions (default: a third of the patch side).
    #[arg(long)]
    stride: Option<usize>,
    /// Image rows turned into patches at a time (bounds memory on large images).
    #[arg(long, default_value_t = 1024)]
    tile: usize,
    /// Patches per run (default: 1 with tract, 32 with ONNX Runtime; see classify).
    #[arg(short, long)]
    batch: Option<usize>,
    /// Worker threads (default: all cores).
    #[arg(short, long)]
    threads: Option<usize>,
    /// Test-time augmentation: none, or d4 (the 8 rotations and reflections of each patch).
    #[arg(long, value_enum, default_value_t = TtaArg::None)]
    tta: TtaArg,
    /// Probability from which a cell counts as positive in the summary.
    #[arg(long, default_value_t = 0.5)]
    threshold: f32,
    /// Replace the outputs (.png, .npy, .json) if they exist (they are kept otherwise).
    #[arg(long)]
    force: bool,
    /// The summary on standard output as text or as one JSON object (as in the .json file).
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    format: SummaryFormat,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum TtaArg {
    None,
    D4,
}

pub fn run(args: Args, common: &Common) -> Result<ExitCode> {
    // The overlay is a PNG and the map goes beside it as .npy: two files, checked first.
    anyhow::ensure!(
        args.output.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")),
        "{}: the overlay is written as PNG; name it .png (the map goes beside it as .npy)",
        args.output.display()
    );
    let inputs: Vec<&std::path::Path> = std::iter::once(args.image.as_path()).chain(args.model.as_deref()).collect();
    let (npy, json_path) = (args.output.with_extension("npy"), args.output.with_extension("json"));
    fsutil::check_outputs(&[&args.output, &npy, &json_path], &inputs, Existing::from_flags(args.force, false))?;
    anyhow::ensure!(args.threshold.is_finite() && (0.0..=1.0).contains(&args.threshold), "--threshold must be a probability in [0, 1]");
    let model = common.load_model(args.model.as_deref())?;
    let img = patch::read_rgb(&args.image)?;
    let backend = common.backend()?;
    let opts = HeatmapOptions {
        stride: args.stride,
        tile: args.tile,
        batch: args.batch.unwrap_or(backend.default_batch()),
        threads: args.threads.unwrap_or_else(all_cores),
        tta: if args.tta == TtaArg::D4 { Tta::D4 } else { Tta::None },
        backend,
    };
    let settings = format!("stride={:?} tta={:?} threshold={}", args.stride, opts.tta, args.threshold);
    let made_by = common.volume_provenance(&model, &opts.backend, settings)?;
    let start = Instant::now();
    let bar = progress_bar("patch positions");
    let map = heatmap::heatmap_with_progress(&model, &img, &opts, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let output = &args.output;
    let mut raw = Vec::new();
    let grid = edgemed_runtime::ndarray::Array2::from_shape_vec((map.rows, map.cols), map.probs.clone())?;
    ndarray_npy::WriteNpyExt::write_npy(&grid, &mut raw)?;
    let png = image_out::png_with_record(&heatmap::overlay(&img, &map, 0.5), &made_by)?;
    let (lo, mean, hi) = map.summary();
    let seconds = start.elapsed().as_secs_f64();
    let kind = if map.local_map { "local map" } else { "patch classifier" };
    let area = map.area_above(args.threshold);
    let mut summary = Summary::new();
    summary.add(
        "image",
        format!("{} ({}x{})", args.image.display(), img.width(), img.height()),
        json!({ "path": args.image, "width": img.width(), "height": img.height() }),
    );
    summary.add(
        "map",
        format!("{}x{} cells of {:.1} px ({kind}), {} patch runs in {seconds:.2} s", map.rows, map.cols, map.cell, map.patches),
        json!({ "rows": map.rows, "cols": map.cols, "cell_px": map.cell, "origin_px": [map.origin.0, map.origin.1], "kind": kind, "patch_runs": map.patches, "seconds": seconds }),
    );
    summary.add("probability", format!("min {lo:.4}  mean {mean:.4}  max {hi:.4}"), json!({ "min": lo, "mean": mean, "max": hi }));
    summary.add(
        "area",
        format!("{:.1}% of the mapped cells at p >= {}", 100.0 * area, args.threshold),
        json!({ "fraction": area, "threshold": args.threshold }),
    );
    summary.add(
        "wrote",
        format!("{} (overlay), {} (map), {} (summary)", output.display(), npy.display(), json_path.display()),
        json!({ "overlay": output, "map": npy, "summary": json_path }),
    );
    let mut record = Vec::new();
    summary.write_json(&mut record, &made_by)?;
    fsutil::write_atomic(&npy, &raw).with_context(|| format!("writing {}", npy.display()))?;
    fsutil::write_atomic(&json_path, &record).with_context(|| format!("writing {}", json_path.display()))?;
    fsutil::write_atomic(output, &png).with_context(|| format!("writing {}", output.display()))?;
    summary.print(args.format, &made_by)?;
    Ok(ExitCode::SUCCESS)
}
