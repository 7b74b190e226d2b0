//! Activation ranges measured on real inputs: the FP32 graph runs in tract with
//! every tensor of interest made an output; min/max or a percentile per tensor.

use std::collections::HashMap;

use anyhow::{Context, Result};
use edgemed_runtime::ndarray::ArrayD;
use edgemed_runtime::tract_onnx::prelude::*;

use crate::graph::Graph;
use crate::quantize::Range;

/// Values kept per tensor for percentiles (strided sample), bounding memory.
const SAMPLE_CAP: usize = 1 << 20;

/// Ranges of `values` over `inputs`; `percentile` (e.g. 99.99) clips outliers, `None` is min/max.
pub fn calibrate(g: &Graph, values: &[String], inputs: &[ArrayD<f32>], percentile: Option<f32>) -> Result<HashMap<String, Range>> {
    let first = inputs.first().context("no calibration inputs")?;
    if let Some(p) = percentile.filter(|p| !(p.is_finite() && *p > 0.0 && *p <= 100.0)) {
        anyhow::bail!("percentile {p}: give a percentile in (0, 100]");
    }
    let mut model = edgemed_runtime::backend::tract::tract_model(&g.model)?;
    model.select_outputs_by_name(values)?;
    let plan = model.with_input_fact(0, f32::fact(first.shape()).into())?.into_optimized()?.into_runnable()?;
    let mut samples: Vec<Vec<f32>> = vec![Vec::new(); values.len()];
    let mut ranges: Vec<Range> = vec![Range { lo: f32::MAX, hi: f32::MIN }; values.len()];
    for x in inputs {
        let outs = plan.run(tvec!(Tensor::from(x.clone()).into()))?;
        for (k, o) in outs.iter().enumerate() {
            let t = o.cast_to::<f32>()?;
            let view = t.to_plain_array_view::<f32>()?;
            for &e in view.iter() {
                ranges[k].lo = ranges[k].lo.min(e);
                ranges[k].hi = ranges[k].hi.max(e);
            }
            if percentile.is_some() {
                let stride = (view.len() * inputs.len() / SAMPLE_CAP).max(1);
                samples[k].extend(view.iter().step_by(stride));
            }
        }
    }
    if let Some(p) = percentile {
        for (k, s) in samples.iter_mut().enumerate() {
            s.sort_by(f32::total_cmp);
            // q in [0, 1]: an index in the sample (an empty one keeps min/max).
            if s.is_empty() {
                continue;
            }
            let at = |q: f32| s[((s.len() - 1) as f32 * q.clamp(0.0, 1.0)).round() as usize];
            ranges[k] = Range { lo: at(1.0 - p / 100.0), hi: at(p / 100.0) };
        }
    }
    Ok(values.iter().cloned().zip(ranges).collect())
}
