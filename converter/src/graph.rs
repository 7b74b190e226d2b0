//! The converter's view of an ONNX model: the prost `ModelProto` itself, plus
//! lookups (producer and consumers of a value, constant tensors from initializers or
//! `Constant` nodes) and small edits. Passes change only what they rewrite, so a
//! model with no applicable pattern round-trips unchanged.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use edgemed_onnx::pb;
use pb::tensor_proto::DataType;
use prost::Message;

/// A float tensor taken out of the graph (row-major): the models crate's tensor type.
pub use edgemed_models::weights::Tensor as Array;

pub struct Graph {
    pub model: pb::ModelProto,
}

/// Inputs an operator requires (ONNX operator specs), for the operators whose inputs
/// the passes read by position.
const MIN_INPUTS: &[(&str, usize)] = &[
    ("Conv", 2),
    ("ConvTranspose", 2),
    ("Gemm", 2),
    ("MatMul", 2),
    ("BatchNormalization", 5),
    ("InstanceNormalization", 3),
    ("Add", 2),
    ("Sub", 2),
    ("Mul", 2),
    ("Div", 2),
    ("Min", 1),
    ("Max", 1),
    ("PRelu", 2),
    ("QuantizeLinear", 2),
    ("DequantizeLinear", 2),
    ("Reshape", 1),
    ("Relu", 1),
    ("LeakyRelu", 1),
    ("Clip", 1),
    ("Slice", 1),
    ("GlobalAveragePool", 1),
    ("ReduceMean", 1),
    ("ReduceMax", 1),
    ("Flatten", 1),
    ("Squeeze", 1),
    ("Unsqueeze", 1),
    ("Identity", 1),
    ("Concat", 1),
];

