//! Execution backends. The runtime speaks to them through [`Backend`]: edgemed's
//! integer engine ([`int8`]) for QDQ models, tract (pure Rust, cross-compiles) for
//! float models, ONNX Runtime ([`ort`], feature `ort`) for GPU hosts through its CUDA
//! provider. [`create`] picks one from [`BackendOptions`], the same options every CLI
//! subcommand takes; the default, [`BackendKind::Auto`], picks by the model
//! ([`BackendKind::resolve`]).

pub mod int8;
#[cfg(feature = "ort")]
pub mod ort;
#[cfg(feature = "tract")]
pub mod tract;

use std::path::PathBuf;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::model::OnnxModel;
use crate::ndarray::ArrayD;

#[cfg(feature = "tract")]
pub use self::tract::TractBackend;

/// A compiled model that maps one batch of inputs to its outputs.
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    /// Where it runs, as the user should read it ("cpu", "cuda:0").
    fn device(&self) -> String {
        "cpu".into()
    }
    /// The input shape the model was compiled for, batch dimension included.
    fn input_shape(&self) -> &[usize];
    /// Runs one input tensor of exactly [`Backend::input_shape`]; returns every output.
    /// Float16 model inputs and outputs are converted from and to float32 here.
    fn run(&self, input: ArrayD<f32>) -> Result<Vec<ArrayD<f32>>>;
    /// The shapes of every input the model was compiled for, in the graph's order
    /// (most models have one: [`Backend::input_shape`]).
    fn input_shapes(&self) -> Vec<Vec<usize>> {
        vec![self.input_shape().to_vec()]
    }
    /// Runs a model with several inputs, in the graph's order, each of its
    /// [`Backend::input_shapes`] shape; returns every output. Backends that run models
    /// with one input only take one.
    fn run_inputs(&self, inputs: Vec<ArrayD<f32>>) -> Result<Vec<ArrayD<f32>>> {
        match <[ArrayD<f32>; 1]>::try_from(inputs) {
            Ok([x]) => self.run(x),
            Err(v) => Err(Error::unsupported(format!("{} runs models with one input; {} were given", self.name(), v.len()))),
        }
    }
    /// Whether one instance runs batches from several threads at once without
    /// serialising them (tract: yes; ONNX Runtime parallelises inside each run instead).
    fn parallel_runs(&self) -> bool {
        true
    }
    /// The INT8 engine behind this backend, for what only it does (a volume's instance
    /// norms streamed over tiles: `edgemed_engine::norms`).
    fn engine(&self) -> Option<&edgemed_engine::Engine> {
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum BackendKind {
    /// The engine for QDQ models, tract for float ones ([`BackendKind::resolve`]).
    Auto,
    Tract,
    Ort,
    /// edgemed's own integer engine for QDQ models (tract for what it does not cover).
    Int8,
}

impl FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(BackendKind::Auto),
            "tract" => Ok(BackendKind::Tract),
            "ort" | "onnxruntime" => Ok(BackendKind::Ort),
            "int8" | "edgemed-int8" => Ok(BackendKind::Int8),
            _ => Err(Error::Invalid(format!("unknown backend {s:?}: expected auto, int8, tract or ort"))),
        }
    }
}

impl BackendKind {
    /// The backend that runs `model`: for [`BackendKind::Auto`], the INT8 engine when
    /// the model is quantized (QDQ: it has QuantizeLinear nodes), tract otherwise (the
    /// engine in a build without tract, which then says it needs a QDQ model).
    pub fn resolve(self, model: &OnnxModel) -> BackendKind {
        match self {
            BackendKind::Auto if model.graph().node.iter().any(|n| n.op_type == "QuantizeLinear") => BackendKind::Int8,
            BackendKind::Auto if cfg!(feature = "tract") => BackendKind::Tract,
            BackendKind::Auto => BackendKind::Int8,
            other => other,
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Auto => "auto",
            BackendKind::Tract => "tract",
            BackendKind::Ort => "ort",
            BackendKind::Int8 => "int8",
        })
    }
}

/// Where to run: `cpu`, `cuda` / `cuda:ID`, or `auto` (CUDA when the provider is there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(u32),
    Auto,
}

impl FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "auto" => Ok(Device::Auto),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(id)) => Ok(Device::Cuda(id)),
                _ => Err(Error::Invalid(format!("unknown device {s:?}: expected cpu, cuda, cuda:ID or auto"))),
            },
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(id) => write!(f, "cuda:{id}"),
            Device::Auto => f.write_str("auto"),
        }
    }
}

/// ONNX Runtime's graph optimisation levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptLevel {
    Disable,
    Basic,
    Extended,
    All,
}

