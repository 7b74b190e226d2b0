//! Latency and throughput of a compiled model: warm-up, timed runs, percentiles,
//! peak resident memory. Measurements for the `bench` subcommand, not tests.

use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ndarray::{ArrayD, IxDyn};

#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchStats {
    pub backend: String,
    pub device: String,
    pub batch: usize,
    pub iterations: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    /// Items (batch elements) per second at the median latency.
    pub throughput: f64,
    /// Peak resident set size of the process since the last [`reset_peak_rss`] (this
    /// row's, when the caller resets it before loading the backend), in MiB (Linux only).
    pub peak_rss_mib: Option<f64>,
}

/// The input shape after the batch dimension, which a benchmark needs fixed (image
/// patches or volume windows alike).
pub fn item_shape(model: &crate::model::OnnxModel) -> Result<Vec<usize>> {
    let input = model.inputs.first().ok_or_else(|| Error::Invalid("the model has no input".into()))?;
    input_item_shape(input)
}

/// [`item_shape`] for every input of the model, in the graph's order.
pub fn item_shapes(model: &crate::model::OnnxModel) -> Result<Vec<Vec<usize>>> {
    edgemed_onnx::ensure!(!model.inputs.is_empty(), Error::Invalid("the model has no input".into()));
    model.inputs.iter().map(input_item_shape).collect()
}

fn input_item_shape(input: &crate::model::TensorSpec) -> Result<Vec<usize>> {
    let dims = input.dims.as_ref().ok_or_else(|| Error::Invalid(format!("input {:?} has no declared shape", input.name)))?;
    edgemed_onnx::ensure!(dims.len() >= 2, Error::Invalid(format!("input {:?} has shape {dims:?}: expected [batch, ...]", input.name)));
    dims[1..]
        .iter()
        .map(|d| match d {
            crate::model::Dim::Fixed(n) if *n > 0 => Ok(*n),
            _ => Err(Error::Invalid(format!("input {:?} has shape {dims:?}: bench needs every size after the batch fixed", input.name))),
        })
        .collect()
}

/// Runs `warmup` untimed then `iterations` timed inferences on a fixed pseudo-random input.
pub fn bench(backend: &dyn Backend, warmup: usize, iterations: usize) -> Result<BenchStats> {
    bench_with_progress(backend, warmup, iterations, || {})
}

/// [`bench`], calling `tick` after every run (warm-up ones too), outside the timed part.
pub fn bench_with_progress(backend: &dyn Backend, warmup: usize, iterations: usize, mut tick: impl FnMut()) -> Result<BenchStats> {
    edgemed_onnx::ensure!(iterations >= 1, Error::Invalid("at least one timed run is needed".into()));
    let shapes = backend.input_shapes();
    let shape = shapes[0].clone();
    edgemed_onnx::ensure!(shape.first().is_some_and(|b| *b >= 1), Error::Invalid("batch size must be at least 1".into()));
    let inputs: Vec<ArrayD<f32>> =
        shapes.iter().map(|s| ArrayD::from_shape_vec(IxDyn(s), bench_input(s.iter().product())).expect("shape matches length")).collect();
    for _ in 0..warmup {
        backend.run_inputs(inputs.clone())?;
        tick();
    }
    let mut times: Vec<Duration> = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let x = inputs.clone();
        let t = Instant::now();
        backend.run_inputs(x)?;
        times.push(t.elapsed());
        tick();
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let pct = |q: f64| ms(times[((times.len() - 1) as f64 * q).round() as usize]);
    let mean_ms = times.iter().map(|d| ms(*d)).sum::<f64>() / times.len() as f64;
    let p50 = pct(0.5);
    Ok(BenchStats {
        backend: backend.name().to_string(),
        device: backend.device(),
        batch: shape[0],
        iterations: times.len(),
        p50_ms: p50,
        p90_ms: pct(0.9),
        p99_ms: pct(0.99),
        mean_ms,
        throughput: shape[0] as f64 / (p50 / 1e3),
        peak_rss_mib: peak_rss_mib(),
    })
}

/// The benchmark input: `n` deterministic values in [-1, 1). The numbers do not matter
/// for timing, but zeros could hit shortcuts that real patches never take.
pub fn bench_input(n: usize) -> Vec<f32> {
    let mut noise = UniformNoise::from_seed(1);
    (0..n).map(|_| 2.0 * noise.next_unit() - 1.0).collect()
}

/// A seeded xorshift64 stream of uniform numbers in [0, 1): reproducible inputs for
/// benchmarks and for the converter's `--random` verification, without a data file.
pub struct UniformNoise {
    state: u64,
}

impl UniformNoise {
    pub fn from_seed(seed: u64) -> Self {
        UniformNoise { state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1 }
    }

    pub fn next_unit(&mut self) -> f32 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Restarts the peak-memory count (VmHWM) from the current resident size, so the next
/// [`peak_rss_mib`] is the peak since now (Linux: writing 5 to /proc/self/clear_refs).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// VmHWM from /proc/self/status.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
