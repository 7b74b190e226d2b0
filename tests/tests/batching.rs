//! Batch handling: a model exported with a fixed batch dimension runs at that
//! size whatever the user asks, and results do not depend on batch size or threads.

use edgemed_onnx::pb;
use edgemed_runtime::formats::patch::expand_inputs;
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::tasks::classify::{Classifier, ClassifierOptions};
use edgemed_tests::{fixture, repo_root};
use prost::Message;

fn probabilities(model: &OnnxModel, batch: usize, threads: usize) -> Vec<f32> {
    let clf = Classifier::new(model, &ClassifierOptions { batch, threads, ..Default::default() }).unwrap();
    let files = expand_inputs(&[repo_root().join("examples/data/pcam")]).unwrap();
    let mut out = Vec::new();
    clf.classify(&files[..23], |r| out.push(r.outcome.unwrap().probability)).unwrap();
    out
}

#[test]
fn fixed_batch_models_run_at_their_batch_size() {
    let bytes = std::fs::read(fixture("eqmnv2_c4.onnx")).unwrap();
    let mut proto = pb::ModelProto::decode(bytes.as_slice()).unwrap();
    // Pin the symbolic batch dimension to 1, as many exporters do.
    let input = &mut proto.graph.as_mut().unwrap().input[0];
    if let Some(pb::type_proto::Value::TensorType(t)) = input.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        t.shape.as_mut().unwrap().dim[0].value = Some(pb::tensor_shape_proto::dimension::Value::DimValue(1));
    }
    let fixed = OnnxModel::from_bytes("fixed.onnx", &proto.encode_to_vec()).unwrap();
    let clf = Classifier::new(&fixed, &ClassifierOptions { batch: 8, ..Default::default() }).unwrap();
    assert_eq!(clf.batch_size(), 1);
    let symbolic = OnnxModel::load(fixture("eqmnv2_c4.onnx")).unwrap();
    let a = probabilities(&fixed, 8, 1);
    let b = probabilities(&symbolic, 8, 1);
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5));
}

#[test]
fn batch_size_and_threads_do_not_change_results() {
    let model = OnnxModel::load(fixture("eqmnv2_c4.onnx")).unwrap();
    let base = probabilities(&model, 1, 1);
    for (batch, threads) in [(4, 1), (5, 2), (23, 3)] {
        let other = probabilities(&model, batch, threads);
        assert_eq!(other.len(), base.len());
        assert!(base.iter().zip(&other).all(|(x, y)| (x - y).abs() < 1e-5), "batch {batch}, threads {threads}");
    }
}
