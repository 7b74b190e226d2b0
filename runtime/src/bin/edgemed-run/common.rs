//! What several subcommands of edgemed-run share: the global options once parsed
//! (backends, model integrity policy, memory budget), loading a model with its
//! manifest and budget checks (or the bundled one), the record of what made a result,
//! the default thread count, and the progress bar and peak-memory line of the volume
//! subcommands.

use std::path::Path;

use anyhow::Result;
use edgemed_runtime::backend::BackendOptions;
use edgemed_runtime::formats::manifest::{self, IntegrityPolicy};
use edgemed_runtime::formats::provenance::Provenance;
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::{bench, budget};

/// The global options, checked: what every subcommand runs with.
pub struct Common {
    /// The backends named by --backend (only bench takes several).
    pub backends: Vec<BackendOptions>,
    /// What every model load checks: the manifest ...
    pub integrity: IntegrityPolicy,
    /// ... and the memory budget.
    pub memory_budget: u64,
}

impl Common {
    /// The one backend of a subcommand that is not bench.
    pub fn backend(&self) -> Result<BackendOptions> {
        anyhow::ensure!(self.backends.len() == 1, "this subcommand takes one --backend (only bench compares several)");
        Ok(self.backends[0].clone())
    }

    /// The record of what makes this command's results: `model` (as `load_model` gave
    /// it, its file hashed), the backend that runs it and the settings that change the numbers.
    pub fn provenance(&self, model: &OnnxModel, backend: String, settings: String) -> Result<Provenance> {
        #[cfg(feature = "bundled-model")]
        if model.path == Path::new(edgemed_runtime::BUNDLED_MODEL_NAME) {
            return Ok(Provenance::new(model, edgemed_runtime::BUNDLED_MODEL, backend, settings));
        }
        let bytes = std::fs::read(&model.path).map_err(|e| edgemed_runtime::Error::io(&model.path, e))?;
        Ok(Provenance::new(model, &bytes, backend, settings))
    }

    /// The record of a volume command's results: the backend named by how it resolves for `model`.
    pub fn volume_provenance(&self, model: &OnnxModel, backend: &BackendOptions, settings: String) -> Result<Provenance> {
        self.provenance(model, format!("{} ({})", backend.kind.resolve(model), backend.device), settings)
    }

    /// The model at `path` (checked against its manifest and the memory budget), or the bundled one.
    pub fn load_model(&self, path: Option<&Path>) -> Result<OnnxModel> {
        Ok(match path {
            Some(p) => {
                // Before reading it: a model file larger than the budget cannot run here anyway.
                if let Ok(meta) = std::fs::metadata(p) {
                    budget::check(|| format!("{}: the model file", p.display()), meta.len(), self.memory_budget)?;
                }
                manifest::load_checked(p, &self.integrity)?
            }
            None => bundled_model()?,
        })
    }
}

/// The embedded model, checked against its embedded manifest entry (a build that
/// embedded another file than the one released fails here).
#[cfg(feature = "bundled-model")]
fn bundled_model() -> Result<OnnxModel> {
    use anyhow::Context;
    let (name, bytes) = (edgemed_runtime::BUNDLED_MODEL_NAME, edgemed_runtime::BUNDLED_MODEL);
    let model = OnnxModel::from_bytes(name, bytes)?;
    let listed = manifest::Manifest::parse(Path::new("models/bundled/edgemed-manifest.json"), edgemed_runtime::BUNDLED_MANIFEST)?;
    let file = edgemed_runtime::BUNDLED_MODEL_FILE;
    let entry = listed.entry(file).with_context(|| format!("the bundled manifest lists no {file}"))?;
    manifest::check_entry(Path::new(name), bytes, &model, entry)?;
    Ok(model)
}

#[cfg(not(feature = "bundled-model"))]
fn bundled_model() -> Result<OnnxModel> {
    anyhow::bail!("this build has no bundled model (feature bundled-model is off); pass --model MODEL.onnx")
}

pub fn all_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(what: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}, {rate} (eta {eta})")
            .expect("valid template")
            .with_key("rate", rate)
            .progress_chars("=> "),
    );
    bar.set_message(what);
    bar
}

/// The options every volume command (segment, upsample, age) takes alike.
#[derive(clap::Args)]
pub struct VolumeRun {
    /// Threads (default: all cores). `segment` and `upsample` run that many windows
    /// (patches) side by side with the INT8 engine and tract (a volume of one window
    /// splits its ops instead); `age` and ONNX Runtime split each model run's ops over
    /// them (the INT8 engine's pool, ONNX Runtime's intra-op pool; tract uses one).
    /// Same results at any count.
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// Replace the outputs if they exist (they are kept otherwise).
    #[arg(long)]
    pub force: bool,
    /// The summary as text or as one JSON object (with what made the outputs).
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    pub format: SummaryFormat,
}

/// How a command prints what it found: aligned text for people, or one JSON object.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SummaryFormat {
    Text,
    Json,
}

/// The summary a command prints at the end, built once and printed as text (one
/// `key  value` line per field) or as one JSON object (the fields' values, plus what
/// made the results), so every command's results can be read by a program.
pub struct Summary {
    fields: Vec<(&'static str, String, serde_json::Value)>,
}

impl Summary {
    pub fn new() -> Self {
        Summary { fields: Vec::new() }
    }

    /// A field: its text for people and its value for programs.
    pub fn add(&mut self, key: &'static str, text: String, value: serde_json::Value) {
        self.fields.push((key, text, value));
    }

    pub fn remove(&mut self, key: &str) {
        self.fields.retain(|(k, _, _)| *k != key);
    }

    pub fn print(&self, format: SummaryFormat, made_by: &Provenance) -> Result<()> {
        match format {
            SummaryFormat::Text => self.fields.iter().filter(|(_, t, _)| !t.is_empty()).for_each(|(k, text, _)| println!("{k:<12} {text}")),
            SummaryFormat::Json => self.write_json(&mut std::io::stdout().lock(), made_by)?,
        }
        Ok(())
    }

    /// The JSON form: one object, the fields' values (spaces in keys become `_`) and `made_by`.
    pub fn write_json(&self, w: &mut impl std::io::Write, made_by: &Provenance) -> Result<()> {
        let mut o = serde_json::Map::new();
        for (k, _, v) in &self.fields {
            o.insert(k.replace(' ', "_"), v.clone());
        }
        o.insert("made_by".into(), serde_json::to_value(made_by)?);
        serde_json::to_writer_pretty(&mut *w, &o)?;
        writeln!(w)?;
        Ok(())
    }

    /// Volumes are where memory matters: how much the process took at its peak.
    pub fn add_peak_rss(&mut self) {
        if let Some(mib) = bench::peak_rss_mib() {
            self.add("peak RSS", format!("{mib:.0} MiB"), serde_json::json!({ "mib": mib }));
        }
    }
}

/// A progress bar's rate as people write it: `208/s`, `3.1/s`, `0.25/s`.
pub fn rate(state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write) {
    let r = state.per_sec();
    let _ = match r {
        r if r >= 100.0 => write!(w, "{r:.0}/s"),
        r if r >= 1.0 => write!(w, "{r:.1}/s"),
        r => write!(w, "{r:.2}/s"),
    };
}
