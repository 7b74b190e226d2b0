//! An ONNX model as the runtime sees it: the decoded protobuf, its metadata and
//! its input/output signature, before any backend compiles it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::error::{Error, Result};
use crate::metadata::ModelMetadata;
use crate::pb;

/// A dimension of a model input or output as declared in the graph.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(usize),
    Symbolic(String),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(s) => write!(f, "{s}"),
        }
    }
}

/// The declaration of a float graph input or output with these dims (for graphs built
/// in code: the INT8 engine's float tail, the exporters, tests).
pub fn float_value_info(name: &str, dims: &[Dim]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            denotation: String::new(),
            value: Some(match d {
                Dim::Fixed(n) => Value::DimValue(*n as i64),
                Dim::Symbolic(s) => Value::DimParam(s.clone()),
            }),
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
        }),
        ..Default::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub elem_type: String,
    /// `None` when the graph declares no shape.
    pub dims: Option<Vec<Dim>>,
}

/// A loaded, not yet compiled, ONNX model.
#[derive(Clone)]
pub struct OnnxModel {
    /// Where the model came from, for error messages ("<bundled>" for embedded models).
    pub path: PathBuf,
    pub proto: pb::ModelProto,
    pub metadata: ModelMetadata,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

impl OnnxModel {
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(path, &bytes)
    }

