//! Execution backends. The runtime speaks to them through [`Backend`]; tract is
//! the default (pure Rust, cross-compiles). An ONNX Runtime backend plugs in here.

pub mod tract;

use crate::error::Result;
use crate::ndarray::ArrayD;

pub use self::tract::TractBackend;

/// A compiled model that maps one batch of inputs to its outputs.
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    /// The input shape the model was compiled for, batch dimension included.
    fn input_shape(&self) -> &[usize];
    /// Runs one input tensor of exactly [`Backend::input_shape`]; returns every output.
    fn run(&self, input: ArrayD<f32>) -> Result<Vec<ArrayD<f32>>>;
}
