//! edgemed-runtime: the device side of edgemed.
//!
//! Owns loading ONNX models ([`model`]), their `edgemed.*` metadata ([`metadata`]),
//! execution backends ([`backend`], tract by default), its own INT8 engine for QDQ
//! models ([`int8`]), PCam patch input
//! ([`patch`]), batched classification ([`classify`]), probability maps over
//! larger images ([`heatmap`]), volumes ([`volume`]: NIfTI, CT windowing, resampling)
//! and what runs on them: sliding-window inference ([`sliding_window`]), segmentation
//! ([`segment`]), super-resolution ([`upsample`]) and aging prediction with the
//! GLOW digital twin ([`aging`]), tensors as files for checking one machine against
//! another ([`tensors`]) and benchmarking ([`bench`]); and what keeps a device safe:
//! model manifests ([`manifest`]), the memory budget ([`budget`]) and results streamed
//! so nothing done is lost ([`results`]).
//! It never links the converter: the device binary `edgemed-run` stays small.

pub mod backend;
pub mod bench;
pub mod budget;
pub mod formats;
pub mod parallel;
pub mod tasks;

// The base layer (edgemed-onnx) under the names the runtime has always used.
pub use edgemed_onnx::{error, fsutil, metadata, model, Error, Result};
pub use ndarray;
#[cfg(feature = "tract")]
pub use tract_onnx;

/// The demonstration model shipped with edgemed (C4 equivariant MobileNetV2 trained
/// on synthetic PCam-like patches; see README). Embedded so `classify` needs no flags.
#[cfg(feature = "bundled-model")]
pub const BUNDLED_MODEL: &[u8] = include_bytes!("../../models/bundled/pcam-c4-demo.onnx");
pub const BUNDLED_MODEL_NAME: &str = "<bundled pcam-c4-demo>";
/// The bundled model's manifest (models/bundled/edgemed-manifest.json), checked against the
/// embedded bytes before use.
#[cfg(feature = "bundled-model")]
pub const BUNDLED_MANIFEST: &str = include_str!("../../models/bundled/edgemed-manifest.json");
