//! BagNet-style local prediction maps, 2-D and 3-D. A classifier that ends in global average
//! pooling followed by a linear layer computes W . mean(x) + b = mean(W . x + b):
//! swapping the two gives a map of local logits whose mean is the original output.
//! The rewrite turns pooling -> (Flatten | Reshape | Squeeze | Q/DQ)* -> Gemm | MatMul
//! (+ Add) into one 1x1 (1x1x1) convolution on the pooled tensor, so everything before the
//! pooling (the equivariant model's circular mask and group pooling included) is
//! kept as it was. In INT8 models the linear layer already runs in float on
//! dequantized weights; the quantize/dequantize pair of the pooled vector has no
//! meaning per location and is dropped (the mean of the map then differs from the
//! INT8 logits by that pair's rounding, at most half a step times the weights' row sums).

use anyhow::{bail, ensure, Context, Result};
use edgemed_onnx::pb;
use pb::tensor_proto::DataType;

use crate::graph::{attr_f, attr_i, attr_ints, Array, Graph};

#[derive(Debug, Clone)]
pub struct Report {
    /// The pooled feature tensor the map is computed on.
    pub features: String,
    pub output: String,
    pub classes: usize,
    /// Nodes replaced (pooling, reshapes, dropped Q/DQ, the linear layer).
    pub removed: Vec<String>,
    pub dropped_qdq: usize,
}

/// Input `k` of a node, or an error naming the node (fuzzed models have nodes with
/// fewer inputs than their operator takes; indexing would panic).
fn input(n: &pb::NodeProto, k: usize) -> Result<&str> {
    n.input.get(k).map(String::as_str).with_context(|| format!("{}: {} without input {k}", n.name, n.op_type))
}

/// Float value of a constant, or of DequantizeLinear applied to constants.
fn weight_value(g: &Graph, name: &str) -> Result<Array> {
    if let Some(a) = g.constant(name) {
        return Ok(a);
    }
    let n = g.producer(name).map(|i| &g.nodes()[i]).with_context(|| format!("{name} is not a constant"))?;
    ensure!(n.op_type == "DequantizeLinear", "{name} is computed by {}, not a constant or a dequantized constant", n.op_type);
    let q = g.initializer(input(n, 0)?).with_context(|| format!("{}: quantized weights are not an initializer", n.name))?;
    let q = edgemed_onnx::tensor::decode(q).map_err(|e| anyhow::anyhow!("{}: {e}", n.name))?;
    ensure!(
        matches!(q.data_type, DataType::Int8 | DataType::Uint8),
        "{}: quantized weights of type {:?} are not supported",
        n.name,
        q.data_type
    );
    let (shape, values) = (q.shape, q.values.to_f32());
    let scale = g.constant(input(n, 1)?).with_context(|| format!("{}: scale is not a constant", n.name))?;
    let zero = match n.input.get(2).filter(|z| !z.is_empty()) {
        Some(z) => weight_value(g, z).or_else(|_| zero_point(g, z))?.data,
        None => vec![0.0; scale.len()],
    };
    let axis = attr_i(n, "axis", 1).rem_euclid(shape.len().max(1) as i64) as usize;
    let inner: usize = shape[axis + 1..].iter().product();
    let data = values
        .iter()
        .enumerate()
        .map(|(k, v)| {
            let c = if scale.len() == 1 { 0 } else { (k / inner) % shape[axis] };
            (v - zero[c.min(zero.len() - 1)]) * scale.data[c]
        })
        .collect();
    Ok(Array::new(shape, data))
}

fn zero_point(g: &Graph, name: &str) -> Result<Array> {
    let t = g.initializer(name).with_context(|| format!("zero point {name} is not an initializer"))?;
    let v = edgemed_onnx::tensor::decode(t).map_err(|e| anyhow::anyhow!("zero point {name}: {e}"))?.values.to_f32();
    Ok(Array::new(vec![v.len()], v))
}

fn single_consumer(g: &Graph, value: &str) -> bool {
    g.single_use(value) && !g.is_graph_output(value)
}

/// The spatial rank (2 or 3) of the features a ReduceMean averages when it averages
/// exactly axes 2, 3 (2-D) or 2, 3, 4 (3-D); `None` for any other reduction.
/// Negative axes are read against the rank the axes imply (4 or 5).
fn spatial_mean_rank(g: &Graph, n: &pb::NodeProto) -> Option<usize> {
    [2usize, 3].into_iter().find(|&d| is_spatial_mean(g, n, d as i64 + 2))
}