impl FromStr for OptLevel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "disable" | "none" => Ok(OptLevel::Disable),
            "basic" => Ok(OptLevel::Basic),
            "extended" => Ok(OptLevel::Extended),
            "all" => Ok(OptLevel::All),
            _ => Err(Error::Invalid(format!("unknown optimisation level {s:?}: expected disable, basic, extended or all"))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BackendOptions {
    pub kind: BackendKind,
    pub device: Device,
    /// Fail instead of falling back to the CPU when the requested device is unavailable.
    pub strict_device: bool,
    /// ONNX Runtime library (file, or a directory holding it); see [`ort::find_library`].
    pub ort_library: Option<PathBuf>,
    /// Threads inside one run: ONNX Runtime's intra-op pool (0: the library's default)
    /// and the INT8 engine's (0: one); tract runs on one.
    pub intra_threads: usize,
    pub opt_level: OptLevel,
    /// Bytes the model's weights, input and activations may take; 0: no limit. See [`crate::budget`].
    pub memory_budget: u64,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            kind: BackendKind::Auto,
            device: Device::Cpu,
            strict_device: false,
            ort_library: None,
            intra_threads: 0,
            opt_level: OptLevel::All,
            memory_budget: crate::budget::DEFAULT_BUDGET,
        }
    }
}

impl BackendOptions {
    /// For callers that run whole batches on `threads` threads side by side where the
    /// backend allows it (classify, heatmap; see [`Backend::parallel_runs`]): gives
    /// `threads` to ONNX Runtime's intra-op pool unless set already, and leaves the
    /// INT8 engine at one thread per run (unless `intra_threads` asks for more), so
    /// that batches side by side do not each start `threads` more.
    pub fn with_threads(mut self, threads: usize) -> Self {
        if self.kind == BackendKind::Ort && self.intra_threads == 0 {
            self.intra_threads = threads;
        }
        self
    }

    /// For callers that run one item at a time (the volume commands' windows): gives
    /// `threads` to the threads inside each run, ONNX Runtime's intra-op pool and the
    /// INT8 engine's, unless set already (tract runs on one).
    pub fn with_intra_threads(mut self, threads: usize) -> Self {
        if self.intra_threads == 0 {
            self.intra_threads = threads;
        }
        self
    }

    /// Patches per run when the user names none: tract runs the PCam networks fastest at
    /// batch 1 (3.0 ms per patch, 10.5 ms at any larger batch), ONNX Runtime gains from batches.
    pub fn default_batch(&self) -> usize {
        match self.kind {
            BackendKind::Auto | BackendKind::Tract | BackendKind::Int8 => 1,
            BackendKind::Ort => 32,
        }
    }
}

/// Compiles `model` for `input_shape` on the backend and device the options name.
pub fn create(model: &OnnxModel, input_shape: &[usize], opts: &BackendOptions) -> Result<Box<dyn Backend>> {
    let kind = opts.kind.resolve(model);
    if opts.kind == BackendKind::Auto {
        log::info!(
            "{}: backend auto: {kind} ({})",
            model.path.display(),
            if kind == BackendKind::Int8 { "a QDQ model" } else { "a float model" }
        );
    }
    match kind {
        BackendKind::Auto => unreachable!("resolved above"),
        BackendKind::Tract => {
            cpu_only("tract", opts)?;
            tract_backend(model, input_shape, opts.memory_budget)
        }
        BackendKind::Int8 => {
            cpu_only("the INT8 engine", opts)?;
            int8::create(model, input_shape, opts.memory_budget, opts.intra_threads.max(1))
        }
        #[cfg(feature = "ort")]
        BackendKind::Ort => Ok(Box::new(ort::OrtBackend::new(model, input_shape, opts)?)),
        #[cfg(not(feature = "ort"))]
        BackendKind::Ort => Err(Error::Invalid("this build has no ONNX Runtime backend (feature ort is off)".into())),
    }
}

/// A backend for a job of `items` independent runs (a volume's windows or patches) on
/// `threads` threads, and how many of the runs go side by side, one thread each: as
/// many as there are threads where the backend can run side by side (the INT8 engine,
/// tract) and there are several items; otherwise one at a time, the threads inside
/// each run (ONNX Runtime's pool, or the INT8 engine's for a single item).
pub fn create_side_by_side(
    model: &OnnxModel,
    input_shape: &[usize],
    opts: &BackendOptions,
    threads: usize,
    items: usize,
) -> Result<(Box<dyn Backend>, usize)> {
    let threads = threads.max(1);
    let side = threads.min(items);
    let mut opts = opts.clone().with_threads(threads);
    if side <= 1 {
        opts = opts.with_intra_threads(threads);
    }
    let net = create(model, input_shape, &opts)?;
    let side = if net.parallel_runs() { side.max(1) } else { 1 };
    Ok((net, side))
}

/// Like [`create`], for a model with several inputs (`shapes` in the graph's order):
/// tract and ONNX Runtime run them; the INT8 engine compiles models with one input.
pub fn create_with_inputs(model: &OnnxModel, shapes: &[Vec<usize>], opts: &BackendOptions) -> Result<Box<dyn Backend>> {
    if let [one] = shapes {
        return create(model, one, opts);
    }
    match opts.kind.resolve(model) {
        #[cfg(feature = "tract")]
        BackendKind::Tract => {
            cpu_only("tract", opts)?;
            Ok(Box::new(TractBackend::with_inputs(model, shapes, opts.memory_budget)?))
        }
        #[cfg(feature = "ort")]
        BackendKind::Ort => Ok(Box::new(ort::OrtBackend::with_inputs(model, shapes, opts)?)),
        kind => Err(Error::unsupported(format!(
            "{}: {} inputs; the {kind} backend runs models with one (--backend tract or ort run several)",
            model.path.display(),
            shapes.len()
        ))),
    }
}

