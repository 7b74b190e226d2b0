//! What several subcommands of edgemed-run share: the global options once parsed
//! (backends, model integrity policy, memory budget), loading a model with its
//! manifest and budget checks (or the bundled one), the default thread count, and
//! the progress bar and peak-memory line of the volume subcommands.

use std::path::Path;

use anyhow::Result;
use edgemed_runtime::backend::BackendOptions;
use edgemed_runtime::formats::manifest::{self, IntegrityPolicy};
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

/// Volumes are where memory matters: say how much the process took at its peak.
pub fn print_peak_rss() {
    if let Some(mib) = bench::peak_rss_mib() {
        println!("peak RSS     {mib:.0} MiB");
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(what: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg} (eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what);
    bar
}
