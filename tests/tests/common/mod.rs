//! Setup shared by the backend comparison tests (ort_backend.rs, int8_engine.rs).

use edgemed_converter::graph::Graph;
use edgemed_runtime::backend::OptLevel;
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::ndarray::{ArrayD, IxDyn};

/// ONNX Runtime's optimisation level as the reference for INT8 comparisons: all (its
/// integer kernels), unless those saturate on this CPU (`edgemed_tests::ort_int8_saturates`:
/// no VNNI), then none (the QDQ graph op by op, which gives the VNNI kernels' values).
pub fn ort_int8_level() -> OptLevel {
    if edgemed_tests::ort_int8_saturates() {
        OptLevel::Disable
    } else {
        OptLevel::All
    }
}

/// Seeded uniform noise in [-2, 2).
pub fn noise(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    ArrayD::from_shape_fn(IxDyn(shape), |_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
    })
}

/// The bundled demo model quantized by the converter (data-free DFQ, per tensor), with
/// the Gemm's input (the last quantised activation) made a second output, and that
/// quantizer's step: its logits come from a float Gemm, so backends are compared there.
pub fn demo_int8_with_last_activation() -> (OnnxModel, f32) {
    let mut g = Graph::load(&edgemed_tests::repo_root().join("models/bundled/pcam-c4-demo.onnx")).unwrap();
    let opts = edgemed_converter::dfq::Options { field_size: edgemed_converter::dfq::field_size_of(&g), ..Default::default() };
    edgemed_converter::dfq::run(&mut g, &opts).unwrap();
    let gemm_in = g.nodes().iter().find(|n| n.op_type == "Gemm").unwrap().input[0].clone();
    let dq = g.nodes()[g.producer(&gemm_in).unwrap()].clone();
    assert_eq!(dq.op_type, "DequantizeLinear");
    let step = g.constant(&dq.input[1]).unwrap().data[0];
    let mut extra = g.g().output[0].clone();
    extra.name = gemm_in;
    extra.r#type = None;
    g.g_mut().output.push(extra);
    (OnnxModel::from_bytes("int8.onnx", &g.to_bytes()).unwrap(), step)
}
