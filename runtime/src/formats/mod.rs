//! The files the runtime reads and writes, one file per format, each with its own
//! checks and clear errors for corrupt or hostile input; a new format (DICOM, a slide
//! pyramid) is a new file here.
//!
//! - [`patch`]: image patches (PNG, JPEG, TIFF) and their preprocessing to tensors;
//! - [`pcam_h5`]: the PCam HDF5 files (pure Rust reader);
//! - [`volume`]: NIfTI volumes, CT windowing, resampling;
//! - [`image_out`]: images written (overlays), PNG with the provenance in text chunks;
//! - [`tensors`]: raw float32 and `.npy` tensors, for checking one machine against another;
//! - [`results`]: classification results streamed to csv/json/jsonl, resumable;
//! - [`manifest`]: model manifests (SHA-256 and metadata) checked before a model is used;
//! - [`provenance`]: what made a result (model, SHA-256, backend, settings, version, time),
//!   recorded in every file a command writes.

pub mod image_out;
pub mod manifest;
pub mod patch;
pub mod pcam_h5;
pub mod provenance;
pub mod results;
pub mod tensors;
pub mod volume;

/// The largest image side any reader accepts (patches, slide regions, PCam HDF5
/// datasets): a header claiming more (a decompression bomb) is refused before anything
/// is allocated; a PCam patch is 96.
pub const MAX_IMAGE_SIDE: u32 = 8192;
