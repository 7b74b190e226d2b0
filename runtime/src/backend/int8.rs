//! The edgemed INT8 backend: QDQ models run by edgemed's own integer engine
//! ([`edgemed_engine`]) on its threads (`BackendOptions::intra_threads`; the same bits
//! at any count): one item's ops cut over them, several items of a batch whole side by
//! side ([`Engine::run_items`]).
//!
//! Fallback policy: a model the engine does not cover ([`Error::Unsupported`]: an
//! operator or a form of quantisation it does not read, a float model) runs in tract
//! instead, with one log line naming the construct. Any other compile error (sizes that
//! contradict each other, a corrupt tensor) is the model's error and is returned: a bug
//! or a bad file never silently becomes a slow float run.

use super::Backend;
use crate::error::{Error, Result};
use crate::model::OnnxModel;
use crate::ndarray::ArrayD;
use edgemed_engine::Engine;

pub struct Int8Backend {
    engine: Engine,
    input_shape: Vec<usize>,
}

/// The engine on `threads` threads when it covers `model`, else tract (logged), which
/// checks the sizes itself.
pub fn create(model: &OnnxModel, input_shape: &[usize], budget: u64, threads: usize) -> Result<Box<dyn Backend>> {
    match Engine::for_input(model, input_shape) {
        Ok(engine) => {
            let engine = engine.with_threads(threads);
            let weights = super::check_declared_sizes(model, input_shape, budget)?;
            // The engine runs an item in buffers planned at compile time (and kernel
            // scratch for each further thread), a set per item running side by side.
            let buffers = engine.buffer_bytes() as u64 * engine.sets_for(input_shape.first().copied().unwrap_or(1)) as u64;
            crate::budget::check(|| format!("{}: the INT8 engine's weights and buffers", model.path.display()), weights + buffers, budget)?;
            let (int_ops, float_ops) = engine.plan.counts();
            log::info!(
                "{}: edgemed INT8 engine, {int_ops} integer ops ({:.1} MMAC), {float_ops} float ops, {} kernels, {} thread(s) per run",
                model.path.display(),
                engine.plan.macs as f64 / 1e6,
                engine.isa().name(),
                engine.threads(),
            );
            Ok(Box::new(Int8Backend { engine, input_shape: input_shape.to_vec() }))
        }
        Err(Error::Unsupported(what)) => {
            log::warn!("{}: the INT8 engine does not cover this model ({what}); running it with tract", model.path.display());
            super::tract_backend(model, input_shape, budget)
        }
        Err(e) => Err(Error::InvalidModel { path: model.path.clone(), reason: format!("INT8 engine: {e}") }),
    }
}

impl Backend for Int8Backend {
    fn name(&self) -> &'static str {
        "edgemed-int8"
    }

    fn engine(&self) -> Option<&Engine> {
        Some(&self.engine)
    }

    fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    fn run(&self, input: ArrayD<f32>) -> Result<Vec<ArrayD<f32>>> {
        if input.shape() != self.input_shape.as_slice() {
            return Err(Error::WrongShape { got: input.shape().to_vec(), expected: self.input_shape.clone() });
        }
        // Item after item, each a contiguous run of the batch in standard layout.
        let input = input.as_standard_layout();
        let item_len: usize = self.input_shape[1..].iter().product();
        let items: Vec<&[f32]> = input.as_slice().expect("standard layout").chunks_exact(item_len.max(1)).collect();
        if items.is_empty() {
            return Err(Error::Invalid(format!("an empty batch (input shape {:?})", self.input_shape)));
        }
        // Whole items side by side on the engine's threads, their outputs joined along
        // the batch axis.
        self.engine.run_batch(&items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendKind, BackendOptions};
    use crate::ndarray::IxDyn;

    /// `intra_threads` reaches the engine, whose outputs are the same bits at any count:
    /// a batch of two different windows, run item by item (one thread) and side by side
    /// (three threads: both items at once, in their own order).
    #[test]
    fn intra_threads_give_the_same_bits() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/int8/unet3d_qdq.onnx");
        let model = OnnxModel::load(&path).unwrap();
        let shape = [2, 1, 32, 32, 32];
        let x = ArrayD::from_shape_fn(IxDyn(&shape), |i| ((i[2] * 7 + i[3] * 3 + i[4] + i[0]) % 23) as f32 / 11.0 - 1.0);
        let run = |threads: usize| {
            let opts = BackendOptions { kind: BackendKind::Int8, intra_threads: threads, ..Default::default() };
            let b = crate::backend::create(&model, &shape, &opts).unwrap();
            assert_eq!(b.name(), "edgemed-int8");
            b.run(x.clone()).unwrap().into_iter().map(|y| y.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()).collect::<Vec<_>>()
        };
        let one = run(0);
        assert!(run(1) == one && run(3) == one, "threads changed the output");
    }
}