/// Whether a ReduceMean averages exactly the spatial axes 2.. of a `rank`-D tensor.
fn is_spatial_mean(g: &Graph, n: &pb::NodeProto, rank: i64) -> bool {
    let axes: Option<Vec<i64>> = attr_ints(n, "axes").or_else(|| {
        n.input.get(1).filter(|a| !a.is_empty()).and_then(|a| g.eval_constant(a, 4)).map(|a| a.data.iter().map(|v| *v as i64).collect())
    });
    let mut axes: Vec<i64> = match axes {
        Some(a) => a.into_iter().map(|x| if x < 0 { x + rank } else { x }).collect(),
        None => return false,
    };
    axes.sort();
    axes == (2..rank).collect::<Vec<_>>()
}

/// The spatial rank of the tensor a GlobalAveragePool reads: from its declared
/// shape when the graph has one, else from the kernel of the nearest convolution
/// upstream (its weight is [out, in, k...]), else from the graph's first input.
fn pooled_rank(g: &Graph, value: &str) -> Result<usize> {
    let rank_of = |v: &pb::ValueInfoProto| match v.r#type.as_ref()?.value.as_ref()? {
        pb::type_proto::Value::TensorType(t) => t.shape.as_ref().map(|s| s.dim.len()),
        _ => None,
    };
    let declared = g.g().value_info.iter().chain(&g.g().output).find(|v| v.name == value).and_then(rank_of);
    let mut rank = declared;
    let mut v = value.to_string();
    // Bounded walk along first inputs (graphs are acyclic; the bound only caps the work).
    for _ in 0..10_000 {
        if rank.is_some() {
            break;
        }
        let Some(i) = g.producer(&v) else { break };
        let n = &g.nodes()[i];
        // A malformed node (a Conv without its weight, a node without inputs) ends the
        // walk (found by fuzzing: indexing panicked; kept in fuzz/regressions/converter_passes).
        if n.op_type == "Conv" {
            rank = n.input.get(1).and_then(|w| weight_value(g, w).ok()).map(|w| w.shape.len());
        }
        let Some(first) = n.input.first() else { break };
        v = first.clone();
    }
    let rank = rank.or_else(|| g.g().input.first().and_then(rank_of));
    match rank {
        Some(r @ 4..=5) => Ok(r - 2),
        Some(r) => bail!("global pooling of a {r}-D tensor: a local map needs 2-D or 3-D features"),
        None => bail!("cannot tell the rank of {value}, the pooled features"),
    }
}

