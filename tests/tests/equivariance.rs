//! Rotation invariance of the equivariant MobileNetV2s built by edgemed-models,
//! run through the runtime: rotating the input by 90 degrees must leave the
//! logits unchanged (max |difference| <= 1e-4) for C4, C8 and C12; the
//! conventional network (C1) is the control that shows the test can fail.

use edgemed_models::eq_mobilenet_v2::{build_onnx, init_weights, Config};
use edgemed_runtime::backend::{Backend, TractBackend};
use edgemed_runtime::formats::patch::circular_mask;
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::ndarray::{ArrayD, Axis, IxDyn};
use prost::Message;

const S: usize = 95;

/// Two masked pseudo-random images [2, 3, 95, 95] and their rotations by k * 90 degrees.
fn inputs() -> (ArrayD<f32>, Vec<ArrayD<f32>>) {
    let mask = circular_mask(S);
    let mut state = 12345u32;
    let x = ArrayD::from_shape_fn(IxDyn(&[2, 3, S, S]), |i| {
        state = state.wrapping_mul(1664525).wrapping_add(1013904223);
        if mask[i[2] * S + i[3]] {
            (state >> 8) as f32 / (1 << 24) as f32 * 2.0 - 1.0
        } else {
            0.0
        }
    });
    let rotated = (1..4)
        .map(|k| {
            // np.rot90(x, k, axes=(2, 3)): counter-clockwise quarter turns.
            ArrayD::from_shape_fn(IxDyn(&[2, 3, S, S]), |i| {
                let (mut y, mut xx) = (i[2], i[3]);
                for _ in 0..k {
                    (y, xx) = (xx, S - 1 - y);
                }
                x[[i[0], i[1], y, xx]]
            })
        })
        .collect();
    (x, rotated)
}

fn max_invariance_error(n: usize) -> f32 {
    let cfg = Config { group_order: n, width: 0.25, ..Config::default() };
    let proto = build_onnx(&cfg, &init_weights(&cfg, 7).unwrap()).unwrap();
    let model = OnnxModel::from_bytes(format!("c{n}.onnx"), &proto.encode_to_vec()).unwrap();
    let backend = TractBackend::new(&model, &[2, 3, S, S]).unwrap();
    let (x, rotated) = inputs();
    let base = backend.run(x).unwrap().remove(0);
    assert!(base.index_axis(Axis(0), 0) != base.index_axis(Axis(0), 1), "C{n}: different inputs gave identical logits");
    assert!(base.iter().all(|v| v.is_finite()));
    rotated
        .into_iter()
        .map(|xr| {
            let out = backend.run(xr).unwrap().remove(0);
            out.iter().zip(base.iter()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max)
        })
        .fold(0f32, f32::max)
}

#[test]
fn c4_is_invariant_to_quarter_turns() {
    let e = max_invariance_error(4);
    println!("C4 max |logit difference| under 90-degree rotations: {e:.2e}");
    assert!(e <= 1e-4, "C4: {e}");
}

#[test]
fn c8_is_invariant_to_quarter_turns() {
    let e = max_invariance_error(8);
    println!("C8 max |logit difference| under 90-degree rotations: {e:.2e}");
    assert!(e <= 1e-4, "C8: {e}");
}

#[test]
fn c12_is_invariant_to_quarter_turns() {
    let e = max_invariance_error(12);
    println!("C12 max |logit difference| under 90-degree rotations: {e:.2e}");
    assert!(e <= 1e-4, "C12: {e}");
}

#[test]
fn conventional_network_is_not_invariant() {
    let e = max_invariance_error(1);
    println!("C1 max |logit difference| under 90-degree rotations: {e:.2e}");
    assert!(e > 1e-3, "the control network should not be rotation invariant, got {e}");
}