    /// Parses a model held in memory; `path` only names it in messages.
    pub fn from_bytes(path: impl AsRef<Path>, bytes: &[u8]) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let corrupt = |reason: String| Error::CorruptModel { path: path.clone(), reason };
        if bytes.is_empty() {
            return Err(corrupt("empty file".into()));
        }
        let proto = pb::ModelProto::decode(bytes).map_err(|e| corrupt(e.to_string()))?;
        let graph = proto.graph.as_ref().ok_or_else(|| corrupt("no graph in the model".into()))?;
        if graph.node.is_empty() {
            return Err(corrupt("the graph has no nodes".into()));
        }
        let initializers: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<TensorSpec> = graph.input.iter().filter(|i| !initializers.contains(i.name.as_str())).map(tensor_spec).collect();
        let outputs: Vec<TensorSpec> = graph.output.iter().map(tensor_spec).collect();
        if inputs.is_empty() || outputs.is_empty() {
            return Err(corrupt("the graph declares no inputs or no outputs".into()));
        }
        let props: Vec<(String, String)> = proto.metadata_props.iter().map(|e| (e.key.clone(), e.value.clone())).collect();
        let metadata = ModelMetadata::from_props(&path, &props)?;
        Ok(OnnxModel { path, proto, metadata, inputs, outputs })
    }

    pub fn graph(&self) -> &pb::GraphProto {
        self.proto.graph.as_ref().expect("checked at load")
    }

    pub fn opset(&self) -> i64 {
        self.proto.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map(|o| o.version).unwrap_or(0)
    }

    /// Node count per operator type (`domain::Op` for non-default domains).
    pub fn op_histogram(&self) -> BTreeMap<String, usize> {
        let mut h = BTreeMap::new();
        for n in &self.graph().node {
            let key = if n.domain.is_empty() || n.domain == "ai.onnx" { n.op_type.clone() } else { format!("{}::{}", n.domain, n.op_type) };
            *h.entry(key).or_insert(0) += 1;
        }
        h
    }

    /// Number of scalar parameters stored in initializers.
    pub fn parameter_count(&self) -> usize {
        self.graph().initializer.iter().map(|t| t.dims.iter().map(|d| (*d).max(0) as usize).product::<usize>()).sum()
    }

    /// A one-word summary of the arithmetic the model asks for.
    pub fn precision(&self) -> &'static str {
        let ops = self.op_histogram();
        let has = |k: &str| ops.contains_key(k);
        if has("QLinearConv") || has("ConvInteger") || has("QLinearMatMul") || has("MatMulInteger") {
            "INT8 (QOperator)"
        } else if has("QuantizeLinear") || has("DequantizeLinear") {
            "INT8 (QDQ)"
        } else if self.graph().initializer.iter().any(|t| t.data_type == pb::tensor_proto::DataType::Float16 as i32) {
            "FP16"
        } else {
            "FP32"
        }
    }

    /// The single image input as (channels, height, width), checking it is one.
    /// Whether the (first) input is float16: an FP16 export that kept half-precision inputs.
    /// Backends convert float32 inputs to it.
    pub fn takes_float16(&self) -> bool {
        self.inputs.first().is_some_and(|i| i.elem_type == "float16")
    }

    /// The dims of the single float input, checked to be `[batch, channels, spatial...]`
    /// with at least one spatial dim (volume and image models alike).
    pub fn spatial_input(&self) -> Result<Vec<Dim>> {
        let (spec, dims) = self.single_float_input("[batch, channels, spatial...] tensor")?;
        if dims.len() < 3 {
            return Err(self.not_image(format!("input {:?} has {} dims, expected [batch, channels, spatial...]", spec.name, dims.len())));
        }
        Ok(dims.clone())
    }

    fn not_image(&self, reason: String) -> Error {
        Error::NotAnImageModel { path: self.path.clone(), reason }
    }

    /// The one input, float32 or float16, with a declared shape (`expected` names what
    /// the caller wants, for the message when there are several inputs).
    fn single_float_input(&self, expected: &str) -> Result<(&TensorSpec, &Vec<Dim>)> {
        if self.inputs.len() != 1 {
            return Err(self.not_image(format!("{} inputs, expected one {expected}", self.inputs.len())));
        }
        let spec = &self.inputs[0];
        if spec.elem_type != "float32" && spec.elem_type != "float16" {
            return Err(self.not_image(format!("input {:?} is {}, expected float32 or float16", spec.name, spec.elem_type)));
        }
        let dims = spec.dims.as_ref().ok_or_else(|| self.not_image(format!("input {:?} declares no shape", spec.name)))?;
        Ok((spec, dims))
    }

    pub fn image_input(&self) -> Result<(usize, usize, usize)> {
        let (spec, dims) = self.single_float_input("NCHW image tensor")?;
        match dims.as_slice() {
            [_, Dim::Fixed(3), Dim::Fixed(h), Dim::Fixed(w)] if h == w => Ok((3, *h, *w)),
            _ => Err(self.not_image(format!(
                "input {:?} has shape [{}], expected [batch, 3, S, S]",
                spec.name,
                dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }
}

fn tensor_spec(v: &pb::ValueInfoProto) -> TensorSpec {
    use pb::type_proto::Value;
    let (elem_type, dims) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(Value::TensorType(t)) => {
            let dims = t.shape.as_ref().map(|s| {
                s.dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(pb::tensor_shape_proto::dimension::Value::DimValue(n)) if *n >= 0 => Dim::Fixed(*n as usize),
                        Some(pb::tensor_shape_proto::dimension::Value::DimParam(s)) if !s.is_empty() => Dim::Symbolic(s.clone()),
                        _ => Dim::Symbolic("?".into()),
                    })
                    .collect()
            });
            (elem_type_name(t.elem_type), dims)
        }
        _ => ("unknown".to_string(), None),
    };
    TensorSpec { name: v.name.clone(), elem_type, dims }
}

pub fn elem_type_name(t: i32) -> String {
    use pb::tensor_proto::DataType as D;
    match D::try_from(t) {
        Ok(D::Float) => "float32".into(),
        Ok(D::Float16) => "float16".into(),
        Ok(D::Double) => "float64".into(),
        Ok(D::Int8) => "int8".into(),
        Ok(D::Uint8) => "uint8".into(),
        Ok(D::Int32) => "int32".into(),
        Ok(D::Int64) => "int64".into(),
        Ok(other) => format!("{other:?}").to_lowercase(),
        Err(_) => format!("type#{t}"),
    }
}
