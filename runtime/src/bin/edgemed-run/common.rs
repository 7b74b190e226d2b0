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

/// Checks, before any work, that every output can be written and would destroy no
/// input: its folder exists and takes a new file, it is not a folder, not one of the
/// `inputs` (however the path is spelled), and no two outputs are the same file.
pub fn check_outputs(outputs: &[&Path], inputs: &[&Path]) -> Result<()> {
    use anyhow::{bail, Context};
    // The path a file has or would have: its folder's canonical path and its name.
    let resolved = |p: &Path| -> Result<std::path::PathBuf> {
        let name = p.file_name().with_context(|| format!("{}: not a file name", p.display()))?;
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let dir = std::fs::canonicalize(&dir).with_context(|| format!("{}: its folder {} does not exist", p.display(), dir.display()))?;
        Ok(dir.join(name))
    };
    let inputs: Vec<std::path::PathBuf> = inputs.iter().filter_map(|p| std::fs::canonicalize(p).ok()).collect();
    let mut seen: Vec<std::path::PathBuf> = Vec::new();
    for out in outputs {
        if out.is_dir() {
            bail!("{}: is a folder; give a file name to write", out.display());
        }
        let r = resolved(out)?;
        if inputs.contains(&r) {
            bail!("{}: the output is one of the inputs; write it to another file (edgemed never overwrites an input)", out.display());
        }
        if seen.contains(&r) {
            bail!("{}: two outputs of this command would be the same file", out.display());
        }
        // The folder takes a new file (a probe, removed at once).
        let probe = r.with_file_name(format!(".{}.edgemed-probe", r.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .with_context(|| format!("{}: cannot write in its folder", out.display()))?;
        let _ = std::fs::remove_file(&probe);
        seen.push(r);
    }
    Ok(())
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
