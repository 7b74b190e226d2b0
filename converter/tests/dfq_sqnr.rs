//! Data-free quantization on a MobileNetV2 whose batch-norm gammas spread over 2.5
//! decades (tests/fixtures/dfq, scripts/make_dfq_models.py), logit SQNR against ONNX
//! Runtime's FP32 logits. Issue 3's criteria: DFQ with per-tensor weights reaches at
//! least the SQNR of ONNX Runtime's quantize_static with per-channel MinMax
//! (calibrated, from baselines.json) and is at least 10 dB above naive per-tensor INT8.

use edgemed_converter::dfq::{self, Options};
use edgemed_converter::graph::Graph;
use edgemed_converter::quantize::Granularity;
use edgemed_converter::verify::sqnr_db;
use edgemed_runtime::backend::{Backend, TractBackend};
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::ndarray::{ArrayD, IxDyn};
use edgemed_tests::{fixture, read_f32};

fn logits(g: &Graph) -> Vec<f32> {
    let x = ArrayD::from_shape_vec(IxDyn(&[32, 3, 95, 95]), read_f32(&fixture("dfq/eval_inputs.f32"))).unwrap();
    let m = OnnxModel::from_bytes("m.onnx", &g.to_bytes()).unwrap();
    TractBackend::new(&m, &[32, 3, 95, 95]).unwrap().run(x).unwrap().remove(0).iter().copied().collect()
}

fn quantized(granularity: Granularity, dfq_on: bool) -> Vec<f32> {
    let mut g = Graph::load(&fixture("dfq/mnv2_spread.onnx")).unwrap();
    let opts = Options { granularity, cle: dfq_on, bias_absorption: dfq_on, bias_correction: dfq_on, ..Options::default() };
    dfq::run(&mut g, &opts).unwrap();
    logits(&g)
}

#[test]
fn dfq_per_tensor_matches_calibrated_per_channel_and_beats_naive() {
    let reference = read_f32(&fixture("dfq/mnv2_spread.fp32_logits.f32"));
    let ours_fp32 = logits(&Graph::load(&fixture("dfq/mnv2_spread.onnx")).unwrap());
    assert!(sqnr_db(&reference, &ours_fp32) > 80.0, "the runtime's FP32 logits differ from ONNX Runtime's");
    let baselines: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("dfq/baselines.json")).unwrap()).unwrap();
    let ort_per_channel = baselines["results"]["ort_perchannel"]["sqnr_db"].as_f64().unwrap();
    let ort_per_tensor = baselines["results"]["ort_pertensor"]["sqnr_db"].as_f64().unwrap();
    let dfq_pt = sqnr_db(&reference, &quantized(Granularity::PerTensor, true));
    let naive_pt = sqnr_db(&reference, &quantized(Granularity::PerTensor, false));
    let dfq_pc = sqnr_db(&reference, &quantized(Granularity::PerChannel, true));
    println!("logit SQNR (dB): DFQ per-tensor {dfq_pt:.2}, DFQ per-channel {dfq_pc:.2}, naive per-tensor {naive_pt:.2}; ONNX Runtime MinMax per-channel {ort_per_channel:.2}, per-tensor {ort_per_tensor:.2}");
    assert!(dfq_pt >= ort_per_channel, "DFQ per-tensor {dfq_pt:.2} dB below ONNX Runtime per-channel MinMax {ort_per_channel:.2} dB");
    assert!(dfq_pt >= naive_pt + 10.0, "DFQ per-tensor {dfq_pt:.2} dB not 10 dB above naive per-tensor {naive_pt:.2} dB");
    assert!(
        dfq_pt >= ort_per_tensor + 10.0,
        "DFQ per-tensor {dfq_pt:.2} dB not 10 dB above ONNX Runtime per-tensor {ort_per_tensor:.2} dB"
    );
    assert!(dfq_pc >= ort_per_channel, "DFQ per-channel {dfq_pc:.2} dB below ONNX Runtime per-channel {ort_per_channel:.2} dB");
}

#[test]
fn data_free_int8_of_the_trained_demo_model_stays_close_to_fp32() {
    // Ranges from batch-norm statistics alone (least expected error of Laplace channels): no calibration data.
    let path = edgemed_tests::repo_root().join("models/bundled/pcam-c4-demo.onnx");
    let fp32 = OnnxModel::load(&path).unwrap();
    let inputs = edgemed_converter::inputs::from_images(&fp32, &edgemed_tests::repo_root().join("examples/data/pcam"), 100).unwrap();
    for granularity in [Granularity::PerTensor, Granularity::PerChannel] {
        let mut g = Graph::load(&path).unwrap();
        let opts = Options { granularity: granularity.clone(), field_size: 4, ..Options::default() };
        dfq::run(&mut g, &opts).unwrap();
        let int8 = OnnxModel::from_bytes("int8.onnx", &g.to_bytes()).unwrap();
        let v = edgemed_converter::verify::verify(&fp32, &int8, &inputs, false).unwrap();
        println!("demo model, data-free DFQ {granularity:?}: SQNR {:.1} dB, top-1 agreement {:.2}", v.sqnr_db[0], v.top1_agreement);
        assert!(v.sqnr_db[0] >= 25.0 && v.top1_agreement >= 0.98, "{granularity:?}: {v:?}");
    }
}