/// Rewrites the graph's first output into a local logit map `[N, K, h, w]`.
pub fn to_local_map(g: &mut Graph) -> Result<Report> {
    let out = g.g().output.first().context("the model has no outputs")?.name.clone();
    let head_idx = g.producer(&out).with_context(|| format!("output {out} is not computed by a node"))?;
    let head = g.nodes()[head_idx].clone();
    // The linear layer: Gemm, MatMul, or MatMul + Add (bias).
    let (linear, bias_node, weight_kc, bias) = match head.op_type.as_str() {
        "Gemm" => {
            ensure!(attr_i(&head, "transA", 0) == 0, "{}: Gemm with transA is not supported", head.name);
            let w = weight_value(g, input(&head, 1)?)?;
            ensure!(w.shape.len() == 2, "{}: weight is not a matrix", head.name);
            let alpha = attr_f(&head, "alpha", 1.0);
            let beta = attr_f(&head, "beta", 1.0);
            let wkc = if attr_i(&head, "transB", 0) == 1 { w } else { transpose(&w) };
            let k = wkc.shape[0];
            let wkc = Array::new(wkc.shape.clone(), wkc.data.iter().map(|v| v * alpha).collect());
            let b = match head.input.get(2).filter(|b| !b.is_empty()) {
                Some(b) => broadcast_bias(&weight_value(g, b)?, k, &head.name)?.into_iter().map(|v| v * beta).collect(),
                None => vec![0.0; k],
            };
            (head.clone(), None, wkc, b)
        }
        "MatMul" | "Add" => {
            let (mm, add) = if head.op_type == "Add" {
                let mm_out = head.input.iter().find(|i| g.producer(i).is_some_and(|p| g.nodes()[p].op_type == "MatMul")).cloned();
                let mm_out = mm_out.with_context(|| format!("{}: output is an Add without a MatMul", head.name))?;
                (g.nodes()[g.producer(&mm_out).unwrap()].clone(), Some(head.clone()))
            } else {
                (head.clone(), None)
            };
            let w = weight_value(g, input(&mm, 1)?)?;
            ensure!(w.shape.len() == 2, "{}: weight is not a matrix", mm.name);
            let wkc = transpose(&w);
            let k = wkc.shape[0];
            let b = match &add {
                Some(a) => {
                    let bname =
                        a.input.iter().find(|i| **i != mm.output[0]).with_context(|| format!("{}: adds the product to itself", a.name))?;
                    broadcast_bias(&weight_value(g, bname)?, k, &a.name)?
                }
                None => vec![0.0; k],
            };
            (mm, add, wkc, b)
        }
        other => bail!("output {out} is computed by {other}; a local map needs global pooling followed by Gemm or MatMul"),
    };
    let (k, c) = (weight_kc.shape[0], weight_kc.shape[1]);
    // Walk back from the linear layer's input to the pooling.
    let mut removed = vec![linear.name.clone()];
    if let Some(a) = &bias_node {
        removed.push(a.name.clone());
    }
    let mut value = input(&linear, 0)?.to_string();
    let mut chain: Vec<usize> = Vec::new();
    let mut dropped_qdq = 0;
    let (pool, spatial) = loop {
        ensure!(single_consumer(g, &value), "{value} feeds more than the classifier; cannot rewrite it");
        let i = g.producer(&value).with_context(|| format!("{value} is a graph input: no pooling before the classifier"))?;
        let n = &g.nodes()[i];
        match n.op_type.as_str() {
            "GlobalAveragePool" => break (i, None),
            "ReduceMean" => match spatial_mean_rank(g, n) {
                Some(d) => break (i, Some(d)),
                None => bail!("{}: ReduceMean over other axes than the spatial ones (2, 3 or 2, 3, 4)", n.name),
            },
            "Flatten" | "Reshape" | "Squeeze" | "Identity" => {}
            "QuantizeLinear" | "DequantizeLinear" => dropped_qdq += 1,
            other => bail!(
                "{}: {other} between the pooling and the classifier is not supported (expected Flatten, Reshape, Squeeze or Q/DQ)",
                n.name
            ),
        }
        chain.push(i);
        value = input(n, 0)?.to_string();
    };
    let features = input(&g.nodes()[pool], 0)?.to_string();
    let spatial = match spatial {
        Some(d) => d,
        None => pooled_rank(g, &features)?,
    };
    removed.push(g.nodes()[pool].name.clone());
    removed.extend(chain.iter().map(|i| g.nodes()[*i].name.clone()));
    // The 1x1 convolution replaces everything from the pooling to the output.
    let wname = g.fresh_name(&format!("{}.local_map.weight", linear.name));
    let bname = g.fresh_name(&format!("{}.local_map.bias", linear.name));
    g.set_initializer(&wname, &Array::new([vec![k, c], vec![1; spatial]].concat(), weight_kc.data.clone()));
    g.set_initializer(&bname, &Array::new(vec![k], bias));
    let map_name = g.fresh_name(&format!("{out}_map"));
    let conv = pb::NodeProto {
        name: g.fresh_name(&format!("{}.local_map", linear.name)),
        op_type: "Conv".into(),
        input: vec![features.clone(), wname, bname],
        output: vec![map_name.clone()],
        attribute: vec![pb::AttributeProto {
            name: "kernel_shape".into(),
            r#type: pb::attribute_proto::AttributeType::Ints as i32,
            ints: vec![1; spatial],
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut doomed: Vec<usize> = chain;
    doomed.push(pool);
    doomed.push(g.producer(&linear.output[0]).expect("linear node"));
    if let Some(a) = &bias_node {
        doomed.push(g.producer(&a.output[0]).expect("bias node"));
    }
    // The new node goes last (indices above stay valid) and the output moves to it
    // before the old nodes go, or pruning would take the whole network with them.
    g.g_mut().node.push(conv);
    let elem = DataType::Float as i32;
    let output = &mut g.g_mut().output[0];
    output.name = map_name.clone();
    output.r#type = Some(pb::TypeProto {
        value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor { elem_type: elem, shape: None })),
        ..Default::default()
    });
    g.g_mut().value_info.retain(|v| v.name != out);
    g.remove_nodes(doomed);
    g.sort()?;
    g.model.metadata_props.retain(|e| e.key != "edgemed.local_map");
    g.model.metadata_props.push(pb::StringStringEntryProto { key: "edgemed.local_map".into(), value: "true".into() });
    Ok(Report { features, output: map_name, classes: k, removed, dropped_qdq })
}

fn transpose(w: &Array) -> Array {
    let (r, c) = (w.shape[0], w.shape[1]);
    Array::new(vec![c, r], (0..c * r).map(|i| w.data[(i % r) * c + i / r]).collect())
}

fn broadcast_bias(b: &Array, k: usize, node: &str) -> Result<Vec<f32>> {
    match b.len() {
        1 => Ok(vec![b.data[0]; k]),
        n if n == k => Ok(b.data.clone()),
        n => bail!("{node}: bias of {n} values for {k} classes"),
    }
}
