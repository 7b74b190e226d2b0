//! Model integrity: a manifest (`edgemed-manifest.json` beside the models, or one named with
//! `--manifest`) lists the models a device may run: name, version, file, SHA-256 of
//! the file's bytes and the input spec. The converter writes an entry for every model
//! it produces; `edgemed-run` checks a model against its entry before compiling it and
//! refuses a mismatch. With `--require-manifest` a model without an entry is refused
//! too, so a device runs only what was deployed to it.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::{OnnxModel, TensorSpec};

/// The file name looked for beside a model when no manifest is named.
pub const MANIFEST_FILE: &str = "edgemed-manifest.json";

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub models: Vec<ManifestEntry>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ManifestEntry {
    pub name: String,
    /// The ONNX `model_version` field.
    pub version: String,
    /// File name, relative to the manifest's folder.
    pub file: String,
    /// Lower-case hex SHA-256 of the file's bytes.
    pub sha256: String,
    pub inputs: Vec<TensorSpec>,
}

/// How strictly to check models (the CLI's `--manifest` and `--require-manifest`).
#[derive(Debug, Clone, Default)]
pub struct IntegrityPolicy {
    /// The manifest to check against; default: `edgemed-manifest.json` beside the model, if any.
    pub manifest: Option<PathBuf>,
    /// Refuse models no manifest lists.
    pub require: bool,
}

pub use super::provenance::sha256_hex;

impl ManifestEntry {
    /// The entry describing `model`, parsed from `bytes`, stored as `file`.
    pub fn describe(file: &str, bytes: &[u8], model: &OnnxModel) -> Self {
        let stem = Path::new(file).file_stem().map_or_else(|| file.to_string(), |s| s.to_string_lossy().into_owned());
        ManifestEntry {
            name: stem,
            version: model.proto.model_version.to_string(),
            file: file.to_string(),
            sha256: sha256_hex(bytes),
            inputs: model.inputs.clone(),
        }
    }
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::Integrity { path: path.to_path_buf(), reason: format!("not a model manifest: {e}") })
    }

    /// Writes atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_vec_pretty(self).map_err(|e| Error::Invalid(e.to_string()))?;
        text.push(b'\n');
        crate::fsutil::write_atomic(path, &text)
    }

    /// Adds `entry`, replacing any entry for the same file.
    pub fn upsert(&mut self, entry: ManifestEntry) {
        self.models.retain(|m| m.file != entry.file);
        self.models.push(entry);
        self.models.sort_by(|a, b| a.file.cmp(&b.file));
    }

    pub fn entry(&self, file: &str) -> Option<&ManifestEntry> {
        self.models.iter().find(|m| m.file == file)
    }

    /// Adds or refreshes the entry of `model_path` in the `edgemed-manifest.json` beside it.
    pub fn record(model_path: &Path, bytes: &[u8], model: &OnnxModel) -> Result<PathBuf> {
        let manifest_path = crate::fsutil::folder_of(model_path).join(MANIFEST_FILE);
        let mut manifest = if manifest_path.exists() { Manifest::load(&manifest_path)? } else { Manifest::default() };
        let file = model_path.file_name().ok_or_else(|| Error::Invalid(format!("{}: not a file path", model_path.display())))?;
        manifest.upsert(ManifestEntry::describe(&file.to_string_lossy(), bytes, model));
        manifest.save(&manifest_path)?;
        Ok(manifest_path)
    }
}

/// Checks `bytes` (read from `path`, parsed as `model`) against `entry`: hash, then input spec.
pub fn check_entry(path: &Path, bytes: &[u8], model: &OnnxModel, entry: &ManifestEntry) -> Result<()> {
    let bad = |reason: String| Error::Integrity { path: path.to_path_buf(), reason };
    // A model edited on purpose (its metadata, say) is recorded again by the converter.
    let again = format!("if the change is intended, record the model again with `edgemed manifest {}`", path.display());
    let got = sha256_hex(bytes);
    if !got.eq_ignore_ascii_case(&entry.sha256) {
        return Err(bad(format!(
            "SHA-256 {got} does not match the manifest's {} for {} {}: the file was changed or corrupted; {again}",
            entry.sha256, entry.name, entry.version
        )));
    }
    if model.inputs != entry.inputs {
        return Err(bad(format!("inputs {:?} differ from the manifest's {:?}; {again}", model.inputs, entry.inputs)));
    }
    Ok(())
}

/// Reads a model once, checks it against the policy's manifest, then parses it.
pub fn load_checked(path: &Path, policy: &IntegrityPolicy) -> Result<OnnxModel> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let model = OnnxModel::from_bytes(path, &bytes)?;
    let manifest_path = match &policy.manifest {
        Some(m) => Some(m.clone()),
        None => {
            let beside = crate::fsutil::folder_of(path).join(MANIFEST_FILE);
            beside.is_file().then_some(beside)
        }
    };
    let Some(manifest_path) = manifest_path else {
        if policy.require {
            return Err(Error::Integrity {
                path: path.to_path_buf(),
                reason: format!("no {MANIFEST_FILE} beside the model and none given with --manifest (--require-manifest)"),
            });
        }
        return Ok(model);
    };
    let manifest = Manifest::load(&manifest_path)?;
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    match manifest.entry(&file) {
        Some(entry) => {
            check_entry(path, &bytes, &model, entry)?;
            log::info!("{}: matches {} {} in {}", path.display(), entry.name, entry.version, manifest_path.display());
        }
        None if policy.require => {
            return Err(Error::Integrity {
                path: path.to_path_buf(),
                reason: format!("not listed in {} (--require-manifest)", manifest_path.display()),
            })
        }
        None => log::warn!("{}: not listed in {}; running it unchecked", path.display(), manifest_path.display()),
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_standard_test_vector() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn upsert_replaces_the_entry_of_the_same_file() {
        let e = |file: &str, sha: &str| ManifestEntry {
            name: file.into(),
            version: "1".into(),
            file: file.into(),
            sha256: sha.into(),
            inputs: vec![],
        };
        let mut m = Manifest::default();
        m.upsert(e("b.onnx", "1"));
        m.upsert(e("a.onnx", "2"));
        m.upsert(e("b.onnx", "3"));
        assert_eq!(m.models.len(), 2);
        assert_eq!(m.entry("b.onnx").unwrap().sha256, "3");
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(Manifest::parse(Path::new("m.json"), &text).unwrap(), m);
        assert!(matches!(Manifest::parse(Path::new("m.json"), "{\"models\": 3}"), Err(Error::Integrity { .. })));
    }
}
