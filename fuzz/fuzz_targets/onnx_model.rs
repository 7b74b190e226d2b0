//! The runtime's model path: protobuf bytes -> OnnxModel (metadata, signature) ->
//! memory budget -> tract compilation -> one run on zeros.
#![no_main]
mod common;

use edgemed_runtime::backend::{Backend, TractBackend};
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::ndarray::{ArrayD, IxDyn};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    common::keep_caught_panics_caught();
    let Ok(model) = OnnxModel::from_bytes("fuzz.onnx", data) else { return };
    let _ = model.precision();
    let _ = model.parameter_count();
    let Ok((c, h, w)) = model.image_input() else { return };
    let shape = [1, c, h, w];
    // A small budget keeps the fuzzer's own memory bounded, and exercises the check.
    if let Ok(backend) = TractBackend::with_budget(&model, &shape, 64 << 20) {
        let _ = backend.run(ArrayD::zeros(IxDyn(&shape)));
    }
});
