//! A small ONNX graph builder (what the exporters, the converter's rewrites and the
//! tests build graphs with), and saving a model so that it is never half-written.

use std::path::Path;

use prost::Message;

use crate::error::Result;
use crate::model::{float_value_info, Dim};
use crate::pb;

pub const OPSET: i64 = 13;
/// IR version 8 goes with opset 13-17 and loads in every ONNX Runtime since 1.10.
pub const IR_VERSION: i64 = 8;

/// A dimension when declaring graph inputs and outputs.
#[derive(Debug, Clone)]
pub enum D {
    N(i64),
    Sym(&'static str),
}

pub enum Attr {
    Int(&'static str, i64),
    Ints(&'static str, Vec<i64>),
    Float(&'static str, f32),
}

#[derive(Default)]
pub struct GraphBuilder {
    pub graph: pb::GraphProto,
}

fn value_info(name: &str, dims: &[D]) -> pb::ValueInfoProto {
    let dims: Vec<Dim> = dims
        .iter()
        .map(|d| match d {
            D::N(n) => Dim::Fixed(usize::try_from(*n).expect("declared dims are not negative")),
            D::Sym(s) => Dim::Symbolic(s.to_string()),
        })
        .collect();
    float_value_info(name, &dims)
}

/// A tensor of `data_type` whose values are stored as little-endian `raw_data`.
fn raw_tensor(name: &str, shape: &[usize], n: usize, data_type: pb::tensor_proto::DataType, raw_data: Vec<u8>) -> pb::TensorProto {
    assert_eq!(shape.iter().product::<usize>(), n, "initializer {name}: shape and data disagree");
    pb::TensorProto {
        name: name.to_string(),
        dims: shape.iter().map(|d| *d as i64).collect(),
        data_type: data_type as i32,
        raw_data,
        ..Default::default()
    }
}

/// A float32 tensor stored as little-endian `raw_data`.
pub fn tensor_f32(name: &str, shape: &[usize], data: &[f32]) -> pb::TensorProto {
    raw_tensor(name, shape, data.len(), pb::tensor_proto::DataType::Float, data.iter().flat_map(|x| x.to_le_bytes()).collect())
}

/// An int64 tensor stored as little-endian `raw_data`.
pub fn tensor_i64(name: &str, shape: &[usize], data: &[i64]) -> pb::TensorProto {
    raw_tensor(name, shape, data.len(), pb::tensor_proto::DataType::Int64, data.iter().flat_map(|x| x.to_le_bytes()).collect())
}

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        GraphBuilder { graph: pb::GraphProto { name: name.to_string(), ..Default::default() } }
    }

    pub fn input_f32(&mut self, name: &str, dims: &[D]) {
        self.graph.input.push(value_info(name, dims));
    }

    pub fn output_f32(&mut self, name: &str, dims: &[D]) {
        self.graph.output.push(value_info(name, dims));
    }

    /// Adds a float initializer and returns its name.
    pub fn init_f32(&mut self, name: &str, shape: &[usize], data: &[f32]) -> String {
        self.graph.initializer.push(tensor_f32(name, shape, data));
        name.to_string()
    }

    pub fn init_i64(&mut self, name: &str, shape: &[usize], data: &[i64]) -> String {
        self.graph.initializer.push(tensor_i64(name, shape, data));
        name.to_string()
    }

    /// Adds a node named `name` with one output, also called `name`, and returns it.
    pub fn node(&mut self, op: &str, name: &str, inputs: &[&str], attrs: Vec<Attr>) -> String {
        let attribute = attrs
            .into_iter()
            .map(|a| {
                use pb::attribute_proto::AttributeType as T;
                match a {
                    Attr::Int(n, i) => pb::AttributeProto { name: n.into(), r#type: T::Int as i32, i, ..Default::default() },
                    Attr::Ints(n, ints) => pb::AttributeProto { name: n.into(), r#type: T::Ints as i32, ints, ..Default::default() },
                    Attr::Float(n, f) => pb::AttributeProto { name: n.into(), r#type: T::Float as i32, f, ..Default::default() },
                }
            })
            .collect();
        self.graph.node.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![name.to_string()],
            name: name.to_string(),
            op_type: op.to_string(),
            attribute,
            ..Default::default()
        });
        name.to_string()
    }

    pub fn into_model(self, producer: &str, metadata: &[(String, String)]) -> pb::ModelProto {
        pb::ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: OPSET }],
            producer_name: producer.to_string(),
            producer_version: env!("CARGO_PKG_VERSION").to_string(),
            graph: Some(self.graph),
            metadata_props: metadata.iter().map(|(k, v)| pb::StringStringEntryProto { key: k.clone(), value: v.clone() }).collect(),
            ..Default::default()
        }
    }
}

/// Encodes and writes a model through a temporary file and a rename.
pub fn save(model: &pb::ModelProto, path: &Path) -> Result<()> {
    crate::fsutil::write_atomic(path, &model.encode_to_vec())
}
