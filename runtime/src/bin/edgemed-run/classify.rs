//! `edgemed-run classify`: the probability of metastatic tissue for PCam patches
//! (files, directories, glob patterns). Results go out as a table, JSON, CSV or JSON
//! lines; csv and jsonl rows are streamed (to OUTPUT.partial when writing a file, so
//! that an interrupted run can be resumed), the others written at the end.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::ValueEnum;
use edgemed_runtime::formats::patch;
use edgemed_runtime::formats::provenance::Provenance;
use edgemed_runtime::formats::results::{self, ResultStream, RowFormat};
use edgemed_runtime::fsutil::{self, Existing};
use edgemed_runtime::tasks::classify::{Classifier, ClassifierOptions, PatchResult};
use edgemed_runtime::tasks::scoring;

use crate::common::{all_cores, Common};

// The subcommand's help text is the doc comment of its variant in main.rs.
#[derive(clap::Args)]
pub struct Args {
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
    /// table, json, csv or jsonl; default: from the output's extension (.json, .csv,
    /// .jsonl), else table.
    #[arg(short, long, value_enum)]
    format: Option<Format>,
    /// Write the results here instead of standard output. csv and jsonl rows are
    /// streamed to OUTPUT.partial as patches are done, renamed to OUTPUT at the end;
    /// table and json are written at the end (atomically).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Continue an interrupted run: keep the patches already classified in OUTPUT(.partial),
    /// classify the rest (failed ones again). Needs --output with --format csv or jsonl, and
    /// the same model, backend and settings as the run that began the file.
    #[arg(long, conflicts_with = "force")]
    resume: bool,
    /// Replace OUTPUT (and an interrupted run's OUTPUT.partial) if it exists; without it an
    /// existing output is kept and the command refuses to start.
    #[arg(long)]
    force: bool,
    /// Known labels (CSV `file,label`, the label a class index or name, as the samples'
    /// labels.csv): adds accuracy, sensitivity, specificity and ROC AUC of the positive class.
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// Resample patches whose size differs from the model's patch size instead of refusing them.
    #[arg(long)]
    resize: bool,
    /// Side of the centre crop taken from each patch (pixels); it must equal the model's
    /// input side, so this only checks it (default: the model's).
    #[arg(long, value_name = "PIXELS")]
    crop: Option<u32>,
}

/// The format an output's extension names (`-o results.csv` writes csv), else the table.
fn format_of(output: Option<&Path>) -> Format {
    match output.and_then(|p| p.extension()).and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("csv") => Format::Csv,
        Some("json") => Format::Json,
        Some("jsonl") | Some("ndjson") => Format::Jsonl,
        _ => Format::Table,
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Format {
    Table,
    Json,
    Csv,
    /// JSON lines: one object per patch, streamed.
    Jsonl,
}

pub fn run(args: Args, common: &Common) -> Result<ExitCode> {
    let model = common.load_model(args.model.as_deref())?;
    let files = patch::expand_inputs(&args.paths)?;
    let threads = args.threads.unwrap_or_else(all_cores);
    let backend = common.backend()?;
    // No batch larger than the patches there are (a batch is padded to its full size).
    let batch = args.batch.unwrap_or(backend.default_batch()).min(files.len().max(1));
    let classifier = Classifier::new(&model, &ClassifierOptions { batch, threads, resize: args.resize, crop: args.crop, backend })?;
    // What ran, for the summary line: the model, its precision, the backend.
    let ran =
        format!("{} ({}) on {} ({})", model.path.display(), model.precision(), classifier.backend().name(), classifier.backend().device());
    log::info!("running {ran}");
    // What every result row records; settings are what changes the numbers besides the model.
    let pre = &classifier.preprocess;
    let settings = format!("patch={} crop={} resize={}", pre.patch_size, pre.crop_size, args.resize);
    let made_by = common.provenance(&model, format!("{} ({})", classifier.backend().name(), classifier.backend().device()), settings)?;
    let labels = args
        .labels
        .as_deref()
        .map(|p| Ok::<_, anyhow::Error>((p, scoring::read_labels(p, &classifier.metadata.class_names)?)))
        .transpose()?;
    if let Some(out) = &args.output {
        // Before any patch is read: the output destroys no patch, the model or a folder.
        let patches: Vec<&std::path::Path> = files
            .iter()
            .map(|f| match f {
                patch::PatchSource::File(p) => p.as_path(),
                patch::PatchSource::H5 { path, .. } => path.as_path(),
            })
            .chain(args.model.as_deref())
            .chain(args.labels.as_deref())
            .collect();
        fsutil::check_outputs(&[out], &patches, Existing::from_flags(args.force, args.resume))?;
        let partial = results::partial_path(out);
        anyhow::ensure!(
            args.resume || args.force || !partial.exists(),
            "{}: an interrupted run's results are there; pass --resume to continue it, or --force to start afresh",
            partial.display()
        );
    }
    let format = args.format.unwrap_or_else(|| format_of(args.output.as_deref()));
    let run = Run { format, output: args.output.as_deref(), resume: args.resume, ran: &ran, made_by: &made_by };
    let code = classify(&classifier, &files, &run, labels.as_ref().map(|(p, l)| (*p, l)))?;
    Ok(code)
}

/// What one classify run writes, where, and what it records.
struct Run<'a> {
    format: Format,
    output: Option<&'a Path>,
    resume: bool,
    ran: &'a str,
    made_by: &'a Provenance,
}

