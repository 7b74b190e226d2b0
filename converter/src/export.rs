//! Writing models: encode, prove the bytes load and compile in the runtime, then
//! rename into place, so the converter never leaves a model that fails to load; and
//! record it (SHA-256, inputs) in the edgemed-manifest.json beside it, which devices check.

use std::path::Path;

use anyhow::{Context, Result};
use edgemed_onnx::pb;
use edgemed_runtime::backend::TractBackend;
use edgemed_runtime::model::{Dim, OnnxModel};
use prost::Message;

pub fn save_verified(model: &pb::ModelProto, path: &Path) -> Result<()> {
    let bytes = model.encode_to_vec();
    let loaded = OnnxModel::from_bytes(path, &bytes).context("the written model does not parse")?;
    // Free spatial sizes are tried at the smallest the model accepts (a U-Net's
    // size_multiple), so the check compiles every layer with a real shape.
    let multiple =
        model.metadata_props.iter().find(|p| p.key == "edgemed.size_multiple").and_then(|p| p.value.parse::<usize>().ok()).unwrap_or(1);
    let shape: Vec<usize> = loaded.inputs[0]
        .dims
        .as_ref()
        .context("the written model declares no input shape")?
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            Dim::Fixed(n) => *n,
            Dim::Symbolic(_) if i >= 2 => multiple,
            Dim::Symbolic(_) => 1,
        })
        .collect();
    TractBackend::new(&loaded, &shape).context("the written model does not compile in the runtime")?;
    edgemed_runtime::fsutil::write_atomic(path, &bytes)?;
    let manifest = edgemed_runtime::formats::manifest::Manifest::record(path, &bytes, &loaded)?;
    log::info!("recorded {} in {}", path.display(), manifest.display());
    Ok(())
}
