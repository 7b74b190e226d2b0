//! Data-free quantization end to end on written ONNX files: what the converter
//! writes loads in the runtime, keeps every scale shared within the C_N fields,
//! and keeps the equivariant model's rotation invariance.

use std::path::Path;

use edgemed_converter::dfq::{self, Options};
use edgemed_converter::graph::{attr_i, Graph};
use edgemed_converter::quantize::Granularity;
use edgemed_converter::verify;
use edgemed_runtime::model::OnnxModel;
use edgemed_tests::fixture;

fn options(granularity: Granularity, field_size: usize) -> Options {
    Options { granularity, field_size, ..Options::default() }
}

fn quantize(path: &Path, opts: &Options) -> (Graph, OnnxModel) {
    let mut g = Graph::load(path).unwrap();
    let report = dfq::run(&mut g, opts).unwrap();
    assert!(report.quant.weights_quantized > 0 && report.quant.activations_quantized > 0);
    let model = OnnxModel::from_bytes("int8.onnx", &g.to_bytes()).unwrap();
    (g, model)
}

/// Every per-channel tensor the quantizer wrote (weight scales, ReLU6 bounds, biases)
/// must be constant within each block of `field` channels.
fn assert_field_uniform(g: &Graph, field: usize) {
    let mut checked = 0;
    for n in g.nodes() {
        let per_channel: Vec<&str> = match n.op_type.as_str() {
            "DequantizeLinear" if attr_i(n, "axis", -1) == 0 => vec![&n.input[1]],
            "Min" => n.input.iter().map(|s| s.as_str()).filter(|i| g.initializer(i).is_some()).collect(),
            "Conv" if n.input.len() > 2 => vec![&n.input[2]],
            _ => continue,
        };
        for name in per_channel {
            let a = g.constant(name).unwrap_or_else(|| panic!("{name} is constant"));
            if !a.len().is_multiple_of(field) || a.len() == 1 {
                continue;
            }
            for f in a.data.chunks(field) {
                assert!(f.iter().all(|v| v == &f[0]), "{name}: not shared within a field: {f:?}");
            }
            checked += 1;
        }
    }
    assert!(checked > 50, "only {checked} per-channel tensors checked");
}

#[test]
fn c4_int8_scales_are_shared_within_fields() {
    for g in [Granularity::PerTensor, Granularity::PerChannel] {
        let (graph, _) = quantize(&fixture("eqmnv2_c4.onnx"), &options(g, 4));
        assert_field_uniform(&graph, 4);
    }
}

/// The int8 weights of every convolution are exact rotated / cyclically shifted copies
/// across a quarter turn (shift q = N/4 within each field): with field-uniform scales,
/// biases and bounds (above), integer execution is then exactly rotation-equivariant,
/// whatever order a kernel sums in.
fn assert_int8_weights_equivariant(g: &Graph, n: usize) {
    let q = n / 4;
    let rot90 = |w: &[i8]| -> Vec<i8> { (0..9).map(|k| w[(k % 3) * 3 + (2 - k / 3)]).collect() };
    let mut convs = 0;
    for node in g.nodes().iter().filter(|x| x.op_type == "Conv") {
        let dq = &g.nodes()[g.producer(&node.input[1]).unwrap()];
        assert_eq!(dq.op_type, "DequantizeLinear");
        let t = g.initializer(&dq.input[0]).unwrap();
        let w: Vec<i8> = t.raw_data.iter().map(|b| *b as i8).collect();
        let d: Vec<usize> = t.dims.iter().map(|x| *x as usize).collect();
        let (o, i, k) = (d[0], d[1], d[2] * d[3]);
        let at = |oc: usize, ic: usize| &w[(oc * i + ic) * k..(oc * i + ic + 1) * k];
        for oc in 0..o {
            let (f, r) = (oc / n, oc % n);
            let turned = f * n + (r + q) % n;
            for ic in 0..i {
                if k == 9 {
                    // Lifting (RGB inputs) and depthwise filters: the next quarter turn is rot90.
                    assert_eq!(rot90(at(oc, ic)), at(turned, ic), "{}: channel {oc}", node.name);
                } else {
                    // Pointwise: circulant within fields.
                    let (fi, s) = (ic / n, ic % n);
                    assert_eq!(at(oc, ic), at(turned, fi * n + (s + q) % n), "{}: ({oc}, {ic})", node.name);
                }
            }
        }
        convs += 1;
    }
    assert!(convs > 50);
}