fn classify(
    classifier: &Classifier,
    files: &[patch::PatchSource],
    run: &Run,
    labels: Option<(&Path, &HashMap<String, usize>)>,
) -> Result<ExitCode> {
    let Run { format, output, resume, ran, made_by } = *run;
    let names = &classifier.metadata.class_names;
    let positive = &names[classifier.metadata.positive_class];
    let rows = match format {
        Format::Csv => Some(RowFormat::Csv),
        Format::Jsonl => Some(RowFormat::JsonLines),
        Format::Table | Format::Json => None,
    };
    anyhow::ensure!(!resume || (output.is_some() && rows.is_some()), "--resume needs --output FILE with --format csv or jsonl");

    let (stream, todo) = open_stream(files, output, rows, resume, made_by)?;
    let width = todo.iter().map(|f| f.to_string().len()).max().unwrap_or(4).max(4);
    let mut sink = Sink::new(format, rows, output.is_some(), stream, width, made_by.clone());
    if sink.stream.is_none() {
        match format {
            Format::Csv => writeln!(sink.out, "{}", results::csv_header())?,
            Format::Table if output.is_none() => sink.out.write_all(table_header(width, positive).as_bytes())?,
            _ => {}
        }
    }

    let mut bar = DelayedBar::new(todo.len());
    let outcome = classifier.classify(&todo, |r| {
        sink.take(r);
        bar.inc();
    });
    bar.bar.finish_and_clear();
    if let Some(e) = sink.write_error.take().or(outcome.err().map(Into::into)) {
        if let (Some(path), Some(_)) = (output, rows) {
            eprintln!(
                "edgemed-run: {} patches done are kept in {}; rerun with --resume to go on",
                sink.done,
                results::partial_path(path).display()
            );
        }
        return Err(e);
    }
    if let Some(s) = sink.stream.take() {
        s.finish().with_context(|| format!("writing {}", output.expect("streams go to files").display()))?;
    }
    write_kept(&mut sink, output, positive)?;
    sink.out.flush()?;
    let code = summary(&sink.failed, sink.done, bar.start, ran);
    if let Some((path, labels)) = labels {
        print_scores(&sink.scored, path, labels, classifier)?;
    }
    Ok(code)
}

