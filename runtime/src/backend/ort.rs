//! The ONNX Runtime backend (the `ort` crate with `load-dynamic`). The library
//! is loaded at run time, once per process, from `--ort-lib`, `ORT_DYLIB_PATH`
//! or the binary's folder; the `onnxruntime` pip wheel ships a CPU build, the
//! `onnxruntime-gpu` wheel a CUDA one. It is loaded with `ort::init_from`, which
//! returns an error: left to the environment variable alone, `ort` would panic at
//! its first call when the library is missing.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use half::f16;
use ort::ep::ExecutionProvider;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;
use ort::value::Tensor;

use super::{Backend, BackendOptions, Device, OptLevel};
use crate::error::{Error, Result};
use crate::model::OnnxModel;
use crate::ndarray::ArrayD;

/// The ONNX Runtime release this build speaks to (the `ort` crate's `api-31` feature); newer ones work too.
pub const ORT_VERSION: &str = "1.31";

const HOW_TO_GET: &str = "get it with `pip install onnxruntime==1.31.1` (CPU) or `pip install onnxruntime-gpu==1.31.1` (CUDA), \
then pass --ort-lib SITE-PACKAGES/onnxruntime/capi/ or set ORT_DYLIB_PATH, or copy the library next to the binary";

fn err(e: impl std::fmt::Display) -> Error {
    Error::Backend { backend: "ort", reason: e.to_string() }
}

fn is_library_name(name: &str) -> bool {
    // libonnxruntime.so, libonnxruntime.so.1, libonnxruntime.so.1.31.1, onnxruntime.dll, libonnxruntime.1.31.1.dylib;
    // not libonnxruntime_providers_cuda.so and the like.
    name == "onnxruntime.dll" || (name.starts_with("libonnxruntime.") && (name.contains(".so") || name.ends_with(".dylib")))
}

/// The library inside `dir`, preferring the plain name, then the longest versioned one.
fn library_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(is_library_name))
        .map(|e| e.path())
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.into_iter().next()
}

/// Where the library is: `explicit` (a file, or a folder holding it), else `ORT_DYLIB_PATH`,
/// else the executable's folder (or its `lib/`). A location that was named but holds no
/// library is an error of its own rather than a reason to look elsewhere.
pub fn find_library(explicit: Option<&Path>) -> Result<PathBuf> {
    let named = |p: &Path, how: &str| -> Result<PathBuf> {
        if p.is_dir() {
            library_in(p).ok_or_else(|| Error::OrtLibrary(format!("{how} {} holds no ONNX Runtime library; {HOW_TO_GET}", p.display())))
        } else if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(Error::OrtLibrary(format!("{how} {}: no such file or directory; {HOW_TO_GET}", p.display())))
        }
    };
    if let Some(p) = explicit {
        return named(p, "--ort-lib");
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return named(Path::new(&p), "ORT_DYLIB_PATH");
    }
    let exe_dir = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf));
    let dirs: Vec<PathBuf> = exe_dir.iter().flat_map(|d| [d.clone(), d.join("lib")]).collect();
    for d in &dirs {
        if let Some(lib) = library_in(d) {
            return Ok(lib);
        }
    }
    Err(Error::OrtLibrary(format!(
        "ONNX Runtime {ORT_VERSION} library not found (no --ort-lib, ORT_DYLIB_PATH unset, nothing in {}); {HOW_TO_GET}",
        dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(" or ")
    )))
}

struct Loaded {
    path: PathBuf,
    env: ort::environment::Environment,
}

static LOADED: Mutex<Option<Loaded>> = Mutex::new(None);

/// Loads the library (once per process) and returns the path it came from.
pub fn load(explicit: Option<&Path>) -> Result<PathBuf> {
    let mut loaded = LOADED.lock().map_err(|_| err("a thread panicked while loading ONNX Runtime"))?;
    if let Some(l) = loaded.as_ref() {
        if let Some(p) = explicit.filter(|p| find_library(Some(p)).ok().as_deref() != Some(l.path.as_path())) {
            log::warn!("ONNX Runtime is already loaded from {}; {} is not loaded again", l.path.display(), p.display());
        }
        return Ok(l.path.clone());
    }
    let path = find_library(explicit)?;
    let builder = ort::init_from(&path).map_err(|e| Error::OrtLibrary(format!("loading ONNX Runtime: {e}; {HOW_TO_GET}")))?;
    let env = builder.with_name("edgemed").build().map_err(err)?;
    log::info!("ONNX Runtime loaded from {} ({})", path.display(), ort::info());
    *loaded = Some(Loaded { path: path.clone(), env });
    Ok(path)
}

/// Whether the loaded library has the CUDA execution provider compiled in.
pub fn cuda_available(explicit: Option<&Path>) -> Result<bool> {
    load(explicit)?;
    ort::ep::CUDA::is_available().map_err(err)
}

pub struct OrtBackend {
    // `Session::run` takes `&mut self`; one run at a time, each parallel inside.
    session: Mutex<Session>,
    /// The graph's inputs, in order, and the shape each was set up for.
    input_names: Vec<String>,
    input_f16: bool,
    input_shapes: Vec<Vec<usize>>,
    device: String,
}