/// Every input of the shape the backend was compiled for, and as many as it has.
#[cfg(any(feature = "tract", feature = "ort"))]
pub(crate) fn check_input_shapes(inputs: &[ArrayD<f32>], shapes: &[Vec<usize>]) -> Result<()> {
    if inputs.len() != shapes.len() {
        return Err(Error::Invalid(format!("{} inputs given, the model takes {}", inputs.len(), shapes.len())));
    }
    for (x, s) in inputs.iter().zip(shapes) {
        if x.shape() != s.as_slice() {
            return Err(Error::WrongShape { got: x.shape().to_vec(), expected: s.clone() });
        }
    }
    Ok(())
}

/// A CPU backend asked for CUDA: an error when the device is strict, else a warning.
fn cpu_only(what: &str, opts: &BackendOptions) -> Result<()> {
    match opts.device {
        Device::Cpu | Device::Auto => Ok(()),
        Device::Cuda(_) if opts.strict_device => Err(Error::DeviceUnavailable {
            device: opts.device.to_string(),
            reason: format!("{what} runs on the CPU only; use --backend ort"),
        }),
        Device::Cuda(_) => {
            log::warn!("{what} runs on the CPU only; --device {} ignored (use --backend ort for CUDA)", opts.device);
            Ok(())
        }
    }
}

/// Weights and input from their declared sizes, before any backend allocates them.
/// Returns the weights' bytes, which the tract backend adds to the activations.
/// tract on `model`, or, in a build without tract (engine only), an error saying so.
pub(crate) fn tract_backend(model: &OnnxModel, input_shape: &[usize], budget: u64) -> Result<Box<dyn Backend>> {
    #[cfg(feature = "tract")]
    return Ok(Box::new(TractBackend::with_budget(model, input_shape, budget)?));
    #[cfg(not(feature = "tract"))]
    {
        let _ = (input_shape, budget);
        Err(Error::UnsupportedModel {
            path: model.path.clone(),
            reason: "this edgemed-run was built without tract (engine only): it runs QDQ models the INT8 engine covers (--backend int8)"
                .into(),
        })
    }
}

pub fn check_declared_sizes(model: &OnnxModel, input_shape: &[usize], budget: u64) -> Result<u64> {
    check_declared_input_sizes(model, &[input_shape.to_vec()], budget)
}

/// [`check_declared_sizes`] for every input of a model (their sizes add up).
pub fn check_declared_input_sizes(model: &OnnxModel, shapes: &[Vec<usize>], budget: u64) -> Result<u64> {
    let weights = crate::budget::declared_weight_bytes(model.graph());
    crate::budget::check(|| format!("{}: the weights", model.path.display()), weights, budget)?;
    let input = shapes.iter().map(|s| s.iter().fold(4u64, |acc, &d| acc.saturating_mul(d as u64))).fold(0u64, u64::saturating_add);
    let shown = if let [one] = shapes { format!("{one:?}") } else { format!("{shapes:?}") };
    crate::budget::check(|| format!("{}: the input {shown}", model.path.display()), input, budget)?;
    crate::budget::check(|| format!("{}: weights and input together", model.path.display()), weights.saturating_add(input), budget)?;
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_backends() {
        assert_eq!("cuda:1".parse::<Device>().unwrap(), Device::Cuda(1));
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("auto".parse::<Device>().unwrap(), Device::Auto);
        assert!("cuda:x".parse::<Device>().is_err());
        assert!("tpu".parse::<Device>().is_err());
        assert_eq!("ort".parse::<BackendKind>().unwrap(), BackendKind::Ort);
        assert_eq!("auto".parse::<BackendKind>().unwrap(), BackendKind::Auto);
        assert!("tvm".parse::<BackendKind>().is_err());
        assert_eq!("extended".parse::<OptLevel>().unwrap(), OptLevel::Extended);
    }

    /// Callers running batches side by side (classify, heatmap) give their threads to
    /// ONNX Runtime's pool only; callers running one item at a time (the volume
    /// commands) to the INT8 engine too; a count already asked for stays.
    #[test]
    fn threads_reach_the_int8_engine_only_for_one_run_at_a_time() {
        let int8 = BackendOptions { kind: BackendKind::Int8, ..Default::default() };
        assert_eq!(int8.clone().with_threads(4).intra_threads, 0);
        assert_eq!(int8.clone().with_intra_threads(4).intra_threads, 4);
        let asked = BackendOptions { intra_threads: 2, ..int8 };
        assert_eq!(asked.clone().with_threads(4).intra_threads, 2);
        assert_eq!(asked.with_intra_threads(4).intra_threads, 2);
        let ort = BackendOptions { kind: BackendKind::Ort, ..Default::default() };
        assert_eq!(ort.clone().with_threads(4).intra_threads, 4);
        assert_eq!(ort.with_intra_threads(4).intra_threads, 4);
    }
}
