//! edgemed-runtime: the device side of edgemed.
//!
//! Owns loading ONNX models ([`model`]), their `edgemed.*` metadata ([`metadata`]),
//! execution backends ([`backend`], tract by default), PCam patch input
//! ([`patch`]), batched classification ([`classify`]), probability maps over
//! larger images ([`heatmap`]) and benchmarking ([`bench`]).
//! It never links the converter: the device binary `edgemed-run` stays small.

pub mod backend;
pub mod bench;
pub mod classify;
pub mod error;
pub mod fsutil;
pub mod heatmap;
pub mod metadata;
pub mod model;
pub mod parallel;
pub mod patch;
pub mod pcam_h5;

pub use error::{Error, Result};
pub use tract_onnx;
pub use tract_onnx::prelude::tract_ndarray as ndarray;

/// The demonstration model shipped with edgemed (C4 equivariant MobileNetV2 trained
/// on synthetic PCam-like patches; see README). Embedded so `classify` needs no flags.
#[cfg(feature = "bundled-model")]
pub const BUNDLED_MODEL: &[u8] = include_bytes!("../../models/bundled/pcam-c4-demo.onnx");
pub const BUNDLED_MODEL_NAME: &str = "<bundled pcam-c4-demo>";
