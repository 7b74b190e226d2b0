//! Errors of the models crate: bad configurations and weight files that do not
//! match the architecture, named by tensor so a user can fix their export.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("{file}: missing tensor {name:?} (expected shape {expected:?})")]
    MissingTensor { file: String, name: String, expected: Vec<usize> },
    #[error("{file}: tensor {name:?} has shape {got:?}, expected {expected:?}")]
    TensorShape { file: String, name: String, got: Vec<usize>, expected: Vec<usize> },
    #[error("{file}: tensor {name:?} contains NaN or infinite values")]
    NonFinite { file: String, name: String },
    #[error("{file}: unexpected tensors not used by the architecture: {names}")]
    UnusedTensors { file: String, names: String },
    #[error("{file}: {reason}")]
    Safetensors { file: String, reason: String },
    #[error(transparent)]
    Onnx(#[from] edgemed_onnx::Error),
}
