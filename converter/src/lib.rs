//! edgemed-converter: the host-side toolchain. Exports the reference
//! architectures of `edgemed-models` to ONNX and (in later work) quantizes FP32
//! ONNX to INT8. Everything it writes is checked to load in the runtime first.

pub mod calibrate;
pub mod dfq;
pub mod export;
pub mod fp16;
pub mod graph;
pub mod inputs;
pub mod passes;
pub mod quantize;
pub mod verify;