impl Graph {
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_bytes(&bytes).with_context(|| format!("{}: not a valid ONNX model", path.display()))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let model = pb::ModelProto::decode(bytes).context("corrupt or truncated protobuf")?;
        let g = match &model.graph {
            Some(g) if !g.node.is_empty() => g,
            _ => bail!("the model has no graph or an empty one"),
        };
        // ONNX graphs are in single-assignment form; the passes find layers by the value
        // they write, so a value written twice (or a node overwriting an input or weight)
        // is refused here rather than confusing them later.
        let mut written: std::collections::HashSet<&str> = g.input.iter().map(|v| v.name.as_str()).collect();
        written.extend(g.initializer.iter().map(|t| t.name.as_str()));
        for n in &g.node {
            // The passes read a node's first output and the inputs its operator requires;
            // a node without them (a corrupt or hostile file; fuzzing found several) is
            // refused here once, rather than indexed out of range in some pass.
            if n.output.first().is_none_or(|o| o.is_empty()) {
                bail!("node {:?} ({}) writes no value: not a valid ONNX graph", n.name, n.op_type);
            }
            if let Some((_, need)) = MIN_INPUTS.iter().find(|(op, _)| *op == n.op_type) {
                let given = n.input.iter().take(*need).filter(|i| !i.is_empty()).count();
                if given < *need {
                    bail!(
                        "node {:?} ({}) has {given} of the {need} inputs its operator requires: not a valid ONNX graph",
                        n.name,
                        n.op_type
                    );
                }
            }
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                if !written.insert(o.as_str()) {
                    bail!("value {o:?} is written twice (node {:?}, {}): not a valid ONNX graph", n.name, n.op_type);
                }
            }
        }
        Ok(Graph { model })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.model.encode_to_vec()
    }

    pub fn g(&self) -> &pb::GraphProto {
        self.model.graph.as_ref().expect("checked at load")
    }

    pub fn g_mut(&mut self) -> &mut pb::GraphProto {
        self.model.graph.as_mut().expect("checked at load")
    }

    pub fn nodes(&self) -> &[pb::NodeProto] {
        &self.g().node
    }

    pub fn opset(&self) -> i64 {
        self.model.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map(|o| o.version).unwrap_or(0)
    }

    /// Index of the node producing `value`.
    pub fn producer(&self, value: &str) -> Option<usize> {
        self.nodes().iter().position(|n| n.output.iter().any(|o| o == value))
    }

    /// Indices of the nodes reading `value`.
    pub fn consumers(&self, value: &str) -> Vec<usize> {
        self.nodes().iter().enumerate().filter(|(_, n)| n.input.iter().any(|i| i == value)).map(|(i, _)| i).collect()
    }

    pub fn is_graph_output(&self, value: &str) -> bool {
        self.g().output.iter().any(|o| o.name == value)
    }

    /// True when exactly one node reads `value` and it is not a graph output.
    pub fn single_use(&self, value: &str) -> bool {
        self.consumers(value).len() == 1 && !self.is_graph_output(value)
    }

    pub fn initializer(&self, name: &str) -> Option<&pb::TensorProto> {
        self.g().initializer.iter().find(|t| t.name == name)
    }

    /// A constant float tensor: an initializer or a `Constant` node's value.
    pub fn constant(&self, name: &str) -> Option<Array> {
        if name.is_empty() {
            return None;
        }
        if let Some(t) = self.initializer(name) {
            return tensor_to_array(t).ok();
        }
        let node = &self.nodes()[self.producer(name)?];
        if node.op_type != "Constant" {
            return None;
        }
        node.attribute.iter().find(|a| a.name == "value").and_then(|a| a.t.as_ref()).and_then(|t| tensor_to_array(t).ok())
    }

    /// Evaluates `name` when it is computed from constants only by shape plumbing
    /// (Shape of an initializer, Expand, Cast, CastLike, Identity, Reshape), as
    /// unoptimised exports build zero biases and batch-norm parameters.
    pub fn eval_constant(&self, name: &str, depth: usize) -> Option<Array> {
        if let Some(a) = self.constant(name) {
            return Some(a);
        }
        if depth == 0 {
            return None;
        }
        let n = &self.nodes()[self.producer(name)?];
        let arg = |i: usize| n.input.get(i).and_then(|x| self.eval_constant(x, depth - 1));
        match n.op_type.as_str() {
            "Constant" => {
                let a = n.attribute.iter().find(|a| a.name.starts_with("value"))?;
                match a.name.as_str() {
                    "value_ints" => Some(Array::new(vec![a.ints.len()], a.ints.iter().map(|v| *v as f32).collect())),
                    "value_int" => Some(Array::new(vec![], vec![a.i as f32])),
                    "value_float" => Some(Array::new(vec![], vec![a.f])),
                    "value_floats" => Some(Array::new(vec![a.floats.len()], a.floats.clone())),
                    "value" => a.t.as_ref().and_then(|t| tensor_to_array(t).ok()),
                    _ => None,
                }
            }
            // Only the shape changes (PReLU slopes [C] made [C, 1, 1] by exporters).
            "Unsqueeze" | "Squeeze" => {
                let x = arg(0)?;
                let axes: Vec<i64> = match attr_ints(n, "axes") {
                    Some(a) => a,
                    None if n.input.len() > 1 => arg(1)?.data.iter().map(|v| *v as i64).collect(),
                    None => vec![],
                };
                let mut shape = x.shape.clone();
                if n.op_type == "Unsqueeze" {
                    let rank = (shape.len() + axes.len()) as i64;
                    let mut axes: Vec<usize> = axes
                        .iter()
                        .map(|&a| if a < 0 { a + rank } else { a })
                        .filter(|a| (0..rank).contains(a))
                        .map(|a| a as usize)
                        .collect();
                    axes.sort_unstable();
                    for a in axes {
                        shape.insert(a.min(shape.len()), 1);
                    }
                } else {
                    let rank = shape.len() as i64;
                    let drop: Vec<usize> = if axes.is_empty() {
                        (0..shape.len()).filter(|&i| shape[i] == 1).collect()
                    } else {
                        axes.iter().map(|&a| (if a < 0 { a + rank } else { a }) as usize).collect()
                    };
                    if drop.iter().any(|&a| shape.get(a) != Some(&1)) {
                        return None;
                    }
                    shape = shape.iter().enumerate().filter(|(i, _)| !drop.contains(i)).map(|(_, d)| *d).collect();
                }
                Some(Array::new(shape, x.data))
            }
            "Shape" => {
                let src = n.input.first()?;
                let dims: Vec<f32> = match self.initializer(src) {
                    Some(t) => t.dims.iter().map(|d| *d as f32).collect(),
                    None => self.eval_constant(src, depth - 1)?.shape.iter().map(|d| *d as f32).collect(),
                };
                let len = dims.len() as i64;
                let clamp = |v: i64| (if v < 0 { v + len } else { v }).clamp(0, len) as usize;
                let start = clamp(attr_i(n, "start", 0));
                let end = clamp(attr_i(n, "end", len));
                let d = dims[start..end.max(start)].to_vec();
                Some(Array::new(vec![d.len()], d))
            }
            "Cast" | "CastLike" | "Identity" => arg(0),
            "Expand" => {
                let x = arg(0)?;
                let shape: Vec<usize> = arg(1)?.data.iter().map(|v| *v as usize).collect();
                let n_out: usize = shape.iter().product();
                (x.len() == 1).then(|| Array::new(shape, vec![x.data[0]; n_out]))
            }
            "Reshape" => {
                let x = arg(0)?;
                let spec = arg(1)?.data;
                let known: usize = spec.iter().filter(|v| **v > 0.0).map(|v| *v as usize).product();
                let shape: Vec<usize> = spec
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match *v as i64 {
                        -1 => x.len() / known.max(1),
                        0 => x.shape.get(i).copied().unwrap_or(1),
                        k => k as usize,
                    })
                    .collect();
                (shape.iter().product::<usize>() == x.len()).then(|| Array::new(shape, x.data))
            }
            _ => None,
        }
    }

    /// Replaces computed-constant inputs of `ops` nodes (all but the data input) by initializers.
    pub fn materialize_constant_inputs(&mut self, ops: &[&str]) -> usize {
        let mut count = 0;
        for i in 0..self.nodes().len() {
            if !ops.contains(&self.nodes()[i].op_type.as_str()) {
                continue;
            }
            for k in 1..self.nodes()[i].input.len() {
                let name = self.nodes()[i].input[k].clone();
                if name.is_empty() || self.initializer(&name).is_some() {
                    continue;
                }
                if let Some(a) = self.eval_constant(&name, 8) {
                    let fresh = self.fresh_name(&format!("{name}.const"));
                    self.set_initializer(&fresh, &a);
                    self.g_mut().node[i].input[k] = fresh;
                    count += 1;
                }
            }
        }
        if count > 0 {
            self.prune();
        }
        count
    }

    /// Bounds of a Clip node: inputs 1 and 2 (opset 11+) or the `min`/`max` attributes
    /// (older opsets); an absent bound is `f32::MIN` / `f32::MAX`.
    pub fn clip_bounds(&self, n: &pb::NodeProto) -> (f32, f32) {
        // A NaN bound bounds nothing: read as absent, so no caller compares or clamps with NaN.
        let bound = |k: usize, attr: &str, default: f32| {
            let b = n.input.get(k).and_then(|x| self.constant(x)).and_then(|a| a.data.first().copied()).unwrap_or(attr_f(n, attr, default));
            if b.is_nan() {
                default
            } else {
                b
            }
        };
        (bound(1, "min", f32::MIN), bound(2, "max", f32::MAX))
    }

    /// For a two-input Min whose other operand is an initializer: (data input, bound initializer).
    pub fn min_bound(&self, n: &pb::NodeProto) -> Option<(String, String)> {
        if n.op_type != "Min" || n.input.len() != 2 {
            return None;
        }
        let (a, b) = (&n.input[0], &n.input[1]);
        match (self.initializer(a).is_some(), self.initializer(b).is_some()) {
            (false, true) => Some((a.clone(), b.clone())),
            (true, false) => Some((b.clone(), a.clone())),
            _ => None,
        }
    }

    /// Replaces (or adds) a float initializer. A `Constant` node of that name is removed.
    pub fn set_initializer(&mut self, name: &str, a: &Array) {
        if let Some(p) = self.producer(name) {
            if self.nodes()[p].op_type == "Constant" {
                self.g_mut().node.remove(p);
            }
        }
        let t = array_to_tensor(name, a);
        let g = self.g_mut();
        match g.initializer.iter_mut().find(|t| t.name == name) {
            Some(slot) => *slot = t,
            None => g.initializer.push(t),
        }
    }

    pub fn add_tensor(&mut self, t: pb::TensorProto) {
        self.g_mut().initializer.retain(|x| x.name != t.name);
        self.g_mut().initializer.push(t);
    }

    /// A value name not used anywhere in the graph, derived from `base`.
    pub fn fresh_name(&self, base: &str) -> String {
        let used: HashSet<&str> = self
            .nodes()
            .iter()
            .flat_map(|n| n.input.iter().chain(n.output.iter()).chain(std::iter::once(&n.name)).map(|s| s.as_str()))
            .chain(self.g().initializer.iter().map(|t| t.name.as_str()))
            .chain(self.g().input.iter().map(|v| v.name.as_str()))
            .collect();
        if !used.contains(base) {
            return base.to_string();
        }
        (1..).map(|i| format!("{base}_{i}")).find(|n| !used.contains(n.as_str())).expect("unbounded")
    }

    /// Makes every reader of `from` read `to` instead (graph outputs included).
    pub fn replace_uses(&mut self, from: &str, to: &str) {
        let g = self.g_mut();
        for n in g.node.iter_mut() {
            for i in n.input.iter_mut() {
                if i == from {
                    *i = to.to_string();
                }
            }
        }
        for o in g.output.iter_mut() {
            if o.name == from {
                o.name = to.to_string();
            }
        }
    }

    /// Removes nodes by index, then initializers and value infos nobody references any more.
    pub fn remove_nodes(&mut self, mut idx: Vec<usize>) {
        idx.sort_unstable();
        idx.dedup();
        for i in idx.into_iter().rev() {
            self.g_mut().node.remove(i);
        }
        self.prune();
    }

    pub fn prune(&mut self) {
        let g = self.g_mut();
        // Nodes nobody reads go too, repeatedly (ONNX inference ops have no side effects).
        loop {
            let used: HashSet<String> =
                g.node.iter().flat_map(|n| n.input.iter().cloned()).chain(g.output.iter().map(|o| o.name.clone())).collect();
            let before = g.node.len();
            g.node.retain(|n| n.output.iter().any(|o| used.contains(o)));
            if g.node.len() == before {
                break;
            }
        }
        let used: HashSet<String> =
            g.node.iter().flat_map(|n| n.input.iter().cloned()).chain(g.output.iter().map(|o| o.name.clone())).collect();
        g.initializer.retain(|t| used.contains(&t.name));
        let produced: HashSet<String> = g.node.iter().flat_map(|n| n.output.iter().cloned()).collect();
        g.value_info.retain(|v| produced.contains(&v.name));
    }

    /// Nodes in an order where every node comes after its inputs' producers.
    pub fn topological_order(&self) -> Result<Vec<usize>> {
        let nodes = self.nodes();
        let producer: HashMap<&str, usize> =
            nodes.iter().enumerate().flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i))).collect();
        let mut state = vec![0u8; nodes.len()];
        let mut order = Vec::with_capacity(nodes.len());
        for start in 0..nodes.len() {
            let mut stack = vec![(start, false)];
            while let Some((i, done)) = stack.pop() {
                if done {
                    state[i] = 2;
                    order.push(i);
                    continue;
                }
                match state[i] {
                    2 => continue,
                    1 => bail!("the graph has a cycle through node {:?}", nodes[i].name),
                    _ => {}
                }
                state[i] = 1;
                stack.push((i, true));
                for input in &nodes[i].input {
                    if let Some(&p) = producer.get(input.as_str()) {
                        if state[p] != 2 {
                            stack.push((p, false));
                        }
                    }
                }
            }
        }
        Ok(order)
    }

    /// Reorders `node` topologically (passes insert nodes at the end).
    pub fn sort(&mut self) -> Result<()> {
        let order = self.topological_order()?;
        let nodes = std::mem::take(&mut self.g_mut().node);
        let mut slots: Vec<Option<pb::NodeProto>> = nodes.into_iter().map(Some).collect();
        self.g_mut().node = order.into_iter().map(|i| slots[i].take().expect("each node once")).collect();
        Ok(())
    }
}

