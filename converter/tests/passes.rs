//! Each data-free quantization pass, alone and chained, on real models run
//! through the runtime: batch-norm folding and cross-layer equalization must keep
//! the FP32 function (relative output error < 1e-5); high-bias absorption changes
//! it only where the normal assumption fails, which is measured and bounded.

use edgemed_converter::graph::Graph;
use edgemed_converter::passes::equalize::{cross_layer_equalize, Options, Relu6Policy};
use edgemed_converter::passes::{absorb, fold_bn, in_ranges, layers, out_ranges, weight_and_bias, Stats};
use edgemed_runtime::backend::{Backend, TractBackend};
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::ndarray::{ArrayD, IxDyn};
use edgemed_tests::{fixture, read_f32};

fn run(g: &Graph, input: &ArrayD<f32>) -> Vec<f32> {
    let model = OnnxModel::from_bytes("pass.onnx", &g.to_bytes()).unwrap();
    let backend = TractBackend::new(&model, input.shape()).unwrap();
    backend.run(input.clone()).unwrap().remove(0).iter().copied().collect()
}

/// ||a - b|| / ||b|| over all outputs.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt() as f32
}

fn input(name: &str) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(&[2, 3, 95, 95]), read_f32(&fixture(&format!("{name}.input.f32")))).unwrap()
}

/// A fixture model with its batch norm folded, its test input, its unfolded outputs
/// (the reference every pass must keep) and the statistics folding kept.
fn folded_fixture(name: &str) -> (Graph, ArrayD<f32>, Vec<f32>, Stats) {
    let x = input(name);
    let mut g = Graph::load(&fixture(&format!("{name}.onnx"))).unwrap();
    let reference = run(&g, &x);
    let stats = fold_bn::fold_batch_norm(&mut g).unwrap();
    (g, x, reference, stats)
}

/// Median over layers of (max channel range / min channel range) of depthwise weights.
fn depthwise_range_ratio(g: &Graph) -> f32 {
    let mut ratios: Vec<f32> = layers(g)
        .iter()
        .filter(|l| l.is_depthwise())
        .map(|l| {
            let r = out_ranges(&weight_and_bias(g, l).unwrap().0, 0);
            r.iter().copied().fold(0f32, f32::max) / r.iter().copied().fold(f32::MAX, f32::min).max(1e-12)
        })
        .collect();
    ratios.sort_by(f32::total_cmp);
    ratios[ratios.len() / 2]
}

#[test]
fn folding_and_equalization_keep_the_function() {
    for (name, field) in [("eqmnv2_c1", 1), ("eqmnv2_c4", 4), ("eqmnv2_c8", 8), ("eqmnv2_c12", 12), ("eqmnv2_c4_folded", 4)] {
        let (mut g, x, reference, mut stats) = folded_fixture(name);
        let folded = run(&g, &x);
        let e_fold = rel_err(&folded, &reference);
        assert!(!g.nodes().iter().any(|n| n.op_type == "BatchNormalization"), "{name}: BN left");
        assert_eq!(stats.is_empty(), name.ends_with("folded"), "{name}: statistics kept only when BN was there");
        let before = depthwise_range_ratio(&g);
        let report = cross_layer_equalize(&mut g, &mut stats, &Options { field_size: field, ..Options::default() }).unwrap();
        let after = depthwise_range_ratio(&g);
        let e_cle = rel_err(&run(&g, &x), &reference);
        println!("{name}: fold {e_fold:.2e}, CLE {e_cle:.2e} ({} triplets, {} pairs, {} iterations); depthwise range ratio {before:.1} -> {after:.1}", report.triplets, report.pairs, report.iterations);
        assert!(e_fold < 1e-5 && e_cle < 1e-5, "{name}: fold {e_fold}, CLE {e_cle}");
        // Every inverted residual block is a triplet, except where the block input also feeds a
        // residual add (C8 at this width: the stem output), which must not be rescaled.
        assert!(report.triplets >= 16, "{name}: {} triplets", report.triplets);
        assert!(after < before, "{name}: equalization should narrow depthwise ranges");
    }
}

