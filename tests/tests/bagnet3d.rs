//! 3-D BagNets (models crate `bagnet3d`, converter `--local-map` on 3-D heads):
//! the export from a torch state_dict against the torch implementation in
//! scripts/make_bagnet_fixtures.py (prediction and per-location map), the local map's
//! mean against the prediction in FP32 and after data-free INT8, and the receptive
//! field the metadata states, by perturbing single input voxels.

use edgemed_converter::graph::Graph;
use edgemed_models::bagnet3d::{self, Config, Norm};
use edgemed_models::weights::Weights;
use edgemed_runtime::backend::{self, BackendKind, BackendOptions};
use edgemed_runtime::formats::tensors::read_npy;
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::ndarray::{ArrayD, Axis, IxDyn};
use edgemed_tests::fixture;
use prost::Message;

const CASES: [&str; 3] = ["b9_instance_age", "b17_running_both", "b33_instance_both"];

fn onnx(m: &edgemed_onnx::pb::ModelProto, name: &str) -> OnnxModel {
    OnnxModel::from_bytes(name, &m.encode_to_vec()).unwrap()
}

fn run(m: &OnnxModel, x: &ArrayD<f32>, kind: BackendKind) -> ArrayD<f32> {
    let opts = BackendOptions { kind, ..Default::default() };
    backend::create(m, x.shape(), &opts).unwrap().run(x.clone()).unwrap().remove(0)
}

fn local_map(m: &edgemed_onnx::pb::ModelProto) -> edgemed_onnx::pb::ModelProto {
    let mut g = Graph::from_bytes(&m.encode_to_vec()).unwrap();
    let r = edgemed_converter::local_map::to_local_map(&mut g).unwrap();
    assert_eq!(r.classes, m.metadata_props.iter().find(|e| e.key == "edgemed.outputs").unwrap().value.split(',').count());
    g.model
}

fn exported(case: &str) -> (edgemed_onnx::pb::ModelProto, Config) {
    let w = Weights::load(&fixture(&format!("bagnet3d/{case}.safetensors"))).unwrap();
    let cfg = Config::default().with_weights(&w, case).unwrap();
    (bagnet3d::build_onnx(&cfg, Some((&w, case)), 0).unwrap().0, cfg)
}

/// Largest |a - b| over the largest |b|.
fn rel_err(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b.iter()).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// The map's spatial mean, [B, K].
fn map_mean(m: &ArrayD<f32>) -> ArrayD<f32> {
    m.mean_axis(Axis(4)).unwrap().mean_axis(Axis(3)).unwrap().mean_axis(Axis(2)).unwrap()
}

#[test]
fn export_matches_torch_and_the_map_mean_is_the_prediction() {
    for case in CASES {
        let (model, cfg) = exported(case);
        let x = read_npy(&fixture(&format!("bagnet3d/{case}.input.npy"))).unwrap();
        let y = run(&onnx(&model, case), &x, BackendKind::Tract);
        let err = rel_err(&y, &read_npy(&fixture(&format!("bagnet3d/{case}.output.npy"))).unwrap());
        let map = run(&onnx(&local_map(&model), case), &x, BackendKind::Tract);
        let map_err = rel_err(&map, &read_npy(&fixture(&format!("bagnet3d/{case}.map.npy"))).unwrap());
        let mean_err = rel_err(&map_mean(&map), &y);
        println!("{case}: vs torch {err:.1e} (map {map_err:.1e}); map mean vs prediction {mean_err:.1e}");
        assert!(err < 1e-4 && map_err < 1e-4, "{case}: {err} {map_err}");
        assert!(mean_err < 1e-5, "{case}: {mean_err}");
        let s = x.shape();
        assert_eq!(map.shape()[2..], [cfg.map_len(s[2]), cfg.map_len(s[3]), cfg.map_len(s[4])]);
    }
}

/// A deterministic pseudo-random volume (no rand dependency in the tests).
fn volume(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ArrayD::from_shape_fn(IxDyn(shape), |_| {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    })
}

