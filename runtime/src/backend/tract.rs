//! The tract backend: parses the protobuf with tract-onnx, fixes the input
//! shape, optimises once, then runs the plan for every batch.

use std::panic::{catch_unwind, AssertUnwindSafe};

use std::collections::HashMap;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::konst::Const;

use super::Backend;
use crate::error::{Error, Result};
use crate::model::OnnxModel;
use crate::ndarray::ArrayD;

pub struct TractBackend {
    plan: std::sync::Arc<TypedSimplePlan>,
    /// One per graph input, in order.
    input_shapes: Vec<Vec<usize>>,
    /// The model takes float16 (an FP16 export that kept half-precision inputs).
    input_f16: bool,
}

fn backend_err(e: impl std::fmt::Display) -> Error {
    Error::Backend { backend: "tract", reason: e.to_string() }
}

impl TractBackend {
    /// Compiles `model` for a concrete input shape (symbolic dims resolved by the caller),
    /// within the default memory budget.
    pub fn new(model: &OnnxModel, input_shape: &[usize]) -> Result<Self> {
        Self::with_budget(model, input_shape, crate::budget::DEFAULT_BUDGET)
    }

    /// As [`TractBackend::new`], refusing a model whose weights, input and peak live
    /// activations would take more than `budget` bytes (0: no limit).
    pub fn with_budget(model: &OnnxModel, input_shape: &[usize], budget: u64) -> Result<Self> {
        Self::with_inputs(model, &[input_shape.to_vec()], budget)
    }

    /// As [`TractBackend::with_budget`], for a model with one or several inputs (`shapes`
    /// in the graph's order).
    pub fn with_inputs(model: &OnnxModel, shapes: &[Vec<usize>], budget: u64) -> Result<Self> {
        let weights = super::check_declared_input_sizes(model, shapes, budget)?;
        let input_f16 = model.takes_float16();
        let fact = |s: &[usize]| -> InferenceFact {
            if input_f16 {
                f16::fact(s).into()
            } else {
                f32::fact(s).into()
            }
        };
        let input_shape = shapes.first().cloned().unwrap_or_default();
        let unsupported = |e: TractError| Error::UnsupportedModel { path: model.path.clone(), reason: format!("{e:#}") };
        // tract reports most problems as errors, but a malformed graph can trip an
        // internal assertion; a device must not die on a bad file, so turn that into an error.
        let built = catch_unwind(AssertUnwindSafe(|| -> TractResult<Result<std::sync::Arc<TypedSimplePlan>>> {
            let mut m = tract_model(&model.proto)?;
            for (i, s) in shapes.iter().enumerate() {
                m = m.with_input_fact(i, fact(s))?;
            }
            let typed = m.into_typed()?;
            // Every shape is known now and nothing large is allocated yet.
            if let Some(peak) = peak_activation_bytes(&typed)? {
                log::info!(
                    "{}: weights {} + peak activations {} at input {input_shape:?}",
                    model.path.display(),
                    crate::budget::mib(weights),
                    crate::budget::mib(peak)
                );
                let what = || format!("{}: weights and activations at input {input_shape:?}", model.path.display());
                if let Err(e) = crate::budget::check(what, weights.saturating_add(peak), budget) {
                    return Ok(Err(e));
                }
            }
            Ok(Ok(typed.into_optimized()?.into_runnable()?))
        }));
        let plan = match built {
            Ok(Ok(Ok(plan))) => plan,
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(e)) => return Err(unsupported(e)),
            Err(_) => {
                return Err(Error::UnsupportedModel { path: model.path.clone(), reason: "tract failed while compiling the graph".into() })
            }
        };
        Ok(TractBackend { plan, input_shapes: shapes.to_vec(), input_f16 })
    }
}

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn input_shape(&self) -> &[usize] {
        &self.input_shapes[0]
    }

    fn input_shapes(&self) -> Vec<Vec<usize>> {
        self.input_shapes.clone()
    }

    fn run(&self, input: ArrayD<f32>) -> Result<Vec<ArrayD<f32>>> {
        self.run_inputs(vec![input])
    }

    fn run_inputs(&self, inputs: Vec<ArrayD<f32>>) -> Result<Vec<ArrayD<f32>>> {
        super::check_input_shapes(&inputs, &self.input_shapes)?;
        let inputs: TVec<TValue> =
            inputs.into_iter().map(|x| if self.input_f16 { Tensor::from(x.mapv(f16::from_f32)) } else { Tensor::from(x) }.into()).collect();
        let outputs = catch_unwind(AssertUnwindSafe(|| self.plan.run(inputs)))
            .map_err(|_| backend_err("tract panicked while running the model"))?
            .map_err(|e| backend_err(format!("{e:#}")))?;
        outputs
            .into_iter()
            .map(|t| {
                let t = t.into_tensor().cast_to::<f32>().map_err(backend_err)?.into_owned();
                t.into_plain_array::<f32>().map_err(backend_err)
            })
            .collect()
    }
}

/// The model as tract's inference model. edgemed's protobuf types are its own (the base
/// layer links no tract), so the model crosses over as bytes. Exporters annotate
/// intermediate and output shapes with their own symbolic batch names; once the input
/// shape is pinned those would fail to unify, and tract infers every shape from the
/// input anyway, so value infos and output shapes are ignored.
pub fn tract_model(proto: &edgemed_onnx::pb::ModelProto) -> TractResult<InferenceModel> {
    use prost::Message;
    tract_onnx::onnx().with_ignore_value_info(true).with_ignore_output_shapes(true).model_for_read(&mut proto.encode_to_vec().as_slice())
}

/// Peak bytes of activations alive at once when `model` runs, constants excluded: each
/// tensor from the node that makes it to its last consumer, which is what tract's plan holds.
/// `None` when a shape is not concrete (then only the other checks apply).
pub fn peak_activation_bytes(model: &TypedModel) -> TractResult<Option<u64>> {
    let order = model.eval_order()?;
    let position: HashMap<usize, usize> = order.iter().enumerate().map(|(pos, &n)| (n, pos)).collect();
    let mut last_use: HashMap<OutletId, usize> = HashMap::new();
    for &n in &order {
        for input in &model.node(n).inputs {
            last_use.insert(*input, position[&n]);
        }
    }
    for o in model.output_outlets()? {
        last_use.insert(*o, usize::MAX);
    }
    let mut frees: Vec<u64> = vec![0; order.len()];
    let (mut live, mut peak) = (0u64, 0u64);
    for (pos, &n) in order.iter().enumerate() {
        let node = model.node(n);
        if node.op_as::<Const>().is_none() {
            for (slot, out) in node.outputs.iter().enumerate() {
                let Some(shape) = out.fact.shape.as_concrete() else { return Ok(None) };
                let bytes = shape.iter().fold(out.fact.datum_type.size_of() as u64, |acc, &d| acc.saturating_mul(d as u64));
                live = live.saturating_add(bytes);
                match last_use.get(&OutletId::new(n, slot)) {
                    Some(&p) if p != usize::MAX && p >= pos => frees[p] += bytes,
                    Some(_) => {}
                    None => frees[pos] += bytes, // unused output: freed at once
                }
            }
        }
        peak = peak.max(live);
        live -= frees[pos].min(live);
    }
    Ok(Some(peak))
}
