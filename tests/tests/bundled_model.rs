//! The bundled demonstration model (models/bundled/pcam-c4-demo.onnx, exported by
//! `edgemed export eq-mobilenet-v2` from the weights scripts/train_pcam.py trained)
//! must compute what the torch training model computes: the runtime's logits on the
//! sample patches, through its own PNG decoding, crop, normalisation and mask, equal
//! the torch logits recorded by scripts/make_fixtures.py within 1e-4 (relative to the
//! largest logit). It must also be invariant to quarter turns of the patch.

use edgemed_runtime::formats::patch::PatchSource;
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::tasks::classify::{Classifier, ClassifierOptions};
use edgemed_tests::{fixture, read_f32, repo_root, scratch_dir};

fn bundled() -> Classifier {
    let model = OnnxModel::load(repo_root().join("models/bundled/pcam-c4-demo.onnx")).unwrap();
    Classifier::new(&model, &ClassifierOptions { batch: 25, ..Default::default() }).unwrap()
}

#[test]
fn runtime_reproduces_the_training_models_logits() {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("pcam_c4_demo.torch_logits.json")).unwrap()).unwrap();
    let files: Vec<PatchSource> = meta["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| PatchSource::File(repo_root().join("examples/data/pcam").join(f.as_str().unwrap())))
        .collect();
    let torch = read_f32(&fixture("pcam_c4_demo.torch_logits.f32"));
    let mut ours = Vec::new();
    bundled().classify(&files, |r| ours.extend(r.outcome.unwrap().logits)).unwrap();
    assert_eq!(ours.len(), torch.len());
    let scale = torch.iter().fold(1f32, |m, x| m.max(x.abs()));
    let worst = ours.iter().zip(&torch).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    println!("bundled model vs torch on {} sample patches: max |logit difference| {worst:.2e} (scale {scale:.2})", files.len());
    assert!(worst <= 1e-4 * scale, "{worst}");
}

#[test]
fn bundled_model_is_invariant_to_quarter_turns_of_a_patch() {
    let dir = scratch_dir("rot");
    let clf = bundled();
    for i in [0, 1, 2, 3] {
        let src = repo_root().join(format!("examples/data/pcam/patch_{i:03}.png"));
        let img = image::open(&src).unwrap().to_rgb8();
        // A quarter turn of the 96x96 patch moves the 95x95 crop window (offset 0), so the
        // test turns the cropped region itself and pads it back to 96 the same way.
        let crop = image::imageops::crop_imm(&img, 0, 0, 95, 95).to_image();
        let mut paths = Vec::new();
        for k in 0..4 {
            let mut turned = crop.clone();
            for _ in 0..k {
                turned = image::imageops::rotate270(&turned);
            }
            let mut padded = image::RgbImage::new(96, 96);
            image::imageops::replace(&mut padded, &turned, 0, 0);
            let p = dir.join(format!("p{i}_{k}.png"));
            padded.save(&p).unwrap();
            paths.push(PatchSource::File(p));
        }
        let mut logits = Vec::new();
        clf.classify(&paths, |r| logits.push(r.outcome.unwrap().logits)).unwrap();
        for l in &logits[1..] {
            let d = l.iter().zip(&logits[0]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(d <= 1e-4, "patch {i}: quarter turn changed logits by {d}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The embedded INT8 model is what the converter makes of the FP32 one today with its
/// default recipe (scripts/make-bundled-int8.sh): a change to the converter that
/// changes it fails here until the script is rerun.
#[test]
fn bundled_int8_model_is_the_converters_output_of_the_fp32_one() {
    use edgemed_converter::{dfq, graph::Graph};
    let mut g = Graph::load(&repo_root().join("models/bundled/pcam-c4-demo.onnx")).unwrap();
    let opts = dfq::Options { field_size: dfq::field_size_of(&g), ..Default::default() };
    dfq::run(&mut g, &opts).unwrap();
    let committed = std::fs::read(repo_root().join("models/bundled/pcam-c4-demo-int8.onnx")).unwrap();
    assert!(g.to_bytes() == committed, "models/bundled/pcam-c4-demo-int8.onnx is stale: run scripts/make-bundled-int8.sh");
}