#[test]
fn c4_int8_is_exactly_equivariant_by_construction() {
    for granularity in [Granularity::PerTensor, Granularity::PerChannel] {
        let (g, _) = quantize(&fixture("eqmnv2_c4.onnx"), &options(granularity, 4));
        assert_field_uniform(&g, 4);
        assert_int8_weights_equivariant(&g, 4);
    }
}

#[test]
fn c4_int8_rotation_error_in_float_simulation_is_rounding_noise() {
    // tract runs QDQ convolutions in float, so summation order differs between a patch and
    // its rotation and a few values round to the neighbouring step. ONNX Runtime's integer
    // kernels give exactly 0 on these models (issue 3 notes); here the simulated error must
    // stay at the level of a handful of flipped steps, far below a broken layout (~1e-1).
    let fp32 = OnnxModel::load(fixture("eqmnv2_c4.onnx")).unwrap();
    let (_, int8) = quantize(&fixture("eqmnv2_c4.onnx"), &options(Granularity::PerChannel, 4));
    let inputs = edgemed_converter::inputs::random(&fp32, 6, 3).unwrap();
    let v = verify::verify(&fp32, &int8, &inputs, true).unwrap();
    let (e32, e8) = v.rotation_error.unwrap();
    println!("C4 rotation error FP32 {e32:.2e}, INT8 (tract float simulation) {e8:.2e}; SQNR {:.1} dB", v.sqnr_db[0]);
    assert!(e32 <= 1e-4, "FP32 {e32}");
    assert!(e8 <= 1e-2, "INT8 {e8}");
    assert!(v.sqnr_db[0] > 15.0);
}

#[test]
fn c8_and_c12_rotation_error_is_reported() {
    for (name, field) in [("eqmnv2_c8", 8), ("eqmnv2_c12", 12)] {
        let fp32 = OnnxModel::load(fixture(&format!("{name}.onnx"))).unwrap();
        let (g, int8) = quantize(&fixture(&format!("{name}.onnx")), &options(Granularity::PerChannel, field));
        assert_field_uniform(&g, field);
        assert_int8_weights_equivariant(&g, field);
        let inputs = edgemed_converter::inputs::random(&fp32, 4, 5).unwrap();
        let v = verify::verify(&fp32, &int8, &inputs, true).unwrap();
        let (e32, e8) = v.rotation_error.unwrap();
        println!("{name}: rotation error FP32 {e32:.2e}, INT8 (tract float simulation) {e8:.2e}; SQNR {:.1} dB", v.sqnr_db[0]);
        // Exact by construction (asserted above); tract's float simulation adds rounding flips.
        assert!(e32 <= 1e-4 && e8 <= 1e-2, "{name}: FP32 {e32}, INT8 {e8}");
    }
}

#[test]
fn escnn_export_quantizes_with_its_fields() {
    let path = fixture("dfq/escnn_c4.onnx");
    let (g, int8) = quantize(&path, &options(Granularity::PerChannel, 4));
    assert_field_uniform_weights(&g, 4);
    let fp32 = OnnxModel::load(&path).unwrap();
    // escnn models carry no edgemed metadata: random N(0, 1)-ish inputs, no mask.
    let inputs = edgemed_converter::inputs::random(&fp32, 4, 9).unwrap();
    let v = verify::verify(&fp32, &int8, &inputs, true).unwrap();
    let (e32, e8) = v.rotation_error.unwrap();
    println!("escnn C4: rotation error FP32 {e32:.2e}, INT8 (tract float simulation) {e8:.2e}; SQNR {:.1} dB", v.sqnr_db[0]);
    assert!(e32 <= 1e-4 && e8 <= 1e-2, "FP32 {e32}, INT8 {e8}");
}

fn assert_field_uniform_weights(g: &Graph, field: usize) {
    for n in g.nodes().iter().filter(|n| n.op_type == "DequantizeLinear" && attr_i(n, "axis", -1) == 0) {
        let s = g.constant(&n.input[1]).unwrap();
        if s.len().is_multiple_of(field) {
            assert!(s.data.chunks(field).all(|f| f.iter().all(|v| *v == f[0])), "{}", n.input[1]);
        }
    }
}

#[test]
fn models_without_batch_norm_skip_the_statistics_passes() {
    let mut g = Graph::load(&fixture("eqmnv2_c4_folded.onnx")).unwrap();
    let report = dfq::run(&mut g, &options(Granularity::PerTensor, 4)).unwrap();
    assert!(report.messages.iter().any(|m| m.contains("no batch-norm statistics")), "{:?}", report.messages);
    assert!(report.absorbed.is_none());
    assert_eq!(report.quant.bias_corrected, 0);
    // Weights are still quantized; activations without a range are listed, not guessed.
    assert!(report.quant.weights_quantized > 50);
    assert!(!report.quant.left_fp32.is_empty());
    OnnxModel::from_bytes("x.onnx", &g.to_bytes()).unwrap();
}