#[test]
fn int8_local_map_mean_is_the_int8_prediction() {
    for norm in [Norm::Running, Norm::Instance] {
        let cfg = Config { receptive_field: 9, width: 4, norm, ..Config::default() };
        let (model, _) = bagnet3d::build_onnx(&cfg, None, 7).unwrap();
        let mut g = Graph::from_bytes(&model.encode_to_vec()).unwrap();
        let calibration: Vec<ArrayD<f32>> = (0..3).map(|k| volume(&[1, 1, 25, 25, 25], k)).collect();
        let opts = edgemed_converter::dfq::Options { calibration, ..Default::default() };
        let report = edgemed_converter::dfq::run(&mut g, &opts).unwrap();
        assert!(report.quant.weights_quantized > 50, "{:?}", report.quant);
        let x = volume(&[1, 1, 33, 25, 41], 9);
        let q = onnx(&g.model, "int8.onnx");
        let y_int8 = run(&q, &x, BackendKind::Int8);
        let y_fp32 = run(&onnx(&model, "fp32.onnx"), &x, BackendKind::Tract);
        let map = run(&onnx(&local_map(&g.model), "int8.map.onnx"), &x, BackendKind::Int8);
        let fp32_map = run(&onnx(&local_map(&model), "map.onnx"), &x, BackendKind::Tract);
        let mean_err = rel_err(&map_mean(&map), &y_int8);
        let agreement = rel_err(&map, &fp32_map);
        println!(
            "{norm:?}: INT8 map mean vs INT8 prediction {mean_err:.1e}; INT8 vs FP32 prediction {:.1e}, map {agreement:.1e}",
            rel_err(&y_int8, &y_fp32)
        );
        // The dropped quantize/dequantize pair of the pooled vector is all that separates them.
        assert!(mean_err < 1e-3, "{norm:?}: {mean_err}");
    }
}

/// Map voxels (x, y, z) whose value differs between two maps [1, K, x, y, z] (any head).
fn changed(a: &ArrayD<f32>, b: &ArrayD<f32>) -> Vec<[usize; 3]> {
    let s = a.shape();
    let mut out = vec![];
    for i in 0..s[2] {
        for j in 0..s[3] {
            for k in 0..s[4] {
                if (0..s[1]).any(|c| a[[0, c, i, j, k]].to_bits() != b[[0, c, i, j, k]].to_bits()) {
                    out.push([i, j, k]);
                }
            }
        }
    }
    out
}

#[test]
fn a_voxel_changes_exactly_the_map_values_whose_receptive_field_holds_it() {
    for rf in [9, 17, 33] {
        let cfg = Config { receptive_field: rf, width: 4, norm: Norm::Running, ..Config::default() };
        let model = onnx(&local_map(&bagnet3d::build_onnx(&cfg, None, 11).unwrap().0), "map.onnx");
        let shape = [1, 1, rf + 16, rf + 9, rf + 17];
        let base = volume(&shape, 3);
        let m0 = run(&model, &base, BackendKind::Tract);
        assert_eq!(m0.shape()[2..], [3, 2, 3]);
        // Voxels at the first and last place of some receptive field, inside and between.
        for v in [[0, 0, 0], [8, rf - 1, 16 + rf - 1], [rf - 1, 8, 9], [16, rf + 8, 7], [rf + 15, 3, rf + 16]] {
            // A few perturbations: a ReLU that stays off for one of them can hide a path.
            let mut got: Vec<[usize; 3]> = vec![];
            for delta in [4.0, -4.0, 40.0] {
                let mut x = base.clone();
                x[[0, 0, v[0], v[1], v[2]]] += delta;
                got.extend(changed(&m0, &run(&model, &x, BackendKind::Tract)));
            }
            got.sort();
            got.dedup();
            let holds = |i: usize, a: usize| 8 * i <= v[a] && v[a] < 8 * i + rf;
            let mut want = vec![];
            for i in 0..3 {
                for j in 0..2 {
                    for k in 0..3 {
                        if holds(i, 0) && holds(j, 1) && holds(k, 2) {
                            want.push([i, j, k]);
                        }
                    }
                }
            }
            assert_eq!(got, want, "BagNet-{rf}: voxel {v:?}");
        }
    }
    // Instance norm takes its statistics from the whole volume: one voxel moves every value.
    let cfg = Config { receptive_field: 9, width: 4, norm: Norm::Instance, ..Config::default() };
    let model = onnx(&local_map(&bagnet3d::build_onnx(&cfg, None, 11).unwrap().0), "map.onnx");
    let base = volume(&[1, 1, 25, 25, 25], 3);
    let mut x = base.clone();
    x[[0, 0, 0, 0, 0]] += 4.0;
    assert_eq!(changed(&run(&model, &base, BackendKind::Tract), &run(&model, &x, BackendKind::Tract)).len(), 27);
}

