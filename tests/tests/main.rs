//! The cross-crate integration tests, one module per file, built as one test binary:
//! each binary links the whole workspace (tract, the engine, the converter) and builds
//! the shared generic code again. Built as 21 binaries they took 85 s (163 CPU-seconds)
//! after a change, as one 30 s (56), on 2 cores; their tests also share the cores
//! better when they run. A new test file is a new `mod` line here.

mod common;

mod bagnet3d;
mod batching;
mod brain_age;
mod bundled_model;
mod determinism;
mod equivariance;
mod espcn;
mod fuzz_regressions;
mod glow;
mod heatmap;
mod int8_engine;
mod int8_float_ops;
mod int8_integer_ops;
mod int8_models;
mod onnx_roundtrip;
mod onnxruntime_parity;
mod ort_backend;
mod sliding_window;
mod unet_export;
mod zoo;
