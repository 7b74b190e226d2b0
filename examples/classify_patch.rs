//! Using edgemed-runtime as a library: classify PCam patches with a model.
//!
//!     cargo run --release -p edgemed-runtime --example classify_patch -- examples/data/pcam/patch_000.png [MODEL.onnx]

use edgemed_runtime::formats::patch::PatchSource;
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::tasks::classify::{Classifier, ClassifierOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let patch = args.first().ok_or("usage: classify_patch PATCH.png [MODEL.onnx]")?;
    let model = match args.get(1) {
        Some(path) => OnnxModel::load(path)?,
        None => OnnxModel::from_bytes(edgemed_runtime::BUNDLED_MODEL_NAME, edgemed_runtime::BUNDLED_MODEL)?,
    };
    let classifier = Classifier::new(&model, &ClassifierOptions::default())?;
    classifier.classify(&[PatchSource::File(patch.into())], |result| match result.outcome {
        Ok(p) => println!(
            "{}: P({}) = {:.4}, predicted {}",
            result.source, model.metadata.class_names[model.metadata.positive_class], p.probability, p.class_name
        ),
        Err(e) => eprintln!("{e}"),
    })?;
    Ok(())
}
