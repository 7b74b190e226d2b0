//! edgemed-onnx: the base layer every other edgemed crate stands on. It owns what it
//! takes to read and write ONNX without running it:
//!
//! - [`pb`]: the ONNX protobuf messages, compiled by prost from the project's own
//!   `proto/onnx.proto` (field names and numbers as the ONNX specification gives them);
//! - [`model`]: loading a model file into an [`model::OnnxModel`] with its signature,
//!   and [`metadata`]: the `edgemed.*` properties a model carries;
//! - [`builder`]: building graphs and saving models; [`tensor`]: the one tensor decoder;
//!   [`attr`]: the one set of attribute helpers;
//! - [`fsutil`]: atomic writes (temporary file, then rename);
//! - [`error`]: the error type of every edgemed crate, with a distinct "unsupported"
//!   category.
//!
//! It links no inference engine: the exporters and the converter's graph rewrites use
//! it without tract, and the INT8 engine is built on it alone.

pub mod attr;
pub mod builder;
pub mod error;
pub mod fsutil;
pub mod metadata;
pub mod model;
pub mod tensor;

/// The ONNX protobuf messages (package `onnx`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub use error::{Error, Result};
