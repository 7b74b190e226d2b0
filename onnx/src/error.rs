//! One error type for every edgemed crate, grouped by what went wrong, each variant
//! carrying the file or value it is about so a CLI can print one clear line.
//!
//! [`Error::Unsupported`] is its own category: a construct edgemed does not handle
//! (an operator, a data type, a form of an op). It is neither bad input nor a bug, so
//! a caller may try another way (the INT8 backend falls back to tract on it, and only
//! on it).

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- files -------------------------------------------------------------
    // `error`, not `source`: the message already holds the reason, and error chains
    // printed with `{:#}` would repeat it ("Is a directory: Is a directory").
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: no such file or directory")]
    NotFound { path: PathBuf },
    #[error("{pattern}: no files match")]
    NoMatch { pattern: String },

    // --- models ------------------------------------------------------------
    #[error("{path}: not a valid ONNX model (corrupt or truncated protobuf: {reason})")]
    CorruptModel { path: PathBuf, reason: String },
    #[error("{path}: unsupported model: {reason}")]
    UnsupportedModel { path: PathBuf, reason: String },
    #[error("{path}: invalid model: {reason}")]
    InvalidModel { path: PathBuf, reason: String },
    #[error("{path}: model input is not an image tensor: {reason}")]
    NotAnImageModel { path: PathBuf, reason: String },
    #[error("{path}: bad metadata {key}={value:?}: {reason}")]
    BadMetadata { path: PathBuf, key: String, value: String, reason: String },
    #[error("backend {backend}: {reason}")]
    Backend { backend: &'static str, reason: String },
    #[error("{path}: refused by the model manifest: {reason}")]
    Integrity { path: PathBuf, reason: String },
    #[error("{0}")]
    OrtLibrary(String),
    #[error("device {device} is not available: {reason}")]
    DeviceUnavailable { device: String, reason: String },

    // --- inputs ------------------------------------------------------------
    #[error("{path}: not a readable image: {reason}")]
    BadImage { path: PathBuf, reason: String },
    #[error("{path}: patch is {width}x{height}, expected {expected}x{expected} or the model's input size {input}x{input} (pass --resize to accept other sizes)")]
    WrongPatchSize { path: PathBuf, width: u32, height: u32, expected: u32, input: u32 },
    #[error("{path}: not a usable volume: {reason}")]
    BadVolume { path: PathBuf, reason: String },
    #[error("input tensor has shape {got:?}, model expects {expected:?}")]
    WrongShape { got: Vec<usize>, expected: Vec<usize> },
    #[error("{what}: contains NaN or infinite values")]
    NonFinite { what: String },
    #[error("{what}: {needed} needed, over the memory budget of {budget} (--memory-budget)")]
    OverBudget { what: String, needed: String, budget: String },
    #[error("{0}")]
    Invalid(String),

    // --- what edgemed does not handle ----------------------------------------
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl Error {
    pub fn unsupported(what: impl Into<String>) -> Self {
        Error::Unsupported(what.into())
    }

    pub fn is_unsupported(&self) -> bool {
        matches!(self, Error::Unsupported(_))
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound { path }
        } else {
            Error::Io { path, error: source }
        }
    }
}

/// `ensure!(cond, Error::...)`: return the error when the condition fails.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $err:expr) => {
        if !$cond {
            return Err($err);
        }
    };
}
