//! edgemed-run: the device binary. Classifies PCam patches, describes models,
//! and benchmarks them. Every failure is one line on stderr and a non-zero exit.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use edgemed_runtime::backend::{BackendKind, BackendOptions, Device, OptLevel};
use edgemed_runtime::classify::{Classifier, ClassifierOptions, PatchResult};
use edgemed_runtime::heatmap::{self, HeatmapOptions, Tta};
use edgemed_runtime::model::{Dim, OnnxModel};
use edgemed_runtime::{bench, fsutil, patch};

#[derive(Parser)]
#[command(name = "edgemed-run", version, about = "Run edgemed models on device: PCam patch classification, model info, benchmarks")]
struct Cli {
    /// More logging (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Backend: tract (pure Rust, default) or ort (ONNX Runtime); bench takes a list (tract,ort).
    #[arg(long, global = true, default_value = "tract", value_delimiter = ',')]
    backend: Vec<String>,
    /// cpu, cuda, cuda:ID, or auto (CUDA when ONNX Runtime has the provider, else CPU).
    #[arg(long, global = true, default_value = "auto")]
    device: String,
    /// Fail when the requested device is unavailable instead of falling back to the CPU.
    #[arg(long, global = true)]
    strict_device: bool,
    /// ONNX Runtime library (file or folder); default: ORT_DYLIB_PATH, then next to this binary.
    #[arg(long, global = true, value_name = "PATH")]
    ort_lib: Option<PathBuf>,
    /// ONNX Runtime graph optimisation: disable, basic, extended or all.
    #[arg(long, global = true, default_value = "all")]
    ort_opt_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Classify PCam patches (files, directories, glob patterns): probability of metastatic tissue.
    Classify {
        /// Patch images (PNG/JPEG/TIFF), directories of them, or glob patterns.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// ONNX model; default: the bundled demonstration model.
        #[arg(short, long)]
        model: Option<PathBuf>,
        /// Patches per inference; default 1 with tract, which runs this network fastest at
        /// batch 1 (3.0 ms per patch here, 10.5 ms at any larger batch; parallelism comes from
        /// --threads), and 32 with ONNX Runtime, which gains from batches (most on a GPU).
        #[arg(short, long)]
        batch: Option<usize>,
        /// Worker threads, each running whole batches (default: all cores).
        #[arg(short, long)]
        threads: Option<usize>,
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Write the results here (atomically) instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Resample patches whose size differs from the model's patch size instead of refusing them.
        #[arg(long)]
        resize: bool,
        /// Centre-crop size (must match the model input; default from the model).
        #[arg(long)]
        crop: Option<u32>,
    },
    /// Probability map over a large image (a slide region): overlay PNG, raw map (.npy), summary.
    Heatmap {
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
    },
    /// Describe a model: inputs, outputs, operators, parameters, precision, metadata.
    Info {
        /// ONNX model; default: the bundled demonstration model.
        model: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Measure latency (p50/p90/p99), throughput and peak memory.
    Bench {
        /// ONNX model; default: the bundled demonstration model.
        model: Option<PathBuf>,
        /// Batch sizes, e.g. 1,32,256.
        #[arg(short, long, default_value = "1", value_delimiter = ',')]
        batch: Vec<usize>,
        /// Threads inside one ONNX Runtime run (tract runs on one).
        #[arg(short, long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 50)]
        iters: usize,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum TtaArg {
    None,
    D4,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Format {
    Table,
    Json,
    Csv,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).format_timestamp(None).init();
    match backend_options(&cli).and_then(|b| run(cli.command, b)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgemed-run: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The backends named on the command line (bench may take several), with the shared options.
fn backend_options(cli: &Cli) -> Result<Vec<BackendOptions>> {
    let device: Device = cli.device.parse()?;
    let opt_level: OptLevel = cli.ort_opt_level.parse()?;
    cli.backend
        .iter()
        .map(|b| {
            Ok(BackendOptions {
                kind: b.parse::<BackendKind>()?,
                device,
                strict_device: cli.strict_device,
                ort_library: cli.ort_lib.clone(),
                intra_threads: 0,
                opt_level,
            })
        })
        .collect()
}

fn all_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn single(backends: &[BackendOptions]) -> Result<BackendOptions> {
    anyhow::ensure!(backends.len() == 1, "this subcommand takes one --backend (only bench compares several)");
    Ok(backends[0].clone())
}

fn load_model(path: Option<&Path>) -> Result<OnnxModel> {
    Ok(match path {
        Some(p) => OnnxModel::load(p)?,
        None => bundled_model()?,
    })
}

#[cfg(feature = "bundled-model")]
fn bundled_model() -> Result<OnnxModel> {
    Ok(OnnxModel::from_bytes(edgemed_runtime::BUNDLED_MODEL_NAME, edgemed_runtime::BUNDLED_MODEL)?)
}

#[cfg(not(feature = "bundled-model"))]
fn bundled_model() -> Result<OnnxModel> {
    anyhow::bail!("this build has no bundled model (feature bundled-model is off); pass --model MODEL.onnx")
}

fn run(cmd: Command, backends: Vec<BackendOptions>) -> Result<ExitCode> {
    match cmd {
        Command::Classify { paths, model, batch, threads, format, output, resize, crop } => {
            let model = load_model(model.as_deref())?;
            let threads = threads.unwrap_or_else(all_cores);
            let backend = single(&backends)?;
            let batch = batch.unwrap_or(backend.default_batch());
            let classifier = Classifier::new(&model, &ClassifierOptions { batch, threads, resize, crop, backend })?;
            log::info!("running on {} ({})", classifier.backend().name(), classifier.backend().device());
            let files = patch::expand_inputs(&paths)?;
            classify(&classifier, &files, format, output.as_deref())
        }
        Command::Heatmap { image, model, output, stride, tile, batch, threads, tta, threshold } => {
            let model = load_model(model.as_deref())?;
            let img = patch::read_rgb(&image)?;
            let backend = single(&backends)?;
            let opts = HeatmapOptions {
                stride,
                tile,
                batch: batch.unwrap_or(backend.default_batch()),
                threads: threads.unwrap_or_else(all_cores),
                tta: if tta == TtaArg::D4 { Tta::D4 } else { Tta::None },
                backend,
            };
            let start = Instant::now();
            let map = heatmap::heatmap(&model, &img, &opts)?;
            let npy = output.with_extension("npy");
            let mut raw = Vec::new();
            let grid = edgemed_runtime::ndarray::Array2::from_shape_vec((map.rows, map.cols), map.probs.clone())?;
            ndarray_npy::WriteNpyExt::write_npy(&grid, &mut raw)?;
            let mut png = Vec::new();
            heatmap::overlay(&img, &map, 0.5).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
            fsutil::write_atomic(&npy, &raw).with_context(|| format!("writing {}", npy.display()))?;
            fsutil::write_atomic(&output, &png).with_context(|| format!("writing {}", output.display()))?;
            let (lo, mean, hi) = map.summary();
            println!("image        {} ({}x{})", image.display(), img.width(), img.height());
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
            println!("area >= {threshold}  {:.1}% of the mapped cells", 100.0 * map.area_above(threshold));
            println!("wrote        {} (overlay), {} (map)", output.display(), npy.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Info { model, json } => {
            let model = load_model(model.as_deref())?;
            info(&model, &single(&backends)?, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { model, batch, threads, iters, warmup } => {
            let model = load_model(model.as_deref())?;
            let (_, side, _) = model.image_input()?;
            anyhow::ensure!(threads >= 1, "--threads must be at least 1");
            println!(
                "{:<34} {:>6} {:>9} {:>9} {:>9} {:>12} {:>9} {:>13}",
                "model / backend @ device", "batch", "p50 ms", "p90 ms", "p99 ms", "items/s", "speed-up", "peak RSS MiB"
            );
            for b in &batch {
                // Ratios against the first backend listed, measured in the same run.
                let mut first: Option<f64> = None;
                for opts in &backends {
                    let opts = BackendOptions { intra_threads: threads, ..opts.clone() };
                    let backend = edgemed_runtime::backend::create(&model, &[*b, 3, side, side], &opts)?;
                    let s = bench::bench(backend.as_ref(), warmup, iters)?;
                    let ratio = s.throughput / *first.get_or_insert(s.throughput);
                    println!(
                        "{:<34} {:>6} {:>9.3} {:>9.3} {:>9.3} {:>12.1} {:>8.2}x {:>13}",
                        format!("{} / {} @ {}", short_name(&model.path), s.backend, s.device),
                        s.batch,
                        s.p50_ms,
                        s.p90_ms,
                        s.p99_ms,
                        s.throughput,
                        ratio,
                        s.peak_rss_mib.map_or("n/a".into(), |m| format!("{m:.1}"))
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn short_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn classify(classifier: &Classifier, files: &[patch::PatchSource], format: Format, output: Option<&Path>) -> Result<ExitCode> {
    let names = &classifier.metadata.class_names;
    let positive = &names[classifier.metadata.positive_class];
    let mut results: Vec<PatchResult> = Vec::with_capacity(files.len());
    // The bar appears only when the work lasts over a second, and only on a terminal.
    let bar = indicatif::ProgressBar::with_draw_target(Some(files.len() as u64), indicatif::ProgressDrawTarget::hidden());
    bar.set_style(indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} patches, {per_sec}, eta {eta}").expect("valid template"));
    let start = Instant::now();
    let mut shown = false;
    classifier.classify(files, |r| {
        results.push(r);
        bar.inc(1);
        if !shown && start.elapsed() > Duration::from_secs(1) {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            shown = true;
        }
    })?;
    bar.finish_and_clear();

    let mut text = Vec::new();
    match format {
        Format::Table => {
            let width = results.iter().map(|r| r.source.to_string().len()).max().unwrap_or(4).max(4);
            writeln!(text, "{:<width$}  {:>12}  class", "file", format!("p({positive})"))?;
            for r in &results {
                match &r.outcome {
                    Ok(p) => writeln!(text, "{:<width$}  {:>12.4}  {}", r.source.to_string(), p.probability, p.class_name)?,
                    Err(e) => writeln!(text, "{:<width$}  {:>12}  error: {e}", r.source.to_string(), "-")?,
                }
            }
        }
        Format::Json => {
            let rows: Vec<serde_json::Value> = results
                .iter()
                .map(|r| match &r.outcome {
                    Ok(p) => serde_json::json!({"file": r.source.to_string(), "probability": p.probability, "class": p.class_name, "class_index": p.class_index, "logits": p.logits}),
                    Err(e) => serde_json::json!({"file": r.source.to_string(), "error": e}),
                })
                .collect();
            serde_json::to_writer_pretty(&mut text, &rows)?;
            text.push(b'\n');
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(&mut text);
            w.write_record(["file", "probability", "class", "error"])?;
            for r in &results {
                let file = r.source.to_string();
                match &r.outcome {
                    Ok(p) => w.write_record([file, format!("{:.6}", p.probability), p.class_name.clone(), String::new()])?,
                    Err(e) => w.write_record([file, String::new(), String::new(), e.clone()])?,
                }
            }
            w.flush()?;
        }
    }
    match output {
        Some(path) => fsutil::write_atomic(path, &text).with_context(|| format!("writing {}", path.display()))?,
        None => std::io::stdout().write_all(&text)?,
    }

    let failed: Vec<&PatchResult> = results.iter().filter(|r| r.outcome.is_err()).collect();
    for r in &failed {
        eprintln!("edgemed-run: error: {}", r.outcome.as_ref().unwrap_err());
    }
    eprintln!(
        "classified {} of {} patches in {:.2} s{}",
        results.len() - failed.len(),
        results.len(),
        start.elapsed().as_secs_f64(),
        if failed.is_empty() { String::new() } else { format!("; {} failed", failed.len()) }
    );
    Ok(if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// What the chosen backend would run on: for ONNX Runtime, the library and its CUDA provider.
fn backend_line(opts: &BackendOptions) -> String {
    match opts.kind {
        BackendKind::Tract => "tract (CPU)".into(),
        #[cfg(feature = "ort")]
        BackendKind::Ort => match edgemed_runtime::backend::ort::load(opts.ort_library.as_deref()) {
            Ok(path) => format!(
                "ort, library {}, CUDA provider {}",
                path.display(),
                match edgemed_runtime::backend::ort::cuda_available(None) {
                    Ok(true) => "available",
                    Ok(false) => "not available",
                    Err(_) => "unknown",
                }
            ),
            Err(e) => format!("ort, unavailable: {e}"),
        },
        #[cfg(not(feature = "ort"))]
        BackendKind::Ort => "ort, not in this build".into(),
    }
}

fn info(model: &OnnxModel, backend: &BackendOptions, json: bool) -> Result<()> {
    let dims = |d: &Option<Vec<Dim>>| {
        d.as_ref().map_or("?".into(), |d| format!("[{}]", d.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")))
    };
    if json {
        let v = serde_json::json!({
            "path": model.path,
            "opset": model.opset(),
            "producer": model.proto.producer_name,
            "inputs": model.inputs,
            "outputs": model.outputs,
            "ops": model.op_histogram(),
            "parameters": model.parameter_count(),
            "precision": model.precision(),
            "metadata": model.metadata,
            "backend": backend_line(backend),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("model      {}", model.path.display());
    println!("producer   {} {} (opset {})", model.proto.producer_name, model.proto.producer_version, model.opset());
    for i in &model.inputs {
        println!("input      {} {} {}", i.name, i.elem_type, dims(&i.dims));
    }
    for o in &model.outputs {
        println!("output     {} {} {}", o.name, o.elem_type, dims(&o.dims));
    }
    println!("parameters {}", model.parameter_count());
    println!("precision  {}", model.precision());
    let ops: Vec<String> = model.op_histogram().into_iter().map(|(k, v)| format!("{k} x{v}")).collect();
    println!("operators  {}", ops.join(", "));
    let md = &model.metadata;
    println!(
        "pipeline   patch {}x{} -> crop {} -> (x/255 - {:?}) / {:?}{}",
        md.patch_size,
        md.patch_size,
        md.crop_size.map_or("model input".into(), |c| c.to_string()),
        md.mean,
        md.std,
        if md.circular_mask { " -> circular mask" } else { "" }
    );
    println!("classes    {} (reported: {})", md.class_names.join(", "), md.class_names[md.positive_class]);
    println!("backend    {}", backend_line(backend));
    println!("group      C{}{}", md.group_order, md.arch.as_ref().map_or(String::new(), |a| format!(" ({a})")));
    for (k, v) in &md.raw {
        println!("meta       {k} = {v}");
    }
    Ok(())
}