/// The scores against known labels, on stderr after the summary (the results stay on
/// standard output or in OUTPUT).
fn print_scores(
    scored: &[(patch::PatchSource, f32, usize)],
    path: &Path,
    labels: &HashMap<String, usize>,
    classifier: &Classifier,
) -> Result<()> {
    let md = &classifier.metadata;
    // A label's file is named relative to the labels file's folder (or as classify prints it).
    let folder = fsutil::folder_of(path);
    let by_path: HashMap<PathBuf, usize> =
        labels.iter().filter_map(|(k, &v)| std::fs::canonicalize(folder.join(k)).ok().map(|p| (p, v))).collect();
    let mut items = Vec::new();
    let mut unlabelled = 0;
    for (source, probability, class_index) in scored {
        let label = match source {
            patch::PatchSource::File(p) => std::fs::canonicalize(p).ok().and_then(|c| by_path.get(&c).copied()),
            _ => None,
        }
        .or_else(|| labels.get(&source.to_string()).copied());
        match label {
            Some(l) => items.push(scoring::Scored {
                probability: *probability,
                predicted_positive: *class_index == md.positive_class,
                positive: l == md.positive_class,
            }),
            None => unlabelled += 1,
        }
    }
    anyhow::ensure!(!items.is_empty(), "{}: labels none of the {} patches classified", path.display(), scored.len());
    let s = scoring::score(&items);
    let positive = &md.class_names[md.positive_class];
    eprintln!(
        "scored {} patches against {} ({} {positive}): accuracy {:.4}  sensitivity {:.4}  specificity {:.4}  AUC {:.4}{}",
        s.n,
        path.display(),
        s.positives,
        s.accuracy,
        s.sensitivity,
        s.specificity,
        s.auc,
        if unlabelled > 0 { format!("; {unlabelled} patches without a label") } else { String::new() }
    );
    Ok(())
}

/// csv and jsonl go out row by row: to OUTPUT.partial (what a resumed run already
/// did is taken out of the work), or to standard output (no stream).
fn open_stream(
    files: &[patch::PatchSource],
    output: Option<&Path>,
    rows: Option<RowFormat>,
    resume: bool,
    made_by: &Provenance,
) -> Result<(Option<ResultStream>, Vec<patch::PatchSource>)> {
    let mut stream = None;
    let mut todo: Vec<patch::PatchSource> = files.to_vec();
    if let (Some(path), Some(rows)) = (output, rows) {
        let (s, done) = ResultStream::open(path, rows, resume, made_by)?;
        if resume {
            todo.retain(|f| !done.contains(&f.to_string()));
            eprintln!("resuming {}: {} of {} patches already classified", path.display(), files.len() - todo.len(), files.len());
        }
        stream = Some(s);
    }
    Ok((stream, todo))
}

fn table_header(width: usize, positive: &str) -> String {
    format!("{:<width$}  {:>12}  class\n", "file", format!("p({positive})"))
}

fn table_row(r: &PatchResult, width: usize) -> String {
    match &r.outcome {
        Ok(p) => format!("{:<width$}  {:>12.4}  {}\n", r.source.to_string(), p.probability, p.class_name),
        Err(e) => format!("{:<width$}  {:>12}  error: {e}\n", r.source.to_string(), "-"),
    }
}

/// Where each result goes as it arrives, and what the run has seen so far.
struct Sink {
    format: Format,
    rows: Option<RowFormat>,
    to_file: bool,
    stream: Option<ResultStream>,
    out: std::io::StdoutLock<'static>,
    width: usize,
    /// Only for the formats written at the end.
    kept: Vec<PatchResult>,
    failed: Vec<String>,
    /// The first failure to write; later results are no longer written.
    write_error: Option<anyhow::Error>,
    done: usize,
    made_by: Provenance,
    /// Each classified patch: its positive-class probability and predicted class (for --labels).
    scored: Vec<(patch::PatchSource, f32, usize)>,
}

