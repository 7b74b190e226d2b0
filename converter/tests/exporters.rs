//! The converter on MobileNetV2 as torch exports it (tests/fixtures/exporters, made by
//! scripts/make_exporter_matrix.py): legacy and dynamo exporters, opset 13 to 18, with
//! and without BatchNormalization nodes. The runtime reproduces torch's logits, the
//! function-preserving passes keep them, and the INT8 models load and stay close.

use edgemed_converter::dfq::{self, Options};
use edgemed_converter::graph::Graph;
use edgemed_converter::quantize::Granularity;
use edgemed_converter::verify::sqnr_db;
use edgemed_runtime::backend::{Backend, TractBackend};
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::ndarray::{ArrayD, IxDyn};
use edgemed_tests::{fixture, read_f32};

const CASES: [&str; 4] = ["legacy13_bn", "legacy17_folded", "dynamo18_bn", "dynamo18_folded"];

fn run(g: &Graph) -> Vec<f32> {
    let x = ArrayD::from_shape_vec(IxDyn(&[2, 3, 95, 95]), read_f32(&fixture("exporters/input.f32"))).unwrap();
    let m = OnnxModel::from_bytes("m.onnx", &g.to_bytes()).unwrap();
    TractBackend::new(&m, &[2, 3, 95, 95]).unwrap().run(x).unwrap().remove(0).iter().copied().collect()
}

fn rel(a: &[f32], b: &[f32]) -> f32 {
    let n: f32 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    (n / b.iter().map(|y| y * y).sum::<f32>()).sqrt()
}

fn opts(fp32_only: bool, absorb: bool) -> Options {
    Options { granularity: Granularity::PerChannel, bias_absorption: absorb, fp32_only, ..Options::default() }
}

#[test]
fn every_export_runs_and_keeps_its_function_through_the_passes() {
    let torch = read_f32(&fixture("exporters/torch_logits.f32"));
    for name in CASES {
        let path = fixture(&format!("exporters/{name}.onnx"));
        let g = Graph::load(&path).unwrap();
        let e_rt = rel(&run(&g), &torch);
        let mut eq = Graph::load(&path).unwrap();
        let report = dfq::run(&mut eq, &opts(true, false)).unwrap();
        let e_cle = rel(&run(&eq), &torch);
        println!(
            "{name} (opset {}): runtime vs torch {e_rt:.1e}; folded {} BN, CLE {} triplets -> {e_cle:.1e}",
            g.opset(),
            report.folded,
            report.cle.as_ref().unwrap().triplets
        );
        assert!(e_rt < 1e-5, "{name}: runtime differs from torch by {e_rt}");
        assert!(e_cle < 1e-5, "{name}: folding + CLE changed the function by {e_cle}");
        assert!(report.cle.unwrap().triplets >= 16, "{name}: inverted residual blocks not found");
    }
}

#[test]
fn every_export_quantizes_to_a_loadable_close_int8_model() {
    let torch = read_f32(&fixture("exporters/torch_logits.f32"));
    for name in CASES {
        let mut g = Graph::load(&fixture(&format!("exporters/{name}.onnx"))).unwrap();
        let report = dfq::run(&mut g, &opts(false, true)).unwrap();
        let q = run(&g);
        let s = sqnr_db(&torch, &q);
        println!(
            "{name}: {} weights, {} activations quantized, {} left FP32; SQNR {s:.1} dB",
            report.quant.weights_quantized,
            report.quant.activations_quantized,
            report.quant.left_fp32.len()
        );
        assert_eq!(report.quant.weights_quantized, 53, "{name}");
        if name.ends_with("_bn") {
            assert!(report.quant.left_fp32.is_empty(), "{name}: {:?}", report.quant.left_fp32);
        }
        assert!(s > 10.0, "{name}: SQNR {s}");
    }
}
