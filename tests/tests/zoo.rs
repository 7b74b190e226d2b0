//! Models users export, not edgemed (tests/fixtures/zoo, made by `scripts/make_zoo.py
//! --fixtures`): escnn C4 and C8 equivariant MobileNetV2s (grouped equivariant
//! depthwise layers, dynamic batch; torch's legacy and dynamo exporters, batch norm
//! kept), a torchvision MobileNetV2 and a MONAI 3-D U-Net (instance norm, PReLU,
//! ConvTranspose). Each, after the converter's default recipe, must run in the INT8
//! engine with every Conv, ConvTranspose and Gemm in integers and no fallback, close
//! to torch's FP32 outputs; escnn models must get their CLE pairs and triplets and
//! keep rotation invariance at least as well as FP32 does (in the engine, and in ONNX
//! Runtime when its library is there).

use edgemed_converter::dfq::{self, Options};
use edgemed_converter::graph::Graph;
use edgemed_converter::quantize::Granularity;
use edgemed_converter::verify::{rot90, sqnr_db};
use edgemed_engine::Engine;
use edgemed_runtime::backend::{self, BackendKind, BackendOptions, Device, OptLevel};
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::ndarray::{ArrayD, IxDyn};
use edgemed_tests::{ort_library, read_f32, repo_root};

use crate::common;

fn zoo(name: &str) -> std::path::PathBuf {
    repo_root().join("tests/fixtures/zoo").join(name)
}

fn manifest() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(zoo("manifest.json")).unwrap()).unwrap()
}

fn options(kind: BackendKind) -> BackendOptions {
    BackendOptions { kind, device: Device::Cpu, strict_device: true, ort_library: ort_library(), intra_threads: 1, ..Default::default() }
}

/// The model's input and torch's FP32 outputs on it, from the manifest.
fn reference(name: &str) -> (ArrayD<f32>, Vec<f32>, usize) {
    let m = &manifest()["models"][name];
    let shape: Vec<usize> = m["input_shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
    let x = ArrayD::from_shape_vec(IxDyn(&shape), read_f32(&zoo(m["input"].as_str().unwrap()))).unwrap();
    let field = m["field_size"].as_u64().unwrap_or(1) as usize;
    (x, read_f32(&zoo(m["fp32_ref"].as_str().unwrap())), field)
}

/// Runs `model` on `x` (any batch) in the engine, item by item.
fn run_engine(engine: &Engine, x: &ArrayD<f32>) -> Vec<f32> {
    let mut out = Vec::new();
    for item in x.outer_iter() {
        let item = item.as_standard_layout();
        out.extend(engine.run_one(item.as_slice().unwrap()).unwrap().remove(0).iter().copied());
    }
    out
}

fn run_backend(model: &OnnxModel, opts: &BackendOptions, x: &ArrayD<f32>) -> Vec<f32> {
    let b = backend::create(model, x.shape(), opts).unwrap();
    b.run(x.clone()).unwrap().remove(0).iter().copied().collect()
}

/// max |f(rot90 x) - f(x)| / max |f(x)|.
fn rotation_error(f: impl Fn(&ArrayD<f32>) -> Vec<f32>, x: &ArrayD<f32>) -> f32 {
    let (a, b) = (f(x), f(&rot90(x)));
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max) / scale
}

fn top1(logits: &[f32], classes: usize) -> Vec<usize> {
    logits.chunks(classes).map(|c| (0..classes).max_by(|&i, &j| c[i].total_cmp(&c[j])).unwrap()).collect()
}

/// Quantizes `name` with the converter's defaults (the field size inferred from the
/// grouped convs, as `edgemed quantize` does), checks the engine covers it entirely,
/// and returns the QDQ model, its compiled engine and the DFQ report.
fn quantized(name: &str, granularity: Granularity) -> (OnnxModel, Engine, dfq::Report) {
    let (_, _, field) = reference(name);
    let mut g = Graph::load(&zoo(&format!("{name}.onnx"))).unwrap();
    let inferred = dfq::field_size_from_groups(&mut g).unwrap_or(1);
    assert_eq!(inferred, field, "{name}: field size from the grouped convs");
    let report = dfq::run(&mut g, &Options { granularity, field_size: field, ..Options::default() }).unwrap();
    assert!(report.quant.left_fp32.is_empty(), "{name}: left in FP32: {:?}", report.quant.left_fp32);
    let model = OnnxModel::from_bytes(format!("{name}.int8.onnx"), &g.to_bytes()).unwrap();
    let engine = Engine::new(&model).unwrap_or_else(|e| panic!("{name}: the engine does not cover it: {e}"));
    assert!(engine.plan.float_layers().is_empty(), "{name}: float layers {:?}", engine.plan.float_layers());
    (model, engine, report)
}