pub use edgemed_onnx::attr::{attr, float as attr_f, int as attr_i, ints as attr_ints};

/// A float-valued initializer (float32, float64 or int64 values) as an array.
/// The fixed dims of a graph value (None where its type is not a tensor with a shape);
/// symbolic dims read as 0.
pub fn value_dims(v: &pb::ValueInfoProto) -> Option<Vec<usize>> {
    let Some(pb::type_proto::Value::TensorType(t)) = v.r#type.as_ref()?.value.as_ref() else { return None };
    Some(
        t.shape
            .as_ref()?
            .dim
            .iter()
            .map(|d| match d.value {
                Some(pb::tensor_shape_proto::dimension::Value::DimValue(n)) if n > 0 => n as usize,
                _ => 0,
            })
            .collect(),
    )
}

pub fn tensor_to_array(t: &pb::TensorProto) -> Result<Array> {
    let d = edgemed_onnx::tensor::decode(t).map_err(|e| anyhow::anyhow!(e))?;
    if !matches!(d.data_type, DataType::Float | DataType::Double | DataType::Int64) {
        bail!("tensor {:?} has type {:?}, not a float", t.name, d.data_type);
    }
    Ok(Array::new(d.shape, d.values.to_f32()))
}

pub fn array_to_tensor(name: &str, a: &Array) -> pb::TensorProto {
    edgemed_onnx::builder::tensor_f32(name, &a.shape, &a.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_with(node: pb::NodeProto) -> Vec<u8> {
        let graph = pb::GraphProto { node: vec![node], ..Default::default() };
        pb::ModelProto { graph: Some(graph), ..Default::default() }.encode_to_vec()
    }

    #[test]
    fn nodes_missing_outputs_or_required_inputs_are_refused_at_load() {
        let node = |op: &str, inputs: &[&str], outputs: &[&str]| pb::NodeProto {
            op_type: op.into(),
            name: "n".into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let e = Graph::from_bytes(&model_with(node("Relu", &["x"], &[]))).err().unwrap().to_string();
        assert!(e.contains("writes no value"), "{e}");
        let e = Graph::from_bytes(&model_with(node("Conv", &["x"], &["y"]))).err().unwrap().to_string();
        assert!(e.contains("1 of the 2 inputs"), "{e}");
        let e = Graph::from_bytes(&model_with(node("BatchNormalization", &["x", "s", "", "m", "v"], &["y"]))).err().unwrap().to_string();
        assert!(e.contains("4 of the 5 inputs"), "{e}");
        assert!(Graph::from_bytes(&model_with(node("Conv", &["x", "w"], &["y"]))).is_ok());
    }
}
