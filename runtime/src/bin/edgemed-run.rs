//! edgemed-run: the device binary. Classifies PCam patches, describes models,
//! and benchmarks them. Every failure is one line on stderr and a non-zero exit.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use edgemed_runtime::tasks::aging;
use edgemed_runtime::backend::{BackendKind, BackendOptions, Device, OptLevel};
use edgemed_runtime::tasks::classify::{Classifier, ClassifierOptions, PatchResult};
use edgemed_runtime::tasks::heatmap::{self, HeatmapOptions, Tta};
use edgemed_runtime::formats::manifest::{self, IntegrityPolicy};
use edgemed_runtime::model::{Dim, OnnxModel};
use edgemed_runtime::formats::results::{self, ResultStream, RowFormat};
use edgemed_runtime::tasks::segment::{self, SegmentOptions};
use edgemed_runtime::tasks::sliding_window::{Blend, SlidingWindow};
use edgemed_runtime::tasks::upsample;
use edgemed_runtime::formats::volume::{self, Volume};
use edgemed_runtime::formats::{patch, tensors};
use edgemed_runtime::{bench, budget, fsutil};

#[derive(Parser)]
#[command(name = "edgemed-run", version, about = "Run edgemed models on device: PCam patch classification, model info, benchmarks")]
struct Cli {
    /// More logging (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Backend: tract (pure Rust, default), ort (ONNX Runtime) or int8 (edgemed's integer engine for
    /// QDQ models; tract for the rest); bench takes a list (tract,ort,int8).
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
    /// Refuse models and inputs whose declared sizes (weights, input, peak activations)
    /// exceed this, e.g. 512M, 2G; 0 or none: no limit.
    #[arg(long, global = true, default_value = "1G", value_name = "SIZE")]
    memory_budget: String,
    /// Model manifest to check models against (default: edgemed-manifest.json beside the model, if any).
    #[arg(long, global = true, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// Refuse models that no manifest lists.
    #[arg(long, global = true)]
    require_manifest: bool,
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
        /// Write the results here instead of standard output. csv and jsonl rows are
        /// streamed to OUTPUT.partial as patches are done, renamed to OUTPUT at the end;
        /// table and json are written at the end (atomically).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Continue an interrupted run: keep the patches already classified in OUTPUT(.partial),
        /// classify the rest (failed ones again). Needs --output with --format csv or jsonl.
        #[arg(long)]
        resume: bool,
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
    /// Segment a volume (NIfTI) with a segmentation network run by sliding window
    /// (MONAI's sliding_window_inference semantics); writes a uint8 label map with the
    /// input's affine.
    Segment {
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
    },
    /// Super-resolve a volume (NIfTI) with an upsampling patch model (3-D ESPCN from
    /// `edgemed export espcn3d`), patch by patch; writes the volume at r times the
    /// resolution with the matching affine.
    Upsample {
        /// Input volume (.nii or .nii.gz, 3-D).
        input: PathBuf,
        /// Volume to write (.nii or .nii.gz).
        #[arg(short, long)]
        output: PathBuf,
        /// ONNX upsampling model (metadata edgemed.upsample_scale and edgemed.receptive_halo).
        #[arg(short, long)]
        model: PathBuf,
    },
    /// Predict aging with the GLOW digital twin: x+ = G^-1(P^n(G(x))) on the model grid;
    /// prints the volume of each tracked intensity band per year.
    Age {
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
    },
    /// Describe a model: inputs, outputs, operators, parameters, precision, metadata.
    Info {
        /// ONNX model; default: the bundled demonstration model.
        model: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Run a model on one input tensor and write its outputs, or check them against
    /// outputs written elsewhere (e.g. on the host): `--expect DIR`.
    Run {
        /// ONNX model.
        model: PathBuf,
        /// Input tensor: float32 .npy, or raw little-endian float32 in the model's declared input shape.
        #[arg(short, long)]
        input: PathBuf,
        /// Write each output as OUTPUT_DIR/<output name>.npy (atomically).
        #[arg(short, long)]
        output_dir: Option<PathBuf>,
        /// Compare each output with DIR/<output name>.npy; exit status 1 when one differs.
        #[arg(long)]
        expect: Option<PathBuf>,
        /// Largest absolute difference accepted by --expect; 0 (default) demands identical bits.
        #[arg(long, default_value_t = 0.0)]
        tolerance: f64,
    },
    /// Measure latency (p50/p90/p99), throughput and peak memory; with --quantized, the
    /// FP32 model and its INT8 version side by side (speed-up against ONNX Runtime INT8).
    Bench {
        /// ONNX model; default: the bundled demonstration model.
        model: Option<PathBuf>,
        /// The INT8 (QDQ) version of MODEL, run on every backend after MODEL (int8
        /// only runs this one), e.g. `bench fp32.onnx --quantized int8.onnx --backend tract,ort,int8`.
        #[arg(long)]
        quantized: Option<PathBuf>,
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
        /// With the int8 backend: time each step of the engine's plan (per op: MACs,
        /// microseconds, GMAC/s, share), the tool for finding where the time goes.
        #[arg(long)]
        profile: bool,
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
    /// JSON lines: one object per patch, streamed.
    Jsonl,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).format_timestamp(None).init();
    let setup = budget::parse_bytes(&cli.memory_budget).map_err(anyhow::Error::from).and_then(|memory_budget| {
        let checks = Checks { integrity: IntegrityPolicy { manifest: cli.manifest.clone(), require: cli.require_manifest }, memory_budget };
        Ok((backend_options(&cli, memory_budget)?, checks))
    });
    match setup.and_then(|(b, checks)| run(cli.command, b, &checks)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgemed-run: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The backends named on the command line (bench may take several), with the shared options.
fn backend_options(cli: &Cli, memory_budget: u64) -> Result<Vec<BackendOptions>> {
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
                memory_budget,
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

/// What every model load checks: the manifest and the memory budget.
struct Checks {
    integrity: IntegrityPolicy,
    memory_budget: u64,
}

fn load_model(path: Option<&Path>, checks: &Checks) -> Result<OnnxModel> {
    Ok(match path {
        Some(p) => {
            // Before reading it: a model file larger than the budget cannot run here anyway.
            if let Ok(meta) = std::fs::metadata(p) {
                budget::check(|| format!("{}: the model file", p.display()), meta.len(), checks.memory_budget)?;
            }
            manifest::load_checked(p, &checks.integrity)?
        }
        None => bundled_model()?,
    })
}

/// The embedded model, checked against its embedded manifest entry (a build that
/// embedded another file than the one released fails here).
#[cfg(feature = "bundled-model")]
fn bundled_model() -> Result<OnnxModel> {
    let (name, bytes) = (edgemed_runtime::BUNDLED_MODEL_NAME, edgemed_runtime::BUNDLED_MODEL);
    let model = OnnxModel::from_bytes(name, bytes)?;
    let listed = manifest::Manifest::parse(Path::new("models/bundled/edgemed-manifest.json"), edgemed_runtime::BUNDLED_MANIFEST)?;
    let entry = listed.entry("pcam-c4-demo.onnx").context("the bundled manifest lists no pcam-c4-demo.onnx")?;
    manifest::check_entry(Path::new(name), bytes, &model, entry)?;
    Ok(model)
}

#[cfg(not(feature = "bundled-model"))]
fn bundled_model() -> Result<OnnxModel> {
    anyhow::bail!("this build has no bundled model (feature bundled-model is off); pass --model MODEL.onnx")
}

fn run(cmd: Command, backends: Vec<BackendOptions>, checks: &Checks) -> Result<ExitCode> {
    match cmd {
        Command::Classify { paths, model, batch, threads, format, output, resume, resize, crop } => {
            let model = load_model(model.as_deref(), checks)?;
            let threads = threads.unwrap_or_else(all_cores);
            let backend = single(&backends)?;
            let batch = batch.unwrap_or(backend.default_batch());
            let classifier = Classifier::new(&model, &ClassifierOptions { batch, threads, resize, crop, backend })?;
            log::info!("running on {} ({})", classifier.backend().name(), classifier.backend().device());
            let files = patch::expand_inputs(&paths)?;
            classify(&classifier, &files, format, output.as_deref(), resume)
        }
        Command::Heatmap { image, model, output, stride, tile, batch, threads, tta, threshold } => {
            let model = load_model(model.as_deref(), checks)?;
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
        Command::Segment { input, output, model, roi, overlap, blend, sigma_scale, all_components, ct_window, label } => {
            let model = load_model(Some(&model), checks)?;
            let blend = match blend.parse::<Blend>()? {
                Blend::Gaussian { .. } => Blend::Gaussian { sigma_scale },
                b => b,
            };
            let window = SlidingWindow::new(segment::model_window(&model, roi.as_deref())?, overlap, blend)?;
            let mut vol = Volume::read(&input, checks.memory_budget)?;
            if ct_window {
                volume::ct_window(&mut vol.data);
            }
            let reference = label.as_deref().map(|p| Volume::read(p, checks.memory_budget)).transpose()?;
            if let Some(r) = &reference {
                anyhow::ensure!(r.shape() == vol.shape(), "label map is {:?}, the volume {:?}", r.shape(), vol.shape());
            }
            // Label maps are read as float like every volume; class indices once.
            let reference = reference.map(|r| r.data.mapv(|x| x.round().clamp(0.0, 255.0) as u8));
            let opts = SegmentOptions { window, largest_component: !all_components, backend: single(&backends)? };
            let start = Instant::now();
            let bar = progress_bar("windows");
            let seg = segment::segment(&model, &vol, &opts, |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            })?;
            bar.finish_and_clear();
            vol.write_labels_like(&output, seg.labels.view())?;
            let [x, y, z] = vol.shape();
            let sp = vol.spacing();
            let voxel_ml = (sp[0] * sp[1] * sp[2]).abs() as f64 / 1000.0;
            println!("volume       {} ({x}x{y}x{z}, spacing {:.3}x{:.3}x{:.3})", input.display(), sp[0], sp[1], sp[2]);
            println!(
                "windows      {} of {:?} in {:.2} s; {} voxels removed outside the largest components",
                seg.windows,
                opts.window.roi,
                start.elapsed().as_secs_f64(),
                seg.removed
            );
            for (c, n) in seg.voxels.iter().enumerate().skip(1) {
                let d = reference.as_ref().and_then(|r| segment::dice(seg.labels.view(), r.view(), c as u8));
                let dice = d.map_or(String::new(), |d| format!("  Dice {d:.4}"));
                println!("class {c:<6} {n} voxels, {:.2} mL{dice}", *n as f64 * voxel_ml);
            }
            println!("wrote        {}", output.display());
            print_peak_rss();
            Ok(ExitCode::SUCCESS)
        }
        Command::Upsample { input, output, model } => {
            let model = load_model(Some(&model), checks)?;
            let geo = upsample::geometry(&model)?;
            let vol = Volume::read(&input, checks.memory_budget)?;
            let [x, y, z] = vol.shape();
            let r = geo.scale;
            budget::check(|| format!("the {}x upsampled volume", r), (x * y * z * r * r * r * 4) as u64, checks.memory_budget)?;
            let start = Instant::now();
            let bar = progress_bar("patches");
            let out = upsample::upsample(&model, vol.data.view(), &single(&backends)?, |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            })?;
            bar.finish_and_clear();
            volume::write_nifti(&output, &upsample::upsampled_header(&vol.header, r), out.view())?;
            println!("volume       {} ({x}x{y}x{z})", input.display());
            println!(
                "upsampled    x{r} to {}x{}x{} in {:.2} s (patches of {:?}, halo {})",
                x * r,
                y * r,
                z * r,
                start.elapsed().as_secs_f64(),
                geo.patch,
                geo.halo
            );
            println!("wrote        {}", output.display());
            print_peak_rss();
            Ok(ExitCode::SUCCESS)
        }
        Command::Age { input, output, model, years, ct_window, crop, every_year, track } => {
            anyhow::ensure!(years >= 1, "--years must be at least 1");
            let bands = track.iter().map(|t| t.parse::<aging::Band>()).collect::<edgemed_runtime::Result<Vec<_>>>()?;
            let crop: Option<[usize; 3]> = match crop.as_deref() {
                None => None,
                Some([c]) => Some([*c; 3]),
                Some([a, b, c]) => Some([*a, *b, *c]),
                Some(_) => anyhow::bail!("--crop takes one size or three (X,Y,Z)"),
            };
            // Every output name is checked before hours of work, not after.
            let paths: Vec<PathBuf> = (1..=years).map(|k| if k == years { output.clone() } else { year_path(&output, k) }).collect();
            for p in &paths {
                anyhow::ensure!(volume::is_nifti_name(p), "{}: output volumes are written as .nii or .nii.gz", p.display());
            }
            let models = aging::TwinModels::load(&model, |p| load_model(Some(p), checks))?;
            let vol = Volume::read(&input, checks.memory_budget)?;
            let start = Instant::now();
            let twin = aging::Twin::new(&models, &single(&backends)?)?;
            let prepared = aging::prepare(&vol, ct_window, crop, twin.spec.grid)?;
            let [x, y, z] = vol.shape();
            let [gx, gy, gz] = twin.spec.grid;
            let sp = prepared.header.pixdim;
            println!("volume       {} ({x}x{y}x{z}) -> grid {gx}x{gy}x{gz}, voxel {:.3}x{:.3}x{:.3}", input.display(), sp[1], sp[2], sp[3]);
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
                    .map(|(n, b0)| {
                        format!("  {:>12.2} {:>+10.2}", *n as f64 * prepared.voxel_ml, (*n as f64 - *b0 as f64) * prepared.voxel_ml)
                    })
                    .collect();
                println!("{year:<4}{cells}");
            };
            row(0, &base);
            let bar = progress_bar("years");
            bar.set_length(years as u64);
            for (k, path) in (1..=years).zip(&paths) {
                zn = twin.step(&zn)?;
                if k == years || every_year {
                    let aged = twin.decode(&zn)?;
                    bar.suspend(|| row(k, &bands.iter().map(|b| b.voxels(&aged)).collect::<Vec<_>>()));
                    volume::write_nifti(path, &prepared.header, aged.view())?;
                }
                bar.inc(1);
            }
            bar.finish_and_clear();
            println!("aged         {years} years in {:.2} s", start.elapsed().as_secs_f64());
            for p in if every_year { &paths[..] } else { &paths[years - 1..] } {
                println!("wrote        {}", p.display());
            }
            print_peak_rss();
            Ok(ExitCode::SUCCESS)
        }
        Command::Info { model, json } => {
            let model = load_model(model.as_deref(), checks)?;
            info(&model, &single(&backends)?, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { model, input, output_dir, expect, tolerance } => {
            let model = load_model(Some(&model), checks)?;
            run_tensor(&model, &input, output_dir.as_deref(), expect.as_deref(), tolerance, &single(&backends)?)
        }
        Command::Bench { model, quantized, batch, threads, iters, warmup, profile } => {
            let model = load_model(model.as_deref(), checks)?;
            // Any model with a fixed shape after the batch: patches, or volume windows.
            let item = bench::item_shape(&model)?;
            anyhow::ensure!(threads >= 1, "--threads must be at least 1");
            let qmodel = quantized.as_deref().map(|q| load_model(Some(q), checks)).transpose()?;
            if let Some(q) = &qmodel {
                anyhow::ensure!(
                    bench::item_shape(q)? == item,
                    "--quantized takes the same input shape as the model ({item:?} after the batch)"
                );
            }
            // MACs of the convolutions, as the INT8 engine counts them (None: it does not cover the model).
            let macs = qmodel.as_ref().or(Some(&model)).and_then(|m| edgemed_engine::Engine::new(m).ok()).map(|e| e.plan.macs);
            println!(
                "{:<46} {:>6} {:>9} {:>9} {:>9} {:>12} {:>10} {:>8} {:>8} {:>13}",
                "model / backend @ device", "batch", "p50 ms", "p90 ms", "p99 ms", "items/s", "speed-up", "MMAC", "GMAC/s", "peak RSS MiB"
            );
            for b in &batch {
                // (model, precision label, backend): the FP32 model on the float backends, then the INT8 one on all.
                let mut runs: Vec<(&OnnxModel, &str, &BackendOptions)> = Vec::new();
                let fp32_label = if qmodel.is_some() { "FP32" } else { "" };
                for opts in &backends {
                    if qmodel.is_none() || opts.kind != BackendKind::Int8 {
                        runs.push((&model, fp32_label, opts));
                    }
                }
                if let Some(q) = &qmodel {
                    runs.extend(backends.iter().map(|o| (q, "INT8", o)));
                }
                let mut rows = Vec::new();
                for (m, label, opts) in runs {
                    let opts = BackendOptions { intra_threads: threads, ..opts.clone() };
                    let shape: Vec<usize> = std::iter::once(*b).chain(item.iter().copied()).collect();
                    let backend = edgemed_runtime::backend::create(m, &shape, &opts)?;
                    let s = bench::bench(backend.as_ref(), warmup, iters)?;
                    rows.push((format!("{} {label}", short_name(&m.path)).trim_end().to_string(), opts.kind, label, s));
                }
                // Speed-up against ONNX Runtime on the INT8 model when it ran, else the first row; same run.
                let reference = rows
                    .iter()
                    .find(|r| r.1 == BackendKind::Ort && r.2 == "INT8")
                    .or(rows.first())
                    .map(|r| r.3.throughput)
                    .expect("at least one backend");
                for (name, _, _, s) in &rows {
                    let gmacs = macs.map_or("".into(), |m| format!("{:.1}", m as f64 * s.batch as f64 / (s.p50_ms * 1e6)));
                    println!(
                        "{:<46} {:>6} {:>9.3} {:>9.3} {:>9.3} {:>12.1} {:>9.2}x {:>8} {:>8} {:>13}",
                        format!("{name} / {} @ {}", s.backend, s.device),
                        s.batch,
                        s.p50_ms,
                        s.p90_ms,
                        s.p99_ms,
                        s.throughput,
                        s.throughput / reference,
                        macs.map_or("".into(), |m| format!("{:.2}", m as f64 / 1e6)),
                        gmacs,
                        s.peak_rss_mib.map_or("n/a".into(), |m| format!("{m:.1}"))
                    );
                }
            }
            if profile {
                anyhow::ensure!(
                    backends.iter().any(|b| b.kind == BackendKind::Int8),
                    "--profile times the steps of the INT8 engine: add int8 to --backend"
                );
                print_engine_profile(qmodel.as_ref().unwrap_or(&model), item.iter().product(), iters)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Per-step times of the INT8 engine on the benchmark's input (`item` values).
fn print_engine_profile(model: &OnnxModel, item: usize, iters: usize) -> Result<()> {
    let engine = edgemed_engine::Engine::new(model).context("the INT8 engine does not cover this model")?;
    let x = bench::bench_input(item);
    engine.profile(&x, 5)?;
    let steps = engine.profile(&x, iters)?;
    let total: f64 = steps.iter().map(|s| s.seconds).sum();
    println!(
        "\nINT8 engine, {} kernels, {} integer ops, {} float ops, {:.2} MMAC, {:.1} KiB of buffers; per run, mean of {iters}:",
        engine.isa().name(),
        engine.plan.counts().0,
        engine.plan.counts().1,
        engine.plan.macs as f64 / 1e6,
        engine.memory().bytes() as f64 / 1024.0
    );
    println!("{:<56} {:>10} {:>9} {:>8} {:>7}", "step", "MMAC", "us", "GMAC/s", "share");
    for s in &steps {
        let us = s.seconds / iters as f64 * 1e6;
        let gmacs = if s.macs > 0 { format!("{:.1}", s.macs as f64 / (us * 1e3)) } else { String::new() };
        let mmac = if s.macs > 0 { format!("{:.3}", s.macs as f64 / 1e6) } else { String::new() };
        println!("{:<56} {:>10} {:>9.1} {:>8} {:>6.1}%", s.label, mmac, us, gmacs, 100.0 * s.seconds / total);
    }
    println!("{:<56} {:>10} {:>9.1}", "total", format!("{:.3}", engine.plan.macs as f64 / 1e6), total / iters as f64 * 1e6);
    Ok(())
}

fn run_tensor(
    model: &OnnxModel,
    input: &Path,
    output_dir: Option<&Path>,
    expect: Option<&Path>,
    tolerance: f64,
    opts: &BackendOptions,
) -> Result<ExitCode> {
    anyhow::ensure!(tolerance >= 0.0, "--tolerance must not be negative");
    anyhow::ensure!(output_dir.is_some() || expect.is_some(), "nothing to do: give --output-dir, --expect, or both");
    let x = tensors::read_input(input, model)?;
    let backend = edgemed_runtime::backend::create(model, x.shape(), opts)?;
    let outputs = backend.run(x)?;
    let names: Vec<String> =
        (0..outputs.len()).map(|i| model.outputs.get(i).map_or_else(|| format!("output{i}"), |o| o.name.clone())).collect();
    if let Some(dir) = output_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, y) in names.iter().zip(&outputs) {
            let path = tensors::output_file(dir, name);
            tensors::write_npy(&path, y)?;
            println!("wrote    {} {:?} -> {}", name, y.shape(), path.display());
        }
    }
    let mut all_within = true;
    if let Some(dir) = expect {
        for (name, y) in names.iter().zip(&outputs) {
            let reference = tensors::read_npy(&tensors::output_file(dir, name))?;
            let c = tensors::compare(&reference, y)?;
            let ok = c.within(tolerance);
            all_within &= ok;
            println!(
                "{}  {}: {} of {} elements differ, max |diff| {:.3e} (element {}), tolerance {}",
                if ok { "same   " } else { "DIFFERS" },
                name,
                c.differing,
                c.elements,
                c.max_abs_diff,
                c.worst,
                if tolerance == 0.0 { "identical bits".to_string() } else { format!("{tolerance:e}") }
            );
        }
    }
    Ok(if all_within { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn short_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn classify(
    classifier: &Classifier,
    files: &[patch::PatchSource],
    format: Format,
    output: Option<&Path>,
    resume: bool,
) -> Result<ExitCode> {
    let names = &classifier.metadata.class_names;
    let positive = &names[classifier.metadata.positive_class];
    let rows = match format {
        Format::Csv => Some(RowFormat::Csv),
        Format::Jsonl => Some(RowFormat::JsonLines),
        Format::Table | Format::Json => None,
    };
    anyhow::ensure!(!resume || (output.is_some() && rows.is_some()), "--resume needs --output FILE with --format csv or jsonl");

    // csv and jsonl go out row by row: to OUTPUT.partial, or to standard output.
    let mut stream = None;
    let mut todo: Vec<patch::PatchSource> = files.to_vec();
    if let (Some(path), Some(rows)) = (output, rows) {
        let (s, done) = ResultStream::open(path, rows, resume)?;
        if resume {
            todo.retain(|f| !done.contains(&f.to_string()));
            eprintln!("resuming {}: {} of {} patches already classified", path.display(), files.len() - todo.len(), files.len());
        }
        stream = Some(s);
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let width = todo.iter().map(|f| f.to_string().len()).max().unwrap_or(4).max(4);
    if stream.is_none() {
        match format {
            Format::Csv => writeln!(out, "{}", results::CSV_HEADER)?,
            Format::Table if output.is_none() => writeln!(out, "{:<width$}  {:>12}  class", "file", format!("p({positive})"))?,
            _ => {}
        }
    }
    let table_row = |r: &PatchResult| match &r.outcome {
        Ok(p) => format!("{:<width$}  {:>12.4}  {}\n", r.source.to_string(), p.probability, p.class_name),
        Err(e) => format!("{:<width$}  {:>12}  error: {e}\n", r.source.to_string(), "-"),
    };

    // The bar appears only when the work lasts over a second, and only on a terminal.
    let bar = indicatif::ProgressBar::with_draw_target(Some(todo.len() as u64), indicatif::ProgressDrawTarget::hidden());
    bar.set_style(indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} patches, {per_sec}, eta {eta}").expect("valid template"));
    let start = Instant::now();
    let mut shown = false;
    let mut kept: Vec<PatchResult> = Vec::new(); // only for the formats written at the end
    let mut failed: Vec<String> = Vec::new();
    let mut write_error: Option<anyhow::Error> = None;
    let mut done = 0usize;
    let outcome = classifier.classify(&todo, |r| {
        done += 1;
        if let Err(e) = &r.outcome {
            failed.push(e.clone());
        }
        if write_error.is_none() {
            let written: Result<()> = match (&mut stream, rows, format) {
                (Some(s), _, _) => s.write(&r).map_err(Into::into),
                (None, Some(rows), _) => out.write_all(results::format_row(rows, &r).as_bytes()).map_err(Into::into),
                (None, None, Format::Table) if output.is_none() => out.write_all(table_row(&r).as_bytes()).map_err(Into::into),
                _ => {
                    kept.push(r);
                    Ok(())
                }
            };
            write_error = written.err();
        }
        bar.inc(1);
        if !shown && start.elapsed() > Duration::from_secs(1) {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            shown = true;
        }
    });
    bar.finish_and_clear();
    if let Some(e) = write_error.or(outcome.err().map(Into::into)) {
        if let (Some(path), Some(_)) = (output, rows) {
            eprintln!(
                "edgemed-run: {done} patches done are kept in {}; rerun with --resume to go on",
                results::partial_path(path).display()
            );
        }
        return Err(e);
    }
    if let Some(s) = stream {
        s.finish().with_context(|| format!("writing {}", output.expect("streams go to files").display()))?;
    }

    let mut text = Vec::new();
    match format {
        Format::Table if output.is_some() => {
            writeln!(text, "{:<width$}  {:>12}  class", "file", format!("p({positive})"))?;
            kept.iter().for_each(|r| text.extend(table_row(r).into_bytes()));
        }
        Format::Json => {
            let rows: Vec<serde_json::Value> = kept.iter().map(results::row_json).collect();
            serde_json::to_writer_pretty(&mut text, &rows)?;
            text.push(b'\n');
        }
        _ => {}
    }
    if !text.is_empty() {
        match output {
            Some(path) => fsutil::write_atomic(path, &text).with_context(|| format!("writing {}", path.display()))?,
            None => out.write_all(&text)?,
        }
    }
    out.flush()?;

    for e in &failed {
        eprintln!("edgemed-run: error: {e}");
    }
    eprintln!(
        "classified {} of {} patches in {:.2} s{}",
        done - failed.len(),
        done,
        start.elapsed().as_secs_f64(),
        if failed.is_empty() { String::new() } else { format!("; {} failed", failed.len()) }
    );
    Ok(if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// What the chosen backend would run on: for ONNX Runtime, the library and its CUDA provider.
fn backend_line(opts: &BackendOptions) -> String {
    match opts.kind {
        BackendKind::Tract => "tract (CPU)".into(),
        BackendKind::Int8 => format!(
            "edgemed INT8 engine (CPU, {} kernels; tract for models it does not cover)",
            edgemed_engine::kernels::Isa::detect().name()
        ),
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

/// A progress bar on stderr (hidden when stderr is not a terminal).
/// Volumes are where memory matters: say how much the process took at its peak.
fn print_peak_rss() {
    if let Some(mib) = bench::peak_rss_mib() {
        println!("peak RSS     {mib:.0} MiB");
    }
}

/// OUT.nii.gz -> OUT_yearK.nii.gz (intermediate years of `age`).
fn year_path(output: &Path, k: usize) -> PathBuf {
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (stem, ext) = match name.strip_suffix(".nii.gz") {
        Some(s) => (s.to_string(), ".nii.gz"),
        None => (name.strip_suffix(".nii").unwrap_or(&name).to_string(), ".nii"),
    };
    output.with_file_name(format!("{stem}_year{k}{ext}"))
}

fn progress_bar(what: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg} (eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what);
    bar
}