impl Sink {
    fn new(
        format: Format,
        rows: Option<RowFormat>,
        to_file: bool,
        stream: Option<ResultStream>,
        width: usize,
        made_by: Provenance,
    ) -> Self {
        let out = std::io::stdout().lock();
        let (kept, failed, scored) = (Vec::new(), Vec::new(), Vec::new());
        Sink { format, rows, to_file, stream, out, width, kept, failed, write_error: None, done: 0, made_by, scored }
    }

    fn take(&mut self, r: PatchResult) {
        self.done += 1;
        match &r.outcome {
            Err(e) => self.failed.push(e.clone()),
            Ok(p) => self.scored.push((r.source.clone(), p.probability, p.class_index)),
        }
        if self.write_error.is_none() {
            let written: Result<()> = match (&mut self.stream, self.rows, self.format) {
                (Some(s), _, _) => s.write(&r).map_err(Into::into),
                (None, Some(rows), _) => self.out.write_all(results::format_row(rows, &r, &self.made_by).as_bytes()).map_err(Into::into),
                (None, None, Format::Table) if !self.to_file => {
                    self.out.write_all(table_row(&r, self.width).as_bytes()).map_err(Into::into)
                }
                _ => {
                    self.kept.push(r);
                    Ok(())
                }
            };
            self.write_error = written.err();
        }
    }
}

/// The bar appears only when the work lasts over a second, and only on a terminal.
struct DelayedBar {
    bar: indicatif::ProgressBar,
    start: Instant,
    shown: bool,
}

impl DelayedBar {
    fn new(len: usize) -> Self {
        let bar = indicatif::ProgressBar::with_draw_target(Some(len as u64), indicatif::ProgressDrawTarget::hidden());
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} patches, {rate}, eta {eta}")
                .expect("valid template")
                .with_key("rate", crate::common::rate),
        );
        DelayedBar { bar, start: Instant::now(), shown: false }
    }

    fn inc(&mut self) {
        self.bar.inc(1);
        if !self.shown && self.start.elapsed() > Duration::from_secs(1) {
            self.bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            self.shown = true;
        }
    }
}

/// The formats written at the end: a table into a file, or JSON; atomically to OUTPUT, else to standard output.
fn write_kept(sink: &mut Sink, output: Option<&Path>, positive: &str) -> Result<()> {
    let mut text = Vec::new();
    match sink.format {
        Format::Table if output.is_some() => {
            // A table in a file says what made it in its first line.
            let m = &sink.made_by;
            text.extend(
                format!(
                    "# {} (version {}, sha256 {}) on {}, {}; edgemed {}, {}\n",
                    m.model, m.model_version, m.model_sha256, m.backend, m.settings, m.edgemed, m.time
                )
                .into_bytes(),
            );
            text.extend(table_header(sink.width, positive).into_bytes());
            sink.kept.iter().for_each(|r| text.extend(table_row(r, sink.width).into_bytes()));
        }
        Format::Json => {
            let rows: Vec<serde_json::Value> = sink.kept.iter().map(|r| results::row_json(r, &sink.made_by)).collect();
            serde_json::to_writer_pretty(&mut text, &rows)?;
            text.push(b'\n');
        }
        _ => {}
    }
    if !text.is_empty() {
        match output {
            Some(path) => fsutil::write_atomic(path, &text).with_context(|| format!("writing {}", path.display()))?,
            None => sink.out.write_all(&text)?,
        }
    }
    Ok(())
}

/// The failures, one line each, and the count on stderr; exit status 1 when a patch failed.
fn summary(failed: &[String], done: usize, start: Instant, ran: &str) -> ExitCode {
    for e in failed {
        eprintln!("edgemed-run: error: {e}");
    }
    eprintln!(
        "classified {} of {} patches in {:.2} s with {ran}{}",
        done - failed.len(),
        done,
        start.elapsed().as_secs_f64(),
        if failed.is_empty() { String::new() } else { format!("; {} failed", failed.len()) }
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