#[test]
fn equalization_shares_scales_within_fields() {
    // After field-aware CLE the per-channel ranges of a C4 model are equal within every field
    // wherever they were before; checked on the stem, whose filters are rotated copies.
    let mut g = Graph::load(&fixture("eqmnv2_c4.onnx")).unwrap();
    let mut stats = fold_bn::fold_batch_norm(&mut g).unwrap();
    cross_layer_equalize(&mut g, &mut stats, &Options { field_size: 4, ..Options::default() }).unwrap();
    for l in layers(&g).iter().filter(|l| l.out_channels % 4 == 0 && !l.name.contains("logits")) {
        let r = out_ranges(&weight_and_bias(&g, l).unwrap().0, l.out_axis);
        for f in r.chunks(4) {
            assert!(f.iter().all(|v| (v / f[0] - 1.0).abs() < 1e-5), "{}: {f:?}", l.name);
        }
    }
    // And the next layers' input ranges likewise (pointwise weights are field-circulant).
    let l = layers(&g).into_iter().find(|l| l.name == "blocks.1.expand.conv").unwrap();
    let r = in_ranges(&l, &weight_and_bias(&g, &l).unwrap().0);
    assert!(r.chunks(4).all(|f| f.iter().all(|v| (v / f[0] - 1.0).abs() < 1e-5)));
}

#[test]
fn relu6_replacement_is_an_explicit_function_change() {
    let (mut g, x, reference, mut stats) = folded_fixture("eqmnv2_c4");
    let report =
        cross_layer_equalize(&mut g, &mut stats, &Options { field_size: 4, relu6: Relu6Policy::ReplaceWithRelu, ..Options::default() })
            .unwrap();
    assert!(report.clips_rewritten > 0);
    assert!(!g.nodes().iter().any(|n| n.op_type == "Clip" || n.op_type == "Min"), "all ReLU6 in chains became ReLU");
    let e = rel_err(&run(&g, &x), &reference);
    println!("ReLU6 -> ReLU changes outputs by {e:.2e} (relative)");
    assert!(e > 1e-5, "replacing ReLU6 should change this model's outputs");
}

#[test]
fn high_bias_absorption_is_exact_where_its_assumption_holds() {
    let (mut g, x, reference, mut stats) = folded_fixture("eqmnv2_c4");
    cross_layer_equalize(&mut g, &mut stats, &Options { field_size: 4, ..Options::default() }).unwrap();
    let report = absorb::absorb_high_biases(&mut g, &mut stats, 4).unwrap();
    let e = rel_err(&run(&g, &x), &reference);
    println!(
        "absorbed into {} layers (skipped {} padded), max shift {:.3}; relative output change {e:.2e}",
        report.absorbed_layers, report.skipped_padded, report.max_shift
    );
    assert!(report.absorbed_layers > 0, "the seeded model has biases above 3 sigma");
    assert!(e < 1e-2, "absorption moved outputs by {e}");
}

/// escnn's own export (tests/fixtures/zoo, legacy exporter, batch norm kept): its
/// equivariant depthwise layers are grouped convs of 4 in and 4 out channels per field.
fn escnn_c4() -> (Graph, ArrayD<f32>, Vec<f32>) {
    let root = edgemed_tests::repo_root().join("tests/fixtures/zoo");
    let x = ArrayD::from_shape_vec(IxDyn(&[2, 3, 95, 95]), read_f32(&root.join("input95.f32"))).unwrap();
    let mut g = Graph::load(&root.join("c4_legacy_bn.onnx")).unwrap();
    g.materialize_constant_inputs(edgemed_converter::dfq::CONSTANT_INPUT_OPS);
    let reference = run(&g, &x);
    (g, x, reference)
}

/// Largest over grouped layers of (largest / smallest) per-output-channel weight range.
fn grouped_range_ratio(g: &Graph) -> f32 {
    layers(g)
        .iter()
        .filter(|l| l.is_grouped())
        .map(|l| {
            let r = out_ranges(&weight_and_bias(g, l).unwrap().0, l.out_axis);
            r.iter().copied().fold(0f32, f32::max) / r.iter().copied().fold(f32::MAX, f32::min).max(1e-12)
        })
        .fold(0f32, f32::max)
}

