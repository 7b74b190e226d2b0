//! `edgemed export --local-map`: the rewritten model's map of local logits
//! averages to the original logits (FP32: 1e-5 relative; INT8: within the rounding
//! of the dropped quantizer of the pooled vector), on our equivariant models, the
//! demo model and torchvision MobileNetV2 from both torch exporters (GlobalAveragePool
//! and ReduceMean); for a C4 model the map of a rotated input is the rotated map.

use edgemed_converter::graph::Graph;
use edgemed_converter::local_map::to_local_map;
use edgemed_converter::verify::rot90;
use edgemed_runtime::backend::{Backend, TractBackend};
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::ndarray::{ArrayD, Axis, IxDyn};
use edgemed_tests::{fixture, repo_root};

fn run(g: &Graph, x: &ArrayD<f32>) -> ArrayD<f32> {
    let m = OnnxModel::from_bytes("m.onnx", &g.to_bytes()).unwrap();
    TractBackend::new(&m, x.shape()).unwrap().run(x.clone()).unwrap().remove(0)
}

fn input(side: usize, seed: u64) -> ArrayD<f32> {
    let mut s = seed | 1;
    ArrayD::from_shape_fn(IxDyn(&[2, 3, side, side]), |_| {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
    })
}

/// Spatial mean of a [N, K, h, w] map: [N, K].
fn spatial_mean(map: &ArrayD<f32>) -> ArrayD<f32> {
    assert_eq!(map.ndim(), 4, "local map shape {:?}", map.shape());
    map.mean_axis(Axis(3)).unwrap().mean_axis(Axis(2)).unwrap()
}

fn max_rel(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b.iter()).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn map_mean_equals_the_logits_on_fp32_models() {
    let cases = [
        (fixture("eqmnv2_c4.onnx"), 95),
        (fixture("eqmnv2_c8.onnx"), 95),
        (repo_root().join("models/bundled/pcam-c4-demo.onnx"), 95),
        (fixture("exporters/legacy13_bn.onnx"), 95),
        (fixture("exporters/dynamo18_bn.onnx"), 95),
    ];
    for (path, side) in cases {
        let g = Graph::load(&path).unwrap();
        let mut lm = Graph::load(&path).unwrap();
        let report = to_local_map(&mut lm).unwrap();
        let x = input(side, 3);
        let logits = run(&g, &x);
        let map = run(&lm, &x);
        assert_eq!(map.shape()[..2], logits.shape()[..], "{}", path.display());
        assert!(map.shape()[2] > 1 && map.shape()[3] > 1, "{}: map {:?}", path.display(), map.shape());
        let err = max_rel(&logits, &spatial_mean(&map));
        println!("{}: map {:?} from {}, |mean(map) - logits| / max|logits| = {err:.2e}", path.display(), map.shape(), report.features);
        assert!(err <= 1e-5, "{}: {err}", path.display());
    }
}

#[test]
fn map_mean_matches_int8_logits_within_the_dropped_rounding() {
    let path = repo_root().join("models/bundled/pcam-c4-demo.onnx");
    let mut q = Graph::load(&path).unwrap();
    let opts = edgemed_converter::dfq::Options { field_size: 4, ..Default::default() };
    edgemed_converter::dfq::run(&mut q, &opts).unwrap();
    // The pooled vector's quantizer and the classifier's weights bound what dropping it moves:
    // half a step per feature, times the row sums of |W|.
    let gemm = q.nodes().iter().find(|n| n.op_type == "Gemm").unwrap().clone();
    let dq = q.nodes()[q.producer(&gemm.input[0]).unwrap()].clone();
    assert_eq!(dq.op_type, "DequantizeLinear");
    let step = q.constant(&dq.input[1]).unwrap().data[0];
    let mut lm = Graph::from_bytes(&q.to_bytes()).unwrap();
    let report = to_local_map(&mut lm).unwrap();
    // The pooled vector is quantized twice on one grid (after the pooling, before the
    // classifier: the same range, so the second rounding changes nothing): 2 pairs.
    assert_eq!(report.dropped_qdq, 4);
    let w = lm.constant(&lm.nodes().iter().find(|n| n.output[0] == report.output).unwrap().input[1]).unwrap();
    let c = w.shape[1];
    let row_sum = w.data.chunks(c).map(|r| r.iter().map(|v| v.abs()).sum::<f32>()).fold(0f32, f32::max);
    let bound = 0.5 * step * row_sum;
    let x = input(95, 4);
    let (logits, map) = (run(&q, &x), run(&lm, &x));
    let worst = logits.iter().zip(spatial_mean(&map).iter()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!("INT8: |mean(map) - logits| = {worst:.3e} (bound {bound:.3e})");
    assert!(worst <= bound * 1.001 + 1e-5, "{worst} > {bound}");
}

#[test]
fn c4_map_of_a_rotated_input_is_the_rotated_map() {
    let mut lm = Graph::load(&repo_root().join("models/bundled/pcam-c4-demo.onnx")).unwrap();
    to_local_map(&mut lm).unwrap();
    let x = input(95, 5);
    let map = run(&lm, &x);
    let map_of_rotated = run(&lm, &rot90(&x));
    let err = max_rel(&rot90(&map), &map_of_rotated);
    println!("C4 local map: |map(rot90 x) - rot90 map(x)| / max = {err:.2e}");
    assert!(err <= 1e-5, "{err}");
}

#[test]
fn models_without_pooling_and_linear_head_are_refused() {
    // A local map model ends in a convolution: rewriting it again must say why it cannot.
    let mut lm = Graph::load(&fixture("eqmnv2_c4.onnx")).unwrap();
    to_local_map(&mut lm).unwrap();
    let e = to_local_map(&mut lm).unwrap_err().to_string();
    assert!(e.contains("needs global pooling followed by Gemm or MatMul"), "{e}");
}
