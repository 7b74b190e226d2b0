//! `edgemed-run bench`: latency (p50/p90/p99), throughput and peak memory of a model
//! on each backend named by --backend (tract, ONNX Runtime, the INT8 engine), per
//! batch size; with --quantized, the FP32 model and its INT8 version side by side
//! (speed-up against ONNX Runtime INT8), and with --profile the INT8 engine's time
//! per step of its plan. Rows print as they are measured, as a table, CSV or JSON lines
//! (`--format`); each row's peak memory is its own (the high-water mark is reset first).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use edgemed_runtime::backend::{BackendKind, BackendOptions};
use edgemed_runtime::bench::{self, BenchStats};
use edgemed_runtime::model::OnnxModel;

use crate::common::{progress_bar, Common};

// The subcommand's help text is the doc comment of its variant in main.rs.
#[derive(clap::Args)]
pub struct Args {
    /// ONNX model (or -m MODEL); default: the bundled demonstration model.
    #[arg(value_name = "MODEL")]
    model_path: Option<PathBuf>,
    /// ONNX model, as every subcommand takes it.
    #[arg(short, long, conflicts_with = "model_path")]
    model: Option<PathBuf>,
    /// The input's sizes after the batch, for models whose input is dynamic, e.g. 3,224,224.
    #[arg(long, value_delimiter = ',', value_name = "SIZES")]
    shape: Option<Vec<usize>>,
    /// The INT8 (QDQ) version of MODEL, run on every backend after MODEL (int8
    /// only runs this one), e.g. `bench fp32.onnx --quantized int8.onnx --backend tract,ort,int8`.
    #[arg(long)]
    quantized: Option<PathBuf>,
    /// Batch sizes, e.g. 1,32,256.
    #[arg(short, long, default_value = "1", value_delimiter = ',')]
    batch: Vec<usize>,
    /// Threads inside one run: ONNX Runtime's intra-op pool and the INT8 engine's
    /// (each op of a batch of one split over them, the items of a larger batch whole
    /// side by side; same results at any count); tract runs on one.
    #[arg(short, long, default_value_t = 1)]
    threads: usize,
    /// Timed runs per backend and batch size (at least 1).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    iters: u64,
    /// Untimed runs before them (loading caches, first-run allocations).
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// table (default), csv, or json (one JSON object per row, as measured).
    #[arg(long, value_enum, default_value_t = BenchFormat::Table)]
    format: BenchFormat,
    /// With the int8 backend: time each step of the engine's plan (per op: MACs,
    /// microseconds, GMAC/s, share) at --threads, the tool for finding where the time goes.
    #[arg(long)]
    profile: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BenchFormat {
    Table,
    Csv,
    Json,
}

/// One measured run: its name (model and precision), backend, precision label and statistics.
type Row = (String, BackendKind, &'static str, BenchStats);

pub fn run(args: Args, common: &Common) -> Result<ExitCode> {
    let model = common.load_model(args.model.as_deref().or(args.model_path.as_deref()))?;
    // Any model with a fixed shape after the batch (patches, or volume windows), or --shape;
    // every input of a model with several.
    let items: Vec<Vec<usize>> = match &args.shape {
        Some(_) if model.inputs.len() > 1 => anyhow::bail!("--shape sets a model's one input; this model has {}", model.inputs.len()),
        Some(s) => {
            anyhow::ensure!(
                !s.is_empty() && s.iter().all(|&d| d > 0),
                "--shape takes the sizes after the batch, all above 0, e.g. 3,224,224"
            );
            let declared = model.inputs.first().and_then(|i| i.dims.as_ref()).map_or(0, |d| d.len());
            anyhow::ensure!(
                declared == 0 || declared == s.len() + 1,
                "--shape {s:?}: the model's input has {declared} dimensions, so give {} sizes after the batch",
                declared.saturating_sub(1)
            );
            vec![s.clone()]
        }
        None => bench::item_shapes(&model).map_err(|e| anyhow::anyhow!("{e} (give the sizes with --shape)"))?,
    };
    anyhow::ensure!(args.threads >= 1, "--threads must be at least 1");
    let qmodel = args.quantized.as_deref().map(|q| common.load_model(Some(q))).transpose()?;
    if let (Some(q), None) = (&qmodel, &args.shape) {
        anyhow::ensure!(
            bench::item_shapes(q)? == items,
            "--quantized takes the same input shapes as the model ({items:?} after the batch)"
        );
    }
    // MACs of the convolutions and products at batch 1, as the INT8 engine counts them
    // (float models too; None: a model the engine cannot lower).
    let macs = match qmodel.as_ref().or(Some(&model)).map(edgemed_engine::compile::count_macs) {
        Some(Ok(m)) => Some(m),
        Some(Err(e)) => {
            log::info!("no MAC count: {e}");
            None
        }
        None => None,
    };
    match args.format {
        BenchFormat::Table => println!(
            "{:<46} {:>6} {:>9} {:>9} {:>9} {:>12} {:>10} {:>8} {:>8} {:>13}",
            "model / backend @ device", "batch", "p50 ms", "p90 ms", "p99 ms", "items/s", "speed-up", "MMAC", "GMAC/s", "peak RSS MiB"
        ),
        BenchFormat::Csv => println!("{}", CSV_COLUMNS.join(",")),
        BenchFormat::Json => {}
    }
    for b in &args.batch {
        let shapes: Vec<Vec<usize>> = items.iter().map(|item| std::iter::once(*b).chain(item.iter().copied()).collect()).collect();
        let rows = measure(&args, &model, qmodel.as_ref(), &common.backends, &shapes)?;
        print_rows(&rows, macs, args.format)?;
    }
    if args.profile {
        let profiled = qmodel.as_ref().unwrap_or(&model);
        anyhow::ensure!(
            common.backends.iter().any(|b| b.kind.resolve(profiled) == BackendKind::Int8),
            "--profile times the steps of the INT8 engine: give a QDQ model (or --quantized QDQ_MODEL) and the int8 or auto backend"
        );
        let shape: Vec<usize> = std::iter::once(1).chain(items[0].iter().copied()).collect();
        print_engine_profile(profiled, &shape, args.iters as usize, args.threads)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One batch size (`shapes`, one per input): the FP32 model on the float backends, then the INT8 one on all.
fn measure(
    args: &Args,
    model: &OnnxModel,
    qmodel: Option<&OnnxModel>,
    backends: &[BackendOptions],
    shapes: &[Vec<usize>],
) -> Result<Vec<Row>> {
    // (model, precision label, backend)
    let mut runs: Vec<(&OnnxModel, &'static str, &BackendOptions)> = Vec::new();
    let fp32_label = if qmodel.is_some() { "FP32" } else { "" };
    for opts in backends {
        if qmodel.is_none() || opts.kind != BackendKind::Int8 {
            runs.push((model, fp32_label, opts));
        }
    }
    if let Some(q) = qmodel {
        runs.extend(backends.iter().map(|o| (q, "INT8", o)));
    }
    let mut rows = Vec::new();
    for (m, label, opts) in runs {
        let opts = BackendOptions { intra_threads: args.threads, ..opts.clone() };
        let name = format!("{} {label}", short_name(&m.path)).trim_end().to_string();
        // Each row's peak memory is its own: the high-water mark restarts here.
        bench::reset_peak_rss();
        let backend = edgemed_runtime::backend::create_with_inputs(m, shapes, &opts)?;
        let bar = progress_bar("runs");
        bar.set_message(format!("{name} on {}, batch {}", backend.name(), shapes[0][0]));
        bar.set_length(args.warmup as u64 + args.iters);
        let s = bench::bench_with_progress(backend.as_ref(), args.warmup, args.iters as usize, || bar.inc(1))?;
        bar.finish_and_clear();
        rows.push((name, opts.kind, label, s));
    }
    Ok(rows)
}

/// The columns of `--format csv` (JSON rows carry the same keys).
const CSV_COLUMNS: [&str; 13] = [
    "model",
    "backend",
    "device",
    "batch",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "items_per_s",
    "speed_up",
    "mmac",
    "gmac_per_s",
    "peak_rss_mib",
];

fn print_rows(rows: &[Row], macs: Option<u64>, format: BenchFormat) -> Result<()> {
    // Speed-up against ONNX Runtime on the INT8 model when it ran, else the first row; same run.
    let reference = rows
        .iter()
        .find(|r| r.1 == BackendKind::Ort && r.2 == "INT8")
        .or(rows.first())
        .map(|r| r.3.throughput)
        .expect("at least one backend");
    for (name, _, _, s) in rows {
        // MACs are counted at batch 1.
        let mmac = macs.map(|m| m as f64 / 1e6);
        let gmacs = macs.map(|m| m as f64 * s.batch as f64 / (s.p50_ms * 1e6));
        let speed_up = s.throughput / reference;
        match format {
            BenchFormat::Table => println!(
                "{:<46} {:>6} {:>9.3} {:>9.3} {:>9.3} {:>12.1} {:>9.2}x {:>8} {:>8} {:>13}",
                format!("{name} / {} @ {}", s.backend, s.device),
                s.batch,
                s.p50_ms,
                s.p90_ms,
                s.p99_ms,
                s.throughput,
                speed_up,
                mmac.map_or("n/a".into(), |m| format!("{m:.2}")),
                gmacs.map_or("n/a".into(), |g| format!("{g:.1}")),
                s.peak_rss_mib.map_or("n/a".into(), |m| format!("{m:.1}"))
            ),
            BenchFormat::Csv | BenchFormat::Json => {
                let values = serde_json::json!([
                    name,
                    s.backend,
                    s.device,
                    s.batch,
                    s.p50_ms,
                    s.p90_ms,
                    s.p99_ms,
                    s.mean_ms,
                    s.throughput,
                    speed_up,
                    mmac,
                    gmacs,
                    s.peak_rss_mib
                ]);
                let values = values.as_array().expect("an array");
                if format == BenchFormat::Json {
                    let row: serde_json::Map<String, serde_json::Value> =
                        CSV_COLUMNS.iter().map(|c| c.to_string()).zip(values.iter().cloned()).collect();
                    println!("{}", serde_json::to_string(&row)?);
                } else {
                    let mut w = csv::Writer::from_writer(std::io::stdout().lock());
                    w.write_record(values.iter().map(|v| match v {
                        serde_json::Value::String(t) => t.clone(),
                        serde_json::Value::Null => String::new(),
                        v => v.to_string(),
                    }))?;
                    w.flush()?;
                }
            }
        }
    }
    Ok(())
}

/// Per-step times of the INT8 engine on the benchmark's input (`item` values).
fn print_engine_profile(model: &OnnxModel, shape: &[usize], iters: usize, threads: usize) -> Result<()> {
    let engine =
        edgemed_engine::Engine::for_input(model, shape).context("the INT8 engine does not cover this model")?.with_threads(threads);
    let x = bench::bench_input(shape.iter().product());
    engine.profile(&x, 5)?;
    let steps = engine.profile(&x, iters)?;
    let total: f64 = steps.iter().map(|s| s.seconds).sum();
    println!(
        "\nINT8 engine, {} kernels, {} thread(s), {} integer ops, {} float ops, {:.2} MMAC, {:.1} KiB of buffers; per run, mean of {iters}:",
        engine.isa().name(),
        engine.threads(),
        engine.plan.counts().0,
        engine.plan.counts().1,
        engine.plan.macs as f64 / 1e6,
        engine.buffer_bytes() as f64 / 1024.0
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

fn short_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}
