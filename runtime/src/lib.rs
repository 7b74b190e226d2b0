//! edgemed-runtime: the device side of edgemed, above the base layer (edgemed-onnx,
//! re-exported here as [`model`], [`metadata`], [`error`], [`fsutil`]) and the INT8
//! engine (edgemed-engine).
//!
//! It owns:
//! - [`backend`]: the [`backend::Backend`] trait and one file per backend: edgemed's
//!   INT8 engine, tract (feature `tract`, on by default) and ONNX Runtime (feature
//!   `ort`); the fallback policy between them;
//! - [`budget`]: the memory budget, checked from declared sizes before anything large
//!   is allocated; [`parallel`]: batches over threads (and the allocator setting they
//!   need); [`bench`]: benchmarking;
//! - [`tasks`]: what runs on a model, one file per task (classify, heatmap, sliding
//!   window, segment, upsample, aging);
//! - [`formats`]: the files read and written, one file per format (patches, PCam HDF5,
//!   NIfTI volumes, tensors, results, manifests).
//!
//! It never links the converter, so the device binary `edgemed-run` stays small;
//! without the `tract` feature it is engine only (QDQ models).

pub mod backend;
pub mod bench;
pub mod budget;
pub mod formats;
pub mod parallel;
pub mod tasks;

// The base layer (edgemed-onnx), under the names the runtime's users know.
pub use edgemed_onnx::{error, fsutil, metadata, model, Error, Result};
pub use ndarray;
#[cfg(feature = "tract")]
pub use tract_onnx;

/// The demonstration model shipped with edgemed (C4 equivariant MobileNetV2 trained
/// on synthetic PCam-like patches; see README), in its INT8 version: what `edgemed
/// quantize` makes of models/bundled/pcam-c4-demo.onnx with the default data-free
/// recipe (scripts/make-bundled-int8.sh). Embedded so `classify` needs no flags; the
/// FP32 file stays beside it in models/bundled/ (`--model` runs it).
#[cfg(feature = "bundled-model")]
pub const BUNDLED_MODEL: &[u8] = include_bytes!("../../models/bundled/pcam-c4-demo-int8.onnx");
/// The bundled model's file name in models/bundled/ and in its manifest.
pub const BUNDLED_MODEL_FILE: &str = "pcam-c4-demo-int8.onnx";
pub const BUNDLED_MODEL_NAME: &str = "<bundled pcam-c4-demo-int8>";
/// The bundled model's manifest (models/bundled/edgemed-manifest.json), checked against the
/// embedded bytes before use.
#[cfg(feature = "bundled-model")]
pub const BUNDLED_MANIFEST: &str = include_str!("../../models/bundled/edgemed-manifest.json");
