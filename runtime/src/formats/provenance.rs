//! What made a result: the model (name, version, SHA-256 of its file), the backend,
//! the settings that change the numbers, the edgemed version and the time. Every file
//! a command writes carries it (result rows, NIfTI headers and extensions, PNG text
//! chunks, JSON summaries), so a number can always be traced to the model that gave
//! it, and `--resume` can refuse to continue a file another model or other settings
//! began.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The record of one run. Field names are also the CSV column names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The model's file name (or the bundled model's name).
    pub model: String,
    /// The ONNX `model_version` field.
    pub model_version: String,
    /// SHA-256 of the model file's bytes (of several files' hashes, for multi-file models).
    pub model_sha256: String,
    /// The backend that ran, with its device, e.g. `edgemed-int8 (cpu)`.
    pub backend: String,
    /// The options that change the results, `key=value` separated by spaces.
    pub settings: String,
    /// The edgemed version that wrote the file.
    pub edgemed: String,
    /// When the run started, RFC 3339, UTC.
    pub time: String,
}

/// The CSV columns a [`Provenance`] fills, in order.
pub const COLUMNS: [&str; 7] = ["model", "model_version", "model_sha256", "backend", "settings", "edgemed", "time"];

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl Provenance {
    /// A record for a model whose file bytes are `bytes`, run now.
    pub fn new(model: &crate::model::OnnxModel, bytes: &[u8], backend: String, settings: String) -> Self {
        Provenance {
            model: display_name(&model.path),
            model_version: model.proto.model_version.to_string(),
            model_sha256: sha256_hex(bytes),
            backend,
            settings,
            edgemed: env!("CARGO_PKG_VERSION").to_string(),
            time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        }
    }

    /// The record as CSV cells, in [`COLUMNS`] order.
    pub fn cells(&self) -> [&str; 7] {
        [&self.model, &self.model_version, &self.model_sha256, &self.backend, &self.settings, &self.edgemed, &self.time]
    }

    /// The same model (by its bytes), backend and settings: results that may share a file.
    pub fn same_run_as(&self, other: &Provenance) -> bool {
        self.model_sha256 == other.model_sha256 && self.backend == other.backend && self.settings == other.settings
    }

    /// One line for headers with little room (the NIfTI description has 80 bytes).
    pub fn short(&self) -> String {
        format!("edgemed {} {} sha256:{} {}", self.edgemed, self.model, &self.model_sha256[..12.min(self.model_sha256.len())], self.backend)
    }

    /// Why a file begun by `earlier` cannot be continued by this run, if it cannot.
    pub fn check_continues(&self, earlier: &Provenance, file: &Path) -> Result<()> {
        if self.same_run_as(earlier) {
            return Ok(());
        }
        let what = |p: &Provenance| {
            format!("{} (sha256 {}…) on {}, {}", p.model, &p.model_sha256[..12.min(p.model_sha256.len())], p.backend, p.settings)
        };
        Err(Error::Invalid(format!(
            "{}: begun by {}; this run is {}: resuming would mix two runs' answers in one file (write to another file, or pass --force to start it afresh)",
            file.display(),
            what(earlier),
            what(self)
        )))
    }
}

/// A model path as results name it: the file name, or the bundled model's name.
fn display_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sha: &str, settings: &str) -> Provenance {
        Provenance {
            model: "m.onnx".into(),
            model_version: "1".into(),
            model_sha256: sha.into(),
            backend: "edgemed-int8 (cpu)".into(),
            settings: settings.into(),
            edgemed: "0.1.0".into(),
            time: "2026-12-04T00:00:00Z".into(),
        }
    }

    #[test]
    fn another_model_or_setting_cannot_continue_a_file() {
        let a = record("aa", "crop=95");
        let mut later = a.clone();
        later.time = "2026-12-05T00:00:00Z".into();
        assert!(later.check_continues(&a, Path::new("out.csv")).is_ok(), "time alone does not matter");
        let e = record("bb", "crop=95").check_continues(&a, Path::new("out.csv")).unwrap_err().to_string();
        assert!(e.contains("out.csv") && e.contains("--force") && e.contains("sha256 aa") && e.contains("sha256 bb"), "{e}");
        assert!(record("aa", "crop=95 resize").check_continues(&a, Path::new("o")).is_err());
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(COLUMNS.len(), a.cells().len());
    }
}
