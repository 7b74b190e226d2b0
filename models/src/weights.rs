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
        let bytes = std::fs::read(path).map_err(|e| edgemed_onnx::Error::io(path, e))?;
        let bad = |reason: String| Error::Safetensors { file: file.clone(), reason };
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            // PyTorch's batch-norm step counter (int64) is training state, not a parameter.
            if name.ends_with("num_batches_tracked") && view.dtype() == Dtype::I64 {
                continue;
            }
            let bytes = view.data();
            let data: Vec<f32> = match view.dtype() {
                Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
                Dtype::F64 => bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect(),
                Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
                Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
                other => return Err(bad(format!("tensor {name:?} is {other:?}; weights must be floating point"))),
            };
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
        edgemed_onnx::fsutil::write_atomic(path, &out)?;
        Ok(())
    }
}

/// A comma-separated list of integers from weight-file metadata (empty items skipped).
pub fn metadata_usizes(md: &BTreeMap<String, String>, key: &str, file: &str) -> Result<Vec<usize>> {
    let v = md.get(key).ok_or_else(|| Error::Config(format!("{file}: metadata has no {key:?}")))?;
    v.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse::<usize>().map_err(|_| Error::Config(format!("{file}: metadata {key}={v:?} is not a list of integers"))))
        .collect()
}

/// One integer from weight-file metadata.
pub fn metadata_usize(md: &BTreeMap<String, String>, key: &str, file: &str) -> Result<usize> {
    match metadata_usizes(md, key, file)?.as_slice() {
        [x] => Ok(*x),
        _ => Err(Error::Config(format!("{file}: metadata {key:?} must be one integer"))),
    }
}

/// How a seeded initialisation fills a parameter it has to invent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// He-normal with this fan-in, times `gain`.
    HeNormal {
        fan_in: usize,
        gain: f32,
    },
    /// Uniform in [-a, a].
    Uniform(f32),
    /// Normal with this mean and standard deviation.
    Normal(f32, f32),
    Constant(f32),
}

/// Where an exporter's parameters come from: a weight file (every tensor it asks
/// for must be there with the asked shape, and [`ParamSource::finish`] refuses
/// tensors nobody asked for) or a seeded initialisation, whose tensors are kept
/// so they can be saved as a weight file. Walking the architecture once through
/// this both checks a file and builds the graph, so the two cannot disagree.
pub struct ParamSource<'a> {
    file: Option<(&'a Weights, String)>,
    rng: rand::rngs::Xoshiro256PlusPlus,
    used: std::collections::BTreeSet<String>,
    /// Every tensor handed out, as given (the file's or the invented ones).
    pub taken: Weights,
}

impl<'a> ParamSource<'a> {
    pub fn from_file(weights: &'a Weights, file: &str) -> Self {
        use rand::SeedableRng;
        ParamSource {
            file: Some((weights, file.to_string())),
            rng: rand::rngs::Xoshiro256PlusPlus::seed_from_u64(0),
            used: Default::default(),
            taken: Weights { metadata: weights.metadata.clone(), ..Default::default() },
        }
    }

    pub fn seeded(seed: u64, metadata: BTreeMap<String, String>) -> Self {
        use rand::SeedableRng;
        ParamSource {
            file: None,
            rng: rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed),
            used: Default::default(),
            taken: Weights { metadata, ..Default::default() },
        }
    }

    /// The exporters' one rule: the weight file's tensors when given, else seeded ones
    /// recording `metadata()` (the configuration, built only for a seeded source).
    pub fn from_file_or_seed(weights: Option<(&'a Weights, &str)>, seed: u64, metadata: impl FnOnce() -> BTreeMap<String, String>) -> Self {
        match weights {
            Some((w, file)) => ParamSource::from_file(w, file),
            None => ParamSource::seeded(seed, metadata()),
        }
    }

    pub fn is_file(&self) -> bool {
        self.file.is_some()
    }

    /// Whether the weight file has `name` (a seeded source has nothing optional).
    pub fn has(&self, name: &str) -> bool {
        self.file.as_ref().is_some_and(|(w, _)| w.tensors.contains_key(name))
    }

    /// The tensor `name` of exactly `shape`.
    pub fn get(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        self.get_any(name, &[shape.to_vec()], init)
    }

    /// The tensor `name` in one of the accepted `shapes` (a seeded one takes the first).
    pub fn get_any(&mut self, name: &str, shapes: &[Vec<usize>], init: Init) -> Result<Tensor> {
        self.get_with(name, shapes, |src, n| (0..n).map(|_| src.sample(init)).collect())
    }

    /// As [`ParamSource::get_any`], a seeded tensor made by `make(self, element count)`
    /// (for parameters with structure, such as an LU-factorised orthogonal matrix).
    pub fn get_with(&mut self, name: &str, shapes: &[Vec<usize>], make: impl FnOnce(&mut Self, usize) -> Vec<f32>) -> Result<Tensor> {
        let t = match &self.file {
            Some((w, file)) => match w.tensors.get(name) {
                None => return Err(Error::MissingTensor { file: file.clone(), name: name.into(), expected: shapes[0].clone() }),
                Some(t) if !shapes.contains(&t.shape) => {
                    return Err(Error::TensorShape {
                        file: file.clone(),
                        name: name.into(),
                        got: t.shape.clone(),
                        expected: shapes[0].clone(),
                    })
                }
                Some(t) => t.clone(),
            },
            None => {
                let shape = shapes[0].clone();
                let n: usize = shape.iter().product();
                let data = make(self, n);
                Tensor::new(shape, data)
            }
        };
        self.used.insert(name.to_string());
        self.taken.tensors.insert(name.to_string(), t.clone());
        Ok(t)
    }

    /// The file this source reads, for messages ("seeded" otherwise).
    pub fn file_name(&self) -> &str {
        self.file.as_ref().map_or("seeded", |(_, f)| f.as_str())
    }

    /// One standard normal sample from the seeded generator.
    pub fn normal(&mut self) -> f32 {
        self.sample(Init::Normal(0.0, 1.0))
    }

    pub fn sample(&mut self, init: Init) -> f32 {
        use rand::RngExt;
        let normal = |rng: &mut rand::rngs::Xoshiro256PlusPlus| {
            let (u, v): (f32, f32) = (rng.random_range(1e-7f32..1.0), rng.random_range(0f32..1.0));
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f32::consts::PI * v).cos()
        };
        match init {
            Init::HeNormal { fan_in, gain } => gain * (2.0 / fan_in.max(1) as f32).sqrt() * normal(&mut self.rng),
            Init::Uniform(a) => self.rng.random_range(-a..=a),
            Init::Normal(m, s) => m + s * normal(&mut self.rng),
            Init::Constant(c) => c,
        }
    }

    /// Refuses a weight file with tensors the architecture did not use (a sign that
    /// the settings do not match the file); returns the tensors taken.
    pub fn finish(self) -> Result<Weights> {
        if let Some((w, file)) = &self.file {
            let unused: Vec<&str> = w.tensors.keys().filter(|k| !self.used.contains(*k)).map(|s| s.as_str()).collect();
            if !unused.is_empty() {
                return Err(Error::UnusedTensors { file: file.clone(), names: unused.join(", ") });
            }
        }
        Ok(self.taken)
    }
}
