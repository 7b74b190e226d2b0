//! `edgemed-run heatmap`: a probability map over a large image (a slide region),
//! from a patch classifier run at a stride or from a local-map model. Writes an
//! overlay PNG and the raw map beside it as .npy, and prints a summary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::ValueEnum;
use edgemed_runtime::formats::patch;
use edgemed_runtime::fsutil;
use edgemed_runtime::tasks::heatmap::{self, HeatmapOptions, Tta};

use crate::common::{all_cores, Common};

// The subcommand's help text is the doc comment of its variant in main.rs.
#[derive(clap::Args)]
pub struct Args {
    /// The image (PNG/JPEG/TIFF).
    image: PathBuf,
    /// ONNX model: a patch classifier, or a local-map model from `edgemed export --local-map`;
    /// default: the bundled demonstration model.
    #[arg(short, long)]
    model: Option<PathBuf>,
    /// Overlay PNG to write; the raw probability map goes beside it as .npy (float32, NaN = no prediction).
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
    crate::common::check_outputs(&[&args.output, &args.output.with_extension("npy")], &inputs)?;
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
    let start = Instant::now();
    let map = heatmap::heatmap(&model, &img, &opts)?;
    let output = &args.output;
    let npy = output.with_extension("npy");
    let mut raw = Vec::new();
    let grid = edgemed_runtime::ndarray::Array2::from_shape_vec((map.rows, map.cols), map.probs.clone())?;
    ndarray_npy::WriteNpyExt::write_npy(&grid, &mut raw)?;
    let mut png = Vec::new();
    heatmap::overlay(&img, &map, 0.5).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    fsutil::write_atomic(&npy, &raw).with_context(|| format!("writing {}", npy.display()))?;
    fsutil::write_atomic(output, &png).with_context(|| format!("writing {}", output.display()))?;
    let (lo, mean, hi) = map.summary();
    println!("image        {} ({}x{})", args.image.display(), img.width(), img.height());
    println!(
        "map          {}x{} cells of {:.1} px ({}), {} patch runs in {:.2} s",
        map.rows,
        map.cols,
        map.cell,
        if map.local_map { "local map" } else { "patch classifier" },
        map.patches,
        start.elapsed().as_secs_f64()
    );
    println!("probability  min {lo:.4}  mean {mean:.4}  max {hi:.4}");
    println!("area >= {}  {:.1}% of the mapped cells", args.threshold, 100.0 * map.area_above(args.threshold));
    println!("wrote        {} (overlay), {} (map)", output.display(), npy.display());
    Ok(ExitCode::SUCCESS)
}
