//! Writing models: encode, prove the bytes load and compile in the runtime, then
//! rename into place, so the converter never leaves a model that fails to load.

use std::path::Path;

use anyhow::{Context, Result};
use edgemed_runtime::backend::TractBackend;
use edgemed_runtime::model::{Dim, OnnxModel};
use edgemed_runtime::tract_onnx::pb;
use prost::Message;

pub fn save_verified(model: &pb::ModelProto, path: &Path) -> Result<()> {
    let bytes = model.encode_to_vec();
    let loaded = OnnxModel::from_bytes(path, &bytes).context("the written model does not parse")?;
    let shape: Vec<usize> = loaded.inputs[0]
        .dims
        .as_ref()
        .context("the written model declares no input shape")?
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => *n,
            Dim::Symbolic(_) => 1,
        })
        .collect();
    TractBackend::new(&loaded, &shape).context("the written model does not compile in the runtime")?;
    edgemed_runtime::fsutil::write_atomic(path, &bytes)?;
    Ok(())
}