fn builder(opts: &BackendOptions) -> Result<SessionBuilder> {
    let loaded = LOADED.lock().map_err(|_| err("a thread panicked while loading ONNX Runtime"))?;
    let env = &loaded.as_ref().expect("load() ran first").env;
    let level = match opts.opt_level {
        OptLevel::Disable => GraphOptimizationLevel::Disable,
        OptLevel::Basic => GraphOptimizationLevel::Level1,
        OptLevel::Extended => GraphOptimizationLevel::Level2,
        OptLevel::All => GraphOptimizationLevel::All,
    };
    let mut b = Session::builder(env).map_err(err)?.with_optimization_level(level).map_err(err)?;
    if opts.intra_threads > 0 {
        b = b.with_intra_threads(opts.intra_threads).map_err(err)?;
    }
    Ok(b)
}

impl OrtBackend {
    pub fn new(model: &OnnxModel, input_shape: &[usize], opts: &BackendOptions) -> Result<Self> {
        Self::with_inputs(model, &[input_shape.to_vec()], opts)
    }

    /// A model with one or several inputs (`shapes` in the graph's order).
    pub fn with_inputs(model: &OnnxModel, shapes: &[Vec<usize>], opts: &BackendOptions) -> Result<Self> {
        // ONNX Runtime plans its own memory; what is declared is checked before it sees the model.
        super::check_declared_input_sizes(model, shapes, opts.memory_budget)?;
        let lib = load(opts.ort_library.as_deref())?;
        let unavailable = |device: Device, reason: String| Error::DeviceUnavailable { device: device.to_string(), reason };
        let cuda = match opts.device {
            Device::Cpu => None,
            Device::Auto => cuda_available(None)?.then_some(0),
            Device::Cuda(id) if cuda_available(None)? => Some(id),
            Device::Cuda(_) => {
                let reason = format!("the ONNX Runtime library {} has no CUDA provider (install onnxruntime-gpu)", lib.display());
                if opts.strict_device {
                    return Err(unavailable(opts.device, reason));
                }
                log::warn!("CUDA was requested but is not available: {reason}; running on the CPU instead");
                None
            }
        };
        let bytes = prost::Message::encode_to_vec(&model.proto);
        let unsupported = |e: ort::Error| Error::UnsupportedModel { path: model.path.clone(), reason: e.to_string() };
        let (session, device) = match cuda {
            Some(id) => {
                let ep = ort::ep::CUDA::default().with_device_id(id as i32).build().error_on_failure();
                let attempt =
                    builder(opts)?.with_execution_providers([ep]).map_err(err).and_then(|mut b| b.commit_from_memory(&bytes).map_err(err));
                match attempt {
                    Ok(s) => (s, format!("cuda:{id}")),
                    Err(e) if opts.strict_device => return Err(unavailable(Device::Cuda(id), e.to_string())),
                    Err(e) => {
                        log::warn!("CUDA device {id} could not be used ({e}); running on the CPU instead");
                        (builder(opts)?.commit_from_memory(&bytes).map_err(unsupported)?, "cpu".into())
                    }
                }
            }
            None => (builder(opts)?.commit_from_memory(&bytes).map_err(unsupported)?, "cpu".into()),
        };
        let input_names: Vec<String> = session.inputs().iter().map(|i| i.name().to_string()).collect();
        if input_names.len() != shapes.len() {
            return Err(Error::UnsupportedModel {
                path: model.path.clone(),
                reason: format!("{} inputs, {} shapes given", input_names.len(), shapes.len()),
            });
        }
        let input_f16 = model.takes_float16();
        Ok(OrtBackend { input_names, session: Mutex::new(session), input_f16, input_shapes: shapes.to_vec(), device })
    }
}

impl Backend for OrtBackend {
    fn name(&self) -> &'static str {
        "ort"
    }

    fn device(&self) -> String {
        self.device.clone()
    }

    fn input_shape(&self) -> &[usize] {
        &self.input_shapes[0]
    }

    fn input_shapes(&self) -> Vec<Vec<usize>> {
        self.input_shapes.clone()
    }

    fn parallel_runs(&self) -> bool {
        false
    }

    fn run(&self, input: ArrayD<f32>) -> Result<Vec<ArrayD<f32>>> {
        self.run_inputs(vec![input])
    }

    fn run_inputs(&self, inputs: Vec<ArrayD<f32>>) -> Result<Vec<ArrayD<f32>>> {
        super::check_input_shapes(&inputs, &self.input_shapes)?;
        let mut values = Vec::with_capacity(inputs.len());
        for (name, x) in self.input_names.iter().zip(inputs) {
            let value = if self.input_f16 {
                Tensor::from_array(x.mapv(f16::from_f32)).map_err(err)?.into_dyn()
            } else {
                Tensor::from_array(x).map_err(err)?.into_dyn()
            };
            values.push((name.as_str(), value));
        }
        let mut session = self.session.lock().map_err(|_| err("a thread panicked while running the model"))?;
        let outputs = session.run(values).map_err(err)?;
        outputs
            .iter()
            .map(|(name, v)| {
                if let Ok(a) = v.try_extract_array::<f32>() {
                    Ok(a.to_owned())
                } else if let Ok(a) = v.try_extract_array::<f16>() {
                    Ok(a.mapv(f16::to_f32))
                } else {
                    Err(err(format!("output {name} is of type {}, expected float32 or float16", v.dtype())))
                }
            })
            .collect()
    }
}
