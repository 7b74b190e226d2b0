//! FP16 export: every float initializer and Constant becomes float16 (the `half`
//! crate, round to nearest even); the graph's float inputs and outputs stay float32
//! behind Cast nodes, so callers feed and read the same tensors as before, unless
//! float16 inputs and outputs are asked for (half the transfer to a GPU).

use anyhow::{bail, Result};
use edgemed_onnx::pb;
use half::f16;
use pb::tensor_proto::DataType;

use crate::graph::{tensor_to_array, Graph};

fn to_f16(t: &mut pb::TensorProto) -> Result<()> {
    if t.data_type != DataType::Float as i32 {
        return Ok(());
    }
    let a = tensor_to_array(t)?;
    if let Some(v) = a.data.iter().find(|v| v.is_finite() && v.abs() > f16::MAX.to_f32()) {
        bail!("tensor {:?} holds {v}, beyond float16's range", t.name);
    }
    t.float_data.clear();
    t.raw_data = a.data.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect();
    t.data_type = DataType::Float16 as i32;
    Ok(())
}

fn is_float(v: &pb::ValueInfoProto) -> bool {
    matches!(v.r#type.as_ref().and_then(|t| t.value.as_ref()), Some(pb::type_proto::Value::TensorType(t)) if t.elem_type == DataType::Float as i32)
}

fn cast(g: &Graph, input: &str, output: &str, to: DataType) -> pb::NodeProto {
    pb::NodeProto {
        name: g.fresh_name(&format!("{output}.cast")),
        op_type: "Cast".into(),
        input: vec![input.to_string()],
        output: vec![output.to_string()],
        attribute: vec![pb::AttributeProto {
            name: "to".into(),
            r#type: pb::attribute_proto::AttributeType::Int as i32,
            i: to as i64,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Ops kept in float32 between Casts: tract 0.23 types a float16 Gemm's output as float32.
const KEEP_FP32: &[&str] = &["Gemm"];

fn set_elem_type(v: &mut pb::ValueInfoProto, t: DataType) {
    if let Some(pb::type_proto::Value::TensorType(tt)) = v.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        tt.elem_type = t as i32;
    }
}

/// Converts the graph to float16; `float16_io` makes its float inputs and outputs float16 too.
pub fn convert_to_fp16(g: &mut Graph, float16_io: bool) -> Result<()> {
    let initializers: std::collections::HashSet<String> = g.g().initializer.iter().map(|t| t.name.clone()).collect();
    let keep: std::collections::HashSet<String> =
        g.nodes().iter().filter(|n| KEEP_FP32.contains(&n.op_type.as_str())).flat_map(|n| n.input.iter().skip(1).cloned()).collect();
    for t in g.g_mut().initializer.iter_mut().filter(|t| !keep.contains(&t.name)) {
        to_f16(t)?;
    }
    let kept: Vec<usize> = (0..g.nodes().len()).filter(|i| KEEP_FP32.contains(&g.nodes()[*i].op_type.as_str())).collect();
    for i in kept.into_iter().rev() {
        let n = g.nodes()[i].clone();
        let (x32, y32) = (g.fresh_name(&format!("{}.in_fp32", n.name)), g.fresh_name(&format!("{}.out_fp32", n.name)));
        let node = &mut g.g_mut().node[i];
        node.input[0] = x32.clone();
        node.output[0] = y32.clone();
        let c = cast(g, &n.input[0], &x32, DataType::Float);
        g.g_mut().node.push(c);
        let c = cast(g, &y32, &n.output[0], DataType::Float16);
        g.g_mut().node.push(c);
    }
    for n in g.g_mut().node.iter_mut() {
        if n.op_type == "Constant" {
            for a in n.attribute.iter_mut().filter(|a| a.name == "value") {
                if let Some(t) = a.t.as_mut() {
                    to_f16(t)?;
                }
            }
        }
        if n.op_type == "Cast" && !n.output[0].ends_with(".in_fp32") {
            for a in n.attribute.iter_mut().filter(|a| a.name == "to" && a.i == DataType::Float as i64) {
                a.i = DataType::Float16 as i64;
            }
        }
    }
    // Intermediate type annotations would now be wrong; they are optional.
    g.g_mut().value_info.clear();
    if float16_io {
        for v in g.g_mut().input.iter_mut().filter(|i| is_float(i) && !initializers.contains(&i.name)) {
            set_elem_type(v, DataType::Float16);
        }
        for v in g.g_mut().output.iter_mut().filter(|o| is_float(o)) {
            set_elem_type(v, DataType::Float16);
        }
        return finish(g);
    }
    let inputs: Vec<String> =
        g.g().input.iter().filter(|i| is_float(i) && !initializers.contains(&i.name)).map(|i| i.name.clone()).collect();
    for name in inputs {
        let half_name = g.fresh_name(&format!("{name}.fp16"));
        g.replace_uses(&name, &half_name);
        let c = cast(g, &name, &half_name, DataType::Float16);
        g.g_mut().node.insert(0, c);
    }
    let outputs: Vec<String> = g.g().output.iter().filter(|o| is_float(o)).map(|o| o.name.clone()).collect();
    for name in outputs {
        // The producer now writes `name.fp16`; a Cast restores float32 under the output's name.
        let half_name = g.fresh_name(&format!("{name}.fp16"));
        for n in g.g_mut().node.iter_mut() {
            for o in n.output.iter_mut().filter(|o| **o == name) {
                *o = half_name.clone();
            }
            for i in n.input.iter_mut().filter(|i| **i == name) {
                *i = half_name.clone();
            }
        }
        let c = cast(g, &half_name, &name, DataType::Float);
        g.g_mut().node.push(c);
    }
    finish(g)
}

fn finish(g: &mut Graph) -> Result<()> {
    g.model.metadata_props.retain(|e| e.key != "edgemed.precision");
    g.model.metadata_props.push(pb::StringStringEntryProto { key: "edgemed.precision".into(), value: "fp16".into() });
    g.sort()
}
