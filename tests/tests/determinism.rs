//! Determinism: the same INT8 model and input give the same bits on every run and at
//! every thread count (a device's answer must not depend on scheduling), in tract and in
//! edgemed's INT8 engine. Across
//! architectures the same is checked by scripts/test-arm.sh, which runs the QDQ fixture
//! under qemu for aarch64 and armv7 and demands identical bits against x86.

use edgemed_converter::graph::Graph;
use edgemed_runtime::backend::{Backend, BackendKind, BackendOptions, TractBackend};
use edgemed_runtime::formats::patch::expand_inputs;
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::ndarray::{ArrayD, IxDyn};
use edgemed_runtime::tasks::classify::{Classifier, ClassifierOptions};
use edgemed_tests::{fixture, read_f32, repo_root};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The bundled demo model quantized by the converter (data-free DFQ, per tensor).
fn int8_demo() -> OnnxModel {
    let mut g = Graph::load(&repo_root().join("models/bundled/pcam-c4-demo.onnx")).unwrap();
    let opts = edgemed_converter::dfq::Options { field_size: edgemed_converter::dfq::field_size_of(&g), ..Default::default() };
    edgemed_converter::dfq::run(&mut g, &opts).unwrap();
    let model = OnnxModel::from_bytes("int8.onnx", &g.to_bytes()).unwrap();
    assert_eq!(model.precision(), "INT8 (QDQ)");
    model
}

/// Logits for every sample patch, as raw bits, from tract.
fn logits(model: &OnnxModel, batch: usize, threads: usize) -> Vec<u32> {
    logits_from(BackendKind::Tract, model, batch, threads)
}

fn logits_from(kind: BackendKind, model: &OnnxModel, batch: usize, threads: usize) -> Vec<u32> {
    let backend = BackendOptions { kind, ..Default::default() };
    let clf = Classifier::new(model, &ClassifierOptions { batch, threads, backend, ..Default::default() }).unwrap();
    let files = expand_inputs(&[repo_root().join("examples/data/pcam")]).unwrap();
    let mut out = Vec::new();
    clf.classify(&files, |r| out.extend(bits(&r.outcome.unwrap().logits))).unwrap();
    out
}

#[test]
fn int8_demo_model_gives_the_same_bits_on_every_run_and_thread_count() {
    let model = int8_demo();
    let first = logits(&model, 1, 1);
    assert_eq!(first.len(), 200);
    assert_eq!(logits(&model, 1, 1), first, "second run, one thread");
    for threads in [2, 4] {
        assert_eq!(logits(&model, 1, threads), first, "{threads} threads");
    }
    // A second quantization of the same FP32 model writes the same INT8 model.
    assert_eq!(logits(&int8_demo(), 1, 2), first, "converter output differs between runs");
}

#[test]
fn qdq_fixture_gives_the_same_bits_on_every_run_and_from_fresh_compilations() {
    let model = OnnxModel::load(fixture("eqmnv2_c4_qdq.onnx")).unwrap();
    let x = read_f32(&fixture("eqmnv2_c4_qdq.input.f32"));
    let n = x.len() / (3 * 95 * 95);
    let input = ArrayD::from_shape_vec(IxDyn(&[n, 3, 95, 95]), x).unwrap();
    let run = |b: &TractBackend| bits(b.run(input.clone()).unwrap()[0].as_slice().unwrap());
    let a = TractBackend::new(&model, &[n, 3, 95, 95]).unwrap();
    let first = run(&a);
    for _ in 0..3 {
        assert_eq!(run(&a), first);
    }
    let b = TractBackend::new(&model, &[n, 3, 95, 95]).unwrap();
    assert_eq!(run(&b), first, "a second compilation of the same model");
    // Several threads running the same plan at once.
    let from_threads: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3).map(|_| s.spawn(|| run(&a))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(from_threads.iter().all(|r| *r == first));
}

/// edgemed's INT8 engine: integer sums, then the same float operations in a fixed order,
/// so batch size, thread count and concurrent callers (each with buffers of its own)
/// must not move a bit. Architectures: scripts/test-arm.sh; ISAs: int8_engine.rs.
#[test]
fn int8_engine_gives_the_same_bits_on_every_run_batch_and_thread_count() {
    let model = int8_demo();
    let first = logits_from(BackendKind::Int8, &model, 1, 1);
    assert_eq!(first.len(), 200);
    assert_eq!(logits_from(BackendKind::Int8, &model, 1, 1), first, "second run");
    for (batch, threads) in [(1, 2), (3, 2), (7, 4)] {
        assert_eq!(logits_from(BackendKind::Int8, &model, batch, threads), first, "batch {batch}, {threads} threads");
    }
    let fixture_model = OnnxModel::load(fixture("eqmnv2_c4_qdq.onnx")).unwrap();
    let x = read_f32(&fixture("eqmnv2_c4_qdq.input.f32"));
    let n = x.len() / (3 * 95 * 95);
    let input = ArrayD::from_shape_vec(IxDyn(&[n, 3, 95, 95]), x).unwrap();
    let opts = BackendOptions { kind: BackendKind::Int8, ..Default::default() };
    let engine = edgemed_runtime::backend::create(&fixture_model, &[n, 3, 95, 95], &opts).unwrap();
    assert_eq!(engine.name(), "edgemed-int8");
    let run = || bits(engine.run(input.clone()).unwrap()[0].as_slice().unwrap());
    let first = run();
    let from_threads: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(run)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(from_threads.iter().all(|r| *r == first), "concurrent callers");
}