#[test]
fn calibration_gives_ranges_where_statistics_cannot() {
    let fp32 = OnnxModel::load(fixture("eqmnv2_c4_folded.onnx")).unwrap();
    let mut opts = options(Granularity::PerChannel, 4);
    opts.calibration = edgemed_converter::inputs::from_images(&fp32, &edgemed_tests::repo_root().join("examples/data/pcam"), 16).unwrap();
    let mut g = Graph::load(&fixture("eqmnv2_c4_folded.onnx")).unwrap();
    let report = dfq::run(&mut g, &opts).unwrap();
    assert!(report.quant.left_fp32.is_empty(), "{:?}", report.quant.left_fp32);
    let int8 = OnnxModel::from_bytes("x.onnx", &g.to_bytes()).unwrap();
    let v = verify::verify(&fp32, &int8, &opts.calibration, false).unwrap();
    println!("calibrated per-channel INT8 on a BN-free model: SQNR {:.1} dB", v.sqnr_db[0]);
    assert!(v.sqnr_db[0] > 15.0);
}

#[test]
fn graph_round_trips_unchanged_without_passes() {
    for name in ["eqmnv2_c4.onnx", "dfq/escnn_c4.onnx", "dfq/mnv2_spread.onnx", "eqmnv2_c4_qdq.onnx"] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let g = Graph::from_bytes(&bytes).unwrap();
        let again = Graph::from_bytes(&g.to_bytes()).unwrap();
        assert_eq!(again.model, g.model, "{name}");
    }
}

#[test]
fn percentile_calibration_narrows_min_max_ranges() {
    let g = Graph::load(&fixture("eqmnv2_c4_folded.onnx")).unwrap();
    let model = OnnxModel::load(fixture("eqmnv2_c4_folded.onnx")).unwrap();
    let inputs = edgemed_converter::inputs::from_images(&model, &edgemed_tests::repo_root().join("examples/data/pcam"), 8).unwrap();
    let values: Vec<String> = g.nodes().iter().filter(|n| n.op_type == "Conv").map(|n| n.output[0].clone()).collect();
    let full = edgemed_converter::calibrate::calibrate(&g, &values, &inputs, None).unwrap();
    let clipped = edgemed_converter::calibrate::calibrate(&g, &values, &inputs, Some(99.0)).unwrap();
    let mut narrower = 0;
    for v in &values {
        let (a, b) = (full[v], clipped[v]);
        assert!(b.lo >= a.lo && b.hi <= a.hi && b.lo < b.hi, "{v}: percentile {b:?} outside min/max {a:?}");
        narrower += (b.hi < a.hi || b.lo > a.lo) as usize;
    }
    assert!(narrower > values.len() / 2, "99th percentile clipped only {narrower} of {} ranges", values.len());
}

#[test]
fn verify_reports_sqnr_for_every_output() {
    // A second graph output (the pooled features before the classifier) gets its own SQNR.
    let mut g = Graph::load(&fixture("eqmnv2_c4.onnx")).unwrap();
    let gemm = g.nodes().iter().find(|n| n.op_type == "Gemm").expect("classifier").input[0].clone();
    let mut extra = g.g().output[0].clone();
    extra.name = gemm.clone();
    extra.r#type = None;
    g.g_mut().output.push(extra);
    let fp32 = OnnxModel::from_bytes("two-outputs.onnx", &g.to_bytes()).unwrap();
    dfq::run(&mut g, &options(Granularity::PerChannel, 4)).unwrap();
    let int8 = OnnxModel::from_bytes("two-outputs-int8.onnx", &g.to_bytes()).unwrap();
    let inputs = edgemed_converter::inputs::random(&fp32, 4, 5).unwrap();
    let v = verify::verify(&fp32, &int8, &inputs, false).unwrap();
    println!("per-output SQNR {:?} for {:?}", v.sqnr_db, v.outputs);
    assert_eq!(v.outputs.len(), 2);
    assert_eq!(v.outputs[1], gemm);
    assert_eq!(v.sqnr_db.len(), 2);
    assert!(v.sqnr_db.iter().all(|db| db.is_finite() && *db > 10.0), "{:?}", v.sqnr_db);
    assert_ne!(v.sqnr_db[0], v.sqnr_db[1]);
}