#[test]
fn grouped_equivariant_layers_are_folded_and_equalized_keeping_the_function() {
    let (mut g, x, reference) = escnn_c4();
    assert!(layers(&g).iter().any(|l| l.is_grouped() && l.group_sizes() == (4, 4)), "escnn's grouped layers are read as layers");
    let mut stats = fold_bn::fold_batch_norm(&mut g).unwrap();
    assert!(!g.nodes().iter().any(|n| n.op_type == "BatchNormalization"), "every batch norm folded, grouped layers' too");
    let folded = rel_err(&run(&g, &x), &reference);
    let before = grouped_range_ratio(&g);
    // Which fields of which grouped layers have equal per-channel ranges (rotated copies).
    let uniform = |g: &Graph| -> Vec<bool> {
        layers(g)
            .iter()
            .filter(|l| l.is_grouped())
            .flat_map(|l| {
                let r = out_ranges(&weight_and_bias(g, l).unwrap().0, l.out_axis);
                r.chunks(4).map(|f| f.iter().all(|v| (v / f[0] - 1.0).abs() < 1e-5)).collect::<Vec<_>>()
            })
            .collect()
    };
    let uniform_before = uniform(&g);
    assert!(uniform_before.iter().any(|u| *u), "escnn's fields hold rotated copies of one filter");
    let report = cross_layer_equalize(&mut g, &mut stats, &Options { field_size: 4, ..Options::default() }).unwrap();
    let after = grouped_range_ratio(&g);
    let err = rel_err(&run(&g, &x), &reference);
    println!(
        "escnn C4: folded rel err {folded:.1e}; CLE {} triplets + {} pairs, grouped layers' range ratio {before:.1} -> {after:.1}, rel err {err:.1e}",
        report.triplets, report.pairs
    );
    assert!(folded < 1e-5 && err < 1e-5, "{folded} {err}");
    assert!(report.triplets >= 3 && report.pairs >= 1, "{report:?}");
    assert!(after < before, "equalization narrows the grouped layers' ranges: {before} -> {after}");
    // Scales shared within fields: each grouped layer's per-channel ranges stay equal
    // within a field wherever they were.
    for (i, (was, is)) in uniform_before.iter().zip(uniform(&g)).enumerate() {
        assert!(!was || is, "field {i} of the grouped layers lost its equal ranges");
    }
}

#[test]
fn batch_norm_folds_into_a_conv_transpose() {
    use edgemed_onnx::builder::{Attr, GraphBuilder, D};
    let mut b = GraphBuilder::new("up");
    b.input_f32("x", &[D::N(1), D::N(3), D::N(4), D::N(5)]);
    let w: Vec<f32> = (0..3 * 2 * 2 * 2).map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0).collect();
    b.init_f32("w", &[3, 2, 2, 2], &w);
    b.init_f32("b", &[2], &[0.1, -0.2]);
    for (name, v) in [("g", [1.5f32, 0.25]), ("beta", [0.3, -1.0]), ("mean", [0.2, 0.7]), ("var", [2.0, 0.5])] {
        b.init_f32(name, &[2], &v);
    }
    b.node("ConvTranspose", "up", &["x", "w", "b"], vec![Attr::Ints("strides", vec![2, 2])]);
    b.node("BatchNormalization", "bn", &["up", "g", "beta", "mean", "var"], vec![]);
    b.output_f32("bn", &[D::N(1), D::N(2), D::N(8), D::N(10)]);
    let mut g = Graph::from_bytes(&prost::Message::encode_to_vec(&b.into_model("test", &[]))).unwrap();
    let x = ArrayD::from_shape_fn(IxDyn(&[1, 3, 4, 5]), |i| ((i[1] * 20 + i[2] * 5 + i[3]) % 9) as f32 / 3.0 - 1.0);
    let reference = run(&g, &x);
    let stats = fold_bn::fold_batch_norm(&mut g).unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(g.nodes().len(), 1, "the batch norm is gone");
    let err = rel_err(&run(&g, &x), &reference);
    assert!(err < 1e-6, "{err}");
}

#[test]
fn a_conv_whose_channels_do_not_split_into_its_groups_is_refused_in_one_line() {
    use edgemed_onnx::builder::{Attr, GraphBuilder, D};
    let mut b = GraphBuilder::new("bad");
    b.input_f32("x", &[D::N(1), D::N(6), D::N(5), D::N(5)]);
    // 4 output channels in 3 groups: not a valid model.
    b.init_f32("w", &[4, 2, 3, 3], &[0.1; 72]);
    b.node("Conv", "grouped", &["x", "w"], vec![Attr::Int("group", 3)]);
    b.output_f32("grouped", &[D::N(1), D::N(4), D::N(3), D::N(3)]);
    let mut g = Graph::from_bytes(&prost::Message::encode_to_vec(&b.into_model("test", &[]))).unwrap();
    let err = edgemed_converter::dfq::run(&mut g, &Default::default()).unwrap_err().to_string();
    assert!(err.contains("\"grouped\": 4 output channels do not split into 3 groups") && !err.contains('\n'), "{err}");
}
