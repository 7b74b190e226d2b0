//! edgemed-converter: the host-side toolchain. Exports the reference
//! architectures of `edgemed-models` to ONNX, quantizes FP32 ONNX to INT8 without
//! data (`dfq`), converts to FP16, and rewrites classifiers into local prediction
//! maps (`local_map`). Everything it writes is checked to load in the runtime first.
//!
//! The top layer: it reads and rewrites graphs with the base layer (edgemed-onnx:
//! protobuf types, the tensor decoder, attribute helpers), builds architectures with
//! edgemed-models, and runs models with edgemed-runtime's tract backend (calibration,
//! verification). The device binary never links it. Its CLI (`edgemed`) is `main.rs`
//! plus one module per subcommand under `cli/`.

pub mod calibrate;
pub mod clipped_normal;
pub mod dfq;
pub mod export;
pub mod fp16;
pub mod graph;
pub mod inputs;
pub mod local_map;
pub mod passes;
pub mod quantize;
pub mod verify;