/// A classifier of the zoo: coverage, CLE counts, fidelity, rotation invariance.
fn classifier(name: &str, min_sqnr_db: f64) {
    let (x, fp32_ref, field) = reference(name);
    let (model, engine, report) = quantized(name, Granularity::PerTensor);
    let cle = report.cle.clone().unwrap();
    if field > 1 {
        assert!(cle.triplets > 0 && cle.pairs > 0, "{name}: CLE {} triplets + {} pairs", cle.triplets, cle.pairs);
    }
    let int8 = run_engine(&engine, &x);
    let classes = int8.len() / x.shape()[0];
    let sqnr = sqnr_db(&fp32_ref, &int8);
    println!(
        "{name}: CLE {} triplets + {} pairs, {:.1} MMAC in integers, logit SQNR {sqnr:.1} dB against torch FP32",
        cle.triplets,
        cle.pairs,
        engine.plan.macs as f64 / 1e6
    );
    assert!(sqnr >= min_sqnr_db, "{name}: SQNR {sqnr:.1} dB");
    assert_eq!(top1(&int8, classes), top1(&fp32_ref, classes), "{name}: top-1 against FP32");
    if ort_library().is_some() {
        // The same QDQ file in ONNX Runtime with its graph optimisations off (every QDQ
        // node as the spec defines it; its fused kernels round otherwise, 2-3 dB of
        // logit SQNR apart on these small nets): the engine computes that function.
        let ort = run_backend(&model, &BackendOptions { opt_level: OptLevel::Disable, ..options(BackendKind::Ort) }, &x);
        let agreement = sqnr_db(&ort, &int8);
        println!("{name}: engine against ONNX Runtime on the same file: SQNR {agreement:.1} dB");
        assert!(agreement >= 30.0, "{name}: engine and ONNX Runtime {agreement:.1} dB apart");
    }
    if field > 1 {
        let fp32 = OnnxModel::load(zoo(&format!("{name}.onnx"))).unwrap();
        let e_fp32 = rotation_error(|x| run_backend(&fp32, &options(BackendKind::Tract), x), &x);
        let e_int8 = rotation_error(|x| run_engine(&engine, x), &x);
        println!("{name}: rotation error FP32 (tract) {e_fp32:.2e}, INT8 engine {e_int8:.2e}");
        assert!(e_int8 <= e_fp32, "{name}: INT8 rotation error {e_int8:.2e} above FP32's {e_fp32:.2e}");
        if ort_library().is_some() {
            // Its integer kernels, unless they saturate on this CPU (no VNNI: then its
            // fused run is not the file's function, see `common::ort_int8_level`).
            let opt_level = common::ort_int8_level();
            let e_ort = rotation_error(|x| run_backend(&model, &BackendOptions { opt_level, ..options(BackendKind::Ort) }, x), &x);
            println!("{name}: rotation error INT8 ONNX Runtime {e_ort:.2e}");
            assert!(e_ort <= e_fp32.max(1e-6), "{name}: ONNX Runtime INT8 rotation error {e_ort:.2e} above FP32's {e_fp32:.2e}");
        }
    }
}

#[test]
fn escnn_c4_legacy_export_runs_in_integers() {
    classifier("c4_legacy_bn", 20.0);
}

#[test]
fn escnn_c4_dynamo_export_runs_in_integers() {
    classifier("c4_dynamo_bn", 20.0);
}

#[test]
fn escnn_c8_legacy_export_runs_in_integers() {
    classifier("c8_legacy_bn", 20.0);
}

#[test]
fn torchvision_mobilenet_v2_runs_in_integers() {
    // A random-weight torchvision network with spread gammas is chaotic: every
    // quantizer scores a few dB on it against FP32 (the trained one of tests/fixtures/dfq
    // is where fidelity is measured, converter/tests/dfq_sqnr.rs). Here: coverage,
    // top-1, and the engine against ONNX Runtime on the same file.
    classifier("tv_mnv2_legacy_bn", 0.0);
}

#[test]
fn a_grouped_conv_cutting_across_fields_is_refused_in_one_line() {
    let mut g = Graph::load(&zoo("c4_legacy_bn.onnx")).unwrap();
    let err = dfq::run(&mut g, &Options { field_size: 8, ..Options::default() }).unwrap_err().to_string();
    assert!(err.contains("cuts across fields of 8 channels") && !err.contains('\n'), "{err}");
}

#[test]
fn monai_unet_3d_runs_in_integers_with_its_labels() {
    let (x, fp32_ref, _) = reference("unet3d");
    // MONAI's U-Net has no batch norm: ranges from calibration, here the reference
    // input with its rotations (what a user does with a few windows of their volumes).
    let mut g = Graph::load(&zoo("unet3d.onnx")).unwrap();
    let calibration = vec![x.clone(), rot90(&x)];
    let opts = Options { granularity: Granularity::PerChannel, calibration, ..Options::default() };
    let report = dfq::run(&mut g, &opts).unwrap();
    assert!(report.quant.left_fp32.is_empty(), "left in FP32: {:?}", report.quant.left_fp32);
    let model = OnnxModel::from_bytes("unet3d.int8.onnx", &g.to_bytes()).unwrap();
    let engine = Engine::new(&model).unwrap();
    assert!(engine.plan.float_layers().is_empty(), "float layers {:?}", engine.plan.float_layers());
    let n_conv_t = model.graph().node.iter().filter(|n| n.op_type == "ConvTranspose").count();
    assert!(n_conv_t > 0, "the U-Net's upsampling is ConvTranspose");
    let int8 = run_engine(&engine, &x);
    // Labels: argmax over the class axis, voxel by voxel.
    let voxels = x.len();
    let labels = |v: &[f32]| (0..voxels).map(|i| if v[voxels + i] > v[i] { 1u8 } else { 0 }).collect::<Vec<_>>();
    let (a, b) = (labels(&fp32_ref), labels(&int8));
    let agree = a.iter().zip(&b).filter(|(p, q)| p == q).count() as f64 / voxels as f64;
    println!(
        "unet3d: {n_conv_t} ConvTranspose in integers; INT8 labels agree with FP32 on {:.3}% of voxels, SQNR {:.1} dB",
        agree * 100.0,
        sqnr_db(&fp32_ref, &int8)
    );
    assert!(agree >= 0.995, "voxel agreement {agree}");
}