/// Without calibration data the running-statistics BagNet is quantized whole: the
/// residuals' spatial crops keep their batch norm's statistics, so every residual Add
/// gets a range (it used to stay float: 9 tensors, and the INT8 engine ran the residual
/// path as float adds and (de)quantizations, 25x slower on a full brain).
#[test]
fn data_free_quantization_reaches_through_the_residual_crops() {
    let cfg = Config { receptive_field: 9, width: 4, norm: Norm::Running, ..Config::default() };
    let (model, _) = bagnet3d::build_onnx(&cfg, None, 7).unwrap();
    let mut g = Graph::from_bytes(&model.encode_to_vec()).unwrap();
    let report = edgemed_converter::dfq::run(&mut g, &edgemed_converter::dfq::Options::default()).unwrap();
    let crops_or_adds: Vec<&String> = report.quant.left_fp32.iter().filter(|t| t.contains("crop") || t.contains("add")).collect();
    assert!(crops_or_adds.is_empty(), "left in FP32: {crops_or_adds:?}");
}

/// The paper's instance-norm BagNet is quantized data-free too: an instance norm's
/// output has mean `bias` and deviation |scale| per channel whatever its input, so the
/// statistics propagate through it to every activation (before, only 2 of 71 had a
/// range, and the INT8 engine refused the model: 786 MMAC of convs would have run in
/// float). The engine then runs every conv in integers.
#[test]
fn data_free_quantization_reaches_through_instance_norms() {
    let cfg = Config { receptive_field: 9, width: 4, norm: Norm::Instance, window: Some([25; 3]), ..Config::default() };
    let (model, _) = bagnet3d::build_onnx(&cfg, None, 7).unwrap();
    let mut g = Graph::from_bytes(&model.encode_to_vec()).unwrap();
    let report = edgemed_converter::dfq::run(&mut g, &edgemed_converter::dfq::Options::default()).unwrap();
    let unranged: Vec<&String> = report.quant.left_fp32.iter().filter(|t| t.contains("no activation range")).collect();
    assert!(unranged.is_empty(), "left in FP32: {unranged:?}");
    assert!(report.quant.activations_quantized > 50, "{:?}", report.quant);
    let int8 = onnx(&local_map(&g.model), "b9_instance_int8");
    let engine = edgemed_engine::Engine::new(&int8).unwrap();
    let labels: Vec<String> = engine.plan.steps.iter().map(|s| engine.plan.label(s)).collect();
    assert!(!labels.iter().any(|l| l.starts_with("conv") && l.contains("float") && !l.contains("to float")), "{labels:#?}");
    let x = volume(&[1, 1, 25, 25, 25], 4);
    let (fp32, q) = (run(&onnx(&local_map(&model), "b9_instance"), &x, BackendKind::Tract), run(&int8, &x, BackendKind::Int8));
    assert_eq!(fp32.shape(), q.shape());
    assert!(q.iter().all(|v| v.is_finite()));
}
