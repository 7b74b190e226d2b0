//! edgemed-converter: the host-side toolchain. Exports the reference
//! architectures of `edgemed-models` to ONNX, quantizes FP32 ONNX to INT8 without
//! data (`dfq`), converts to FP16, and rewrites classifiers into local prediction
//! maps (`local_map`). Everything it writes is checked to load in the runtime first.

pub mod calibrate;
pub mod dfq;
pub mod export;
pub mod fp16;
pub mod graph;
pub mod inputs;
pub mod local_map;
pub mod passes;
pub mod quantize;
pub mod verify;
