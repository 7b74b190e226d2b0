//! PCam classification: batches of patch files through a backend, softmax,
//! per-patch results streamed to the caller in input order. A bad patch fails
//! alone; the rest of its batch is still classified.

use crate::backend::{Backend, BackendOptions};
use crate::error::{Error, Result};
use crate::formats::patch::{PatchSource, Preprocess};
use crate::metadata::ModelMetadata;
use crate::model::OnnxModel;
use crate::ndarray::{ArrayD, IxDyn};

/// One patch's answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Prediction {
    /// Probability of the model's positive class (PCam: metastatic tissue in the central 32x32).
    pub probability: f32,
    /// Index and name of the most probable class.
    pub class_index: usize,
    pub class_name: String,
    pub logits: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct PatchResult {
    pub source: PatchSource,
    pub outcome: std::result::Result<Prediction, String>,
}

/// A model compiled for batched patch classification.
pub struct Classifier {
    backend: Box<dyn Backend>,
    pub metadata: ModelMetadata,
    pub preprocess: Preprocess,
    batch: usize,
    threads: usize,
}

#[derive(Debug, Clone)]
pub struct ClassifierOptions {
    pub batch: usize,
    pub threads: usize,
    pub resize: bool,
    /// Overrides the model's crop size.
    pub crop: Option<u32>,
    pub backend: BackendOptions,
}

impl Default for ClassifierOptions {
    fn default() -> Self {
        ClassifierOptions { batch: 1, threads: 1, resize: false, crop: None, backend: BackendOptions::default() }
    }
}

