//! Comparing an FP32 model with its INT8 version: logit SQNR per output, top-1
//! agreement, and for rotation-equivariant models the 90-degree invariance error of
//! both, so quantization that breaks equivariance shows up as a number.

use anyhow::{ensure, Context, Result};
use edgemed_runtime::backend::{Backend, TractBackend};
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::ndarray::{ArrayD, Axis, Dimension, IxDyn};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Verification {
    pub inputs: usize,
    /// One per model output, in the graph's output order.
    pub outputs: Vec<String>,
    pub sqnr_db: Vec<f64>,
    /// Over the first output (the classifier's scores): `top1_agreeing` of `top1_compared` rows.
    pub top1_agreement: f64,
    pub top1_agreeing: usize,
    pub top1_compared: usize,
    /// max |f(rot90 x) - f(x)| / max |f(x)| over inputs and quarter turns, FP32 then INT8.
    pub rotation_error: Option<(f64, f64)>,
}

pub fn sqnr_db(reference: &[f32], test: &[f32]) -> f64 {
    let signal: f64 = reference.iter().map(|y| (*y as f64).powi(2)).sum();
    let noise: f64 = reference.iter().zip(test).map(|(y, q)| ((y - q) as f64).powi(2)).sum();
    10.0 * (signal / noise.max(1e-30)).log10()
}

fn argmax_rows(a: &ArrayD<f32>) -> Vec<usize> {
    a.axis_iter(Axis(0)).map(|r| r.iter().enumerate().fold((0, f32::MIN), |b, (i, x)| if *x > b.1 { (i, *x) } else { b }).0).collect()
}

/// Rotates the two trailing axes by 90 degrees counter-clockwise (`np.rot90(x, 1, axes=(-2, -1))`).
pub fn rot90(x: &ArrayD<f32>) -> ArrayD<f32> {
    let s = x.shape().to_vec();
    let w = s[s.len() - 1];
    let mut out_shape = s.clone();
    out_shape.swap(s.len() - 2, s.len() - 1);
    ArrayD::from_shape_fn(IxDyn(&out_shape), |idx| {
        let mut src = idx.slice().to_vec();
        let (i, j) = (src[s.len() - 2], src[s.len() - 1]);
        src[s.len() - 2] = j;
        src[s.len() - 1] = w - 1 - i;
        x[IxDyn(&src)]
    })
}

/// Every output of the model for every input batch: `[batch][output]`; `done` after each batch.
fn run_all(m: &OnnxModel, inputs: &[ArrayD<f32>], done: &mut dyn FnMut()) -> Result<Vec<Vec<ArrayD<f32>>>> {
    let backend = TractBackend::new(m, inputs[0].shape())?;
    inputs
        .iter()
        .map(|x| {
            let y = backend.run(x.clone())?;
            done();
            Ok(y)
        })
        .collect()
}

fn first(all: Vec<Vec<ArrayD<f32>>>) -> Vec<ArrayD<f32>> {
    all.into_iter().map(|mut outs| outs.remove(0)).collect()
}

pub fn verify(fp32: &OnnxModel, int8: &OnnxModel, inputs: &[ArrayD<f32>], check_rotation: bool) -> Result<Verification> {
    verify_with_progress(fp32, int8, inputs, check_rotation, &mut || {})
}

/// How many model runs [`verify_with_progress`] makes (one per batch and model, twice with rotation).
pub fn model_runs(inputs: &[ArrayD<f32>], check_rotation: bool) -> usize {
    inputs.len() * if check_rotation { 4 } else { 2 }
}

/// [`verify`], calling `done` after each of its [`model_runs`] model runs.
pub fn verify_with_progress(
    fp32: &OnnxModel,
    int8: &OnnxModel,
    inputs: &[ArrayD<f32>],
    check_rotation: bool,
    done: &mut dyn FnMut(),
) -> Result<Verification> {
    ensure!(!inputs.is_empty(), "no inputs to verify with");
    let all_a = run_all(fp32, inputs, done).context("running the FP32 model")?;
    let all_b = run_all(int8, inputs, done).context("running the INT8 model")?;
    let n_out = all_a[0].len();
    ensure!(all_b[0].len() == n_out, "the models have different numbers of outputs ({} vs {})", n_out, all_b[0].len());
    let mut sqnr = Vec::with_capacity(n_out);
    for o in 0..n_out {
        let flat = |v: &[Vec<ArrayD<f32>>]| v.iter().flat_map(|outs| outs[o].iter().copied()).collect::<Vec<f32>>();
        let (fa, fb) = (flat(&all_a), flat(&all_b));
        ensure!(fa.len() == fb.len(), "output {o} differs in size between the models ({} vs {})", fa.len(), fb.len());
        sqnr.push(sqnr_db(&fa, &fb));
    }
    let (a, b) = (first(all_a), first(all_b));
    let (mut agree, mut total) = (0usize, 0usize);
    for (x, y) in a.iter().zip(&b) {
        for (p, q) in argmax_rows(x).into_iter().zip(argmax_rows(y)) {
            agree += (p == q) as usize;
            total += 1;
        }
    }
    let rotation_error = if check_rotation {
        let rotated: Vec<ArrayD<f32>> = inputs.iter().map(rot90).collect();
        let mut err = |m: &OnnxModel, base: &[ArrayD<f32>]| -> Result<f64> {
            let r = first(run_all(m, &rotated, done)?);
            let scale = base.iter().flat_map(|t| t.iter()).fold(0f32, |s, v| s.max(v.abs())) as f64;
            let worst =
                r.iter().zip(base).flat_map(|(p, q)| p.iter().zip(q.iter()).map(|(u, v)| (u - v).abs())).fold(0f32, f32::max) as f64;
            Ok(worst / scale.max(1e-30))
        };
        Some((err(fp32, &a)?, err(int8, &b)?))
    } else {
        None
    };
    Ok(Verification {
        inputs: inputs.len() * inputs[0].shape()[0],
        outputs: fp32.outputs.iter().map(|o| o.name.clone()).collect(),
        sqnr_db: sqnr,
        top1_agreement: agree as f64 / total.max(1) as f64,
        top1_agreeing: agree,
        top1_compared: total,
        rotation_error,
    })
}
