//! Named float32 tensors (the base parameters of a model) and their
//! safetensors form, with the string metadata map safetensors carries.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use crate::error::{Error, Result};

/// A float32 tensor, row-major (also the converter's `graph::Array`).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "tensor shape and data disagree");
        Tensor { shape, data }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Base parameters by name plus free-form metadata (architecture settings).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Weights {
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: BTreeMap<String, String>,
}

impl Weights {
    pub fn load(path: &Path) -> Result<Self> {
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| edgemed_runtime::Error::io(path, e))?;
        let bad = |reason: String| Error::Safetensors { file: file.clone(), reason };
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(bad(format!("tensor {name:?} is {:?}; only float32 weights are read", view.dtype())));
            }
            let data: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            if data.iter().any(|x| !x.is_finite()) {
                return Err(Error::NonFinite { file: file.clone(), name });
            }
            tensors.insert(name, Tensor::new(view.shape().to_vec(), data));
        }
        let metadata = header.metadata().clone().unwrap_or_default().into_iter().collect();
        Ok(Weights { tensors, metadata })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes: Vec<(String, Vec<u8>)> =
            self.tensors.iter().map(|(k, t)| (k.clone(), t.data.iter().flat_map(|x| x.to_le_bytes()).collect())).collect();
        let views: Vec<(String, TensorView)> = bytes
            .iter()
            .map(|(k, b)| (k.clone(), TensorView::new(Dtype::F32, self.tensors[k].shape.clone(), b).expect("shape matches data")))
            .collect();
        let md: std::collections::HashMap<String, String> = self.metadata.clone().into_iter().collect();
        let out = safetensors::serialize(views, &Some(md))
            .map_err(|e| Error::Safetensors { file: path.display().to_string(), reason: e.to_string() })?;
        edgemed_runtime::fsutil::write_atomic(path, &out)?;
        Ok(())
    }
}