impl Classifier {
    pub fn new(model: &OnnxModel, opts: &ClassifierOptions) -> Result<Self> {
        edgemed_onnx::ensure!(opts.batch >= 1, Error::Invalid("batch size must be at least 1".into()));
        edgemed_onnx::ensure!(opts.threads >= 1, Error::Invalid("thread count must be at least 1".into()));
        let (_, side, _) = model.image_input()?;
        // A model exported with a fixed batch dimension runs at that batch size.
        let batch = match &model.inputs[0].dims.as_ref().expect("checked by image_input")[0] {
            crate::model::Dim::Fixed(b) if *b != opts.batch => {
                log::info!("{}: model has a fixed batch size of {b}; using it instead of {}", model.path.display(), opts.batch);
                *b
            }
            _ => opts.batch,
        };
        let mut preprocess = Preprocess::for_model(&model.metadata, side as u32);
        preprocess.resize = opts.resize;
        if let Some(c) = opts.crop {
            edgemed_onnx::ensure!(c as usize == side, Error::Invalid(format!("--crop {c} does not match the model input size {side}")));
        }
        edgemed_onnx::ensure!(
            preprocess.crop_size as usize == side && preprocess.crop_size <= preprocess.patch_size,
            Error::BadMetadata {
                path: model.path.clone(),
                key: "edgemed.crop_size".into(),
                value: preprocess.crop_size.to_string(),
                reason: format!("must equal the model input size {side} and fit in the {} patch", preprocess.patch_size),
            }
        );
        let backend = crate::backend::create(model, &[batch, 3, side, side], &opts.backend.clone().with_threads(opts.threads))?;
        let threads = if backend.parallel_runs() { opts.threads } else { 1 };
        let out_classes = model.outputs[0].dims.as_ref().and_then(|d| d.last().cloned());
        if let Some(crate::model::Dim::Fixed(n)) = out_classes {
            let expected = if n == 1 { 2 } else { n };
            edgemed_onnx::ensure!(
                expected == model.metadata.class_names.len(),
                Error::BadMetadata {
                    path: model.path.clone(),
                    key: "edgemed.class_names".into(),
                    value: model.metadata.class_names.join(","),
                    reason: format!("the model has {n} output(s)"),
                }
            );
        }
        Ok(Classifier { backend, metadata: model.metadata.clone(), preprocess, batch, threads })
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// Classifies every path; `on_result` sees each result in input order as soon as
    /// its batch is done, so callers can stream results and survive interruption.
    pub fn classify(&self, paths: &[PatchSource], mut on_result: impl FnMut(PatchResult)) -> Result<()> {
        let batches: Vec<&[PatchSource]> = paths.chunks(self.batch).collect();
        // Threads work on consecutive batches side by side; results are emitted in order.
        for group in batches.chunks(self.threads) {
            let results = crate::parallel::map_side_by_side(group, |b| self.classify_batch(b));
            for r in results {
                r?.into_iter().for_each(&mut on_result);
            }
        }
        Ok(())
    }

    fn classify_batch(&self, paths: &[PatchSource]) -> Result<Vec<PatchResult>> {
        let s = self.preprocess.crop_size as usize;
        let per = 3 * s * s;
        let mut input = vec![0f32; self.batch * per];
        let mut loaded: Vec<std::result::Result<(), String>> = Vec::with_capacity(paths.len());
        for (i, p) in paths.iter().enumerate() {
            loaded.push(self.preprocess.load_into(p, &mut input[i * per..(i + 1) * per]).map_err(|e| e.to_string()));
        }
        let results = if loaded.iter().any(|r| r.is_ok()) {
            // Unused slots of a short last batch stay zero; their outputs are dropped.
            let x = ArrayD::from_shape_vec(IxDyn(&[self.batch, 3, s, s]), input).map_err(|e| Error::Invalid(e.to_string()))?;
            let out = self.backend.run(x)?.into_iter().next().ok_or_else(|| Error::Invalid("the model produced no output".into()))?;
            // One row of logits per patch, or the rows cannot be told apart.
            if out.ndim() == 0 || out.shape()[0] != self.batch || out.is_empty() {
                return Err(Error::Invalid(format!("the model output has shape {:?}, expected [{}, classes]", out.shape(), self.batch)));
            }
            Some(out)
        } else {
            None
        };
        let mut out = Vec::with_capacity(paths.len());
        for (i, (p, l)) in paths.iter().zip(loaded).enumerate() {
            let outcome = l.and_then(|()| {
                let logits = results.as_ref().expect("some patch loaded").index_axis(crate::ndarray::Axis(0), i);
                self.predict(p, logits.iter().copied().collect())
            });
            out.push(PatchResult { source: p.clone(), outcome });
        }
        Ok(out)
    }

    fn predict(&self, source: &PatchSource, logits: Vec<f32>) -> std::result::Result<Prediction, String> {
        if logits.iter().any(|x| !x.is_finite()) {
            return Err(Error::NonFinite { what: format!("{source}: model output") }.to_string());
        }
        let probs = probabilities(&logits);
        let (class_index, _) = probs.iter().enumerate().fold((0, f32::MIN), |best, (i, &p)| if p > best.1 { (i, p) } else { best });
        Ok(Prediction {
            probability: probs[self.metadata.positive_class.min(probs.len() - 1)],
            class_index,
            class_name: self.metadata.class_names.get(class_index).cloned().unwrap_or_else(|| format!("class{class_index}")),
            logits,
        })
    }
}

/// Softmax over the logits; a single logit is read as a sigmoid's input (P(negative), P(positive)).
pub fn probabilities(logits: &[f32]) -> Vec<f32> {
    if let [z] = logits {
        let p = 1.0 / (1.0 + (-z).exp());
        return vec![1.0 - p, p];
    }
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = logits.iter().map(|z| (z - m).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.into_iter().map(|x| x / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::probabilities;

    #[test]
    fn softmax_is_stable_and_normalised() {
        let p = probabilities(&[1000.0, 1001.0]);
        assert!((p[0] + p[1] - 1.0).abs() < 1e-6);
        assert!((p[1] - 1.0 / (1.0 + (-1f32).exp())).abs() < 1e-6);
        assert_eq!(probabilities(&[0.0]), vec![0.5, 0.5]);
    }
}
