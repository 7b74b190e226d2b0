//! Decoding ONNX tensors (initializers, Constant values): the one place that reads
//! `raw_data` and the typed `*_data` fields, for the INT8 engine, its float
//! interpreter and the converter alike.

use crate::error::{Error, Result};
use crate::pb;
use crate::pb::tensor_proto::{DataLocation, DataType};

/// The values of a decoded tensor, widened to one type per family: every integer type
/// edgemed reads (int8, uint8, int32, int64) as i64, float32 as f32, float64 as f64.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
}

impl Values {
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::F64(v) => v.len(),
            Values::I64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every value as f32 (integers and doubles rounded to the nearest float).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Values::F32(v) => v.clone(),
            Values::F64(v) => v.iter().map(|&x| x as f32).collect(),
            Values::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
}

/// A decoded tensor: its shape and its values, `shape.iter().product() == values.len()`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data_type: DataType,
    pub values: Values,
}

fn le<const N: usize>(raw: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    raw.chunks_exact(N).map(|b| b.try_into().expect("chunks_exact gives N bytes"))
}

/// Decodes `t`. Types edgemed does not compute in (strings, float16, bool, ...) and data
/// kept outside the model file are [`Error::Unsupported`]; negative dims and a value
/// count that disagrees with the shape are [`Error::Invalid`].
pub fn decode(t: &pb::TensorProto) -> Result<Tensor> {
    let shape = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| Error::Invalid(format!("tensor {:?}: negative dim {d}", t.name))))
        .collect::<Result<Vec<usize>>>()?;
    if t.data_location == Some(DataLocation::External as i32) {
        return Err(Error::unsupported(format!("tensor {:?} is stored outside the model file (external data)", t.name)));
    }
    let raw = t.raw_data.as_slice();
    let data_type = DataType::try_from(t.data_type)
        .map_err(|_| Error::unsupported(format!("tensor {:?}: unknown data type {}", t.name, t.data_type)))?;
    let ints = |from_raw: &dyn Fn(&[u8]) -> Vec<i64>| {
        if raw.is_empty() {
            t.int32_data.iter().map(|&v| v as i64).collect()
        } else {
            from_raw(raw)
        }
    };
    let values = match data_type {
        DataType::Float if raw.is_empty() => Values::F32(t.float_data.clone()),
        DataType::Float => Values::F32(le::<4>(raw).map(f32::from_le_bytes).collect()),
        DataType::Double if raw.is_empty() => Values::F64(t.double_data.clone()),
        DataType::Double => Values::F64(le::<8>(raw).map(f64::from_le_bytes).collect()),
        DataType::Int8 => Values::I64(ints(&|r| r.iter().map(|&b| b as i8 as i64).collect())),
        DataType::Uint8 => Values::I64(ints(&|r| r.iter().map(|&b| b as i64).collect())),
        DataType::Int32 => Values::I64(ints(&|r| le::<4>(r).map(|b| i32::from_le_bytes(b) as i64).collect())),
        DataType::Int64 if raw.is_empty() => Values::I64(t.int64_data.clone()),
        DataType::Int64 => Values::I64(le::<8>(raw).map(i64::from_le_bytes).collect()),
        other => return Err(Error::unsupported(format!("tensor {:?}: cannot read type {other:?}", t.name))),
    };
    let n: usize = shape.iter().product();
    if values.len() != n {
        return Err(Error::Invalid(format!("tensor {:?}: {} values for shape {shape:?}", t.name, values.len())));
    }
    Ok(Tensor { shape, data_type, values })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{tensor_f32 as f32_tensor, tensor_i64 as i64_tensor};

    fn typed(dt: DataType, dims: Vec<i64>) -> pb::TensorProto {
        pb::TensorProto { name: "t".into(), dims, data_type: dt as i32, ..Default::default() }
    }

    #[test]
    fn raw_and_typed_fields_decode_alike() {
        let raw = f32_tensor("t", &[2, 2], &[1.0, -2.5, 3.0, 0.0]);
        let typed_f = pb::TensorProto { float_data: vec![1.0, -2.5, 3.0, 0.0], ..typed(DataType::Float, vec![2, 2]) };
        assert_eq!(decode(&raw).unwrap(), decode(&typed_f).unwrap());
        let i = i64_tensor("t", &[3], &[-1, 0, 1 << 40]);
        assert_eq!(decode(&i).unwrap().values, Values::I64(vec![-1, 0, 1 << 40]));
        let s8 = pb::TensorProto { raw_data: vec![0xff, 0x80, 0x7f], ..typed(DataType::Int8, vec![3]) };
        assert_eq!(decode(&s8).unwrap().values, Values::I64(vec![-1, -128, 127]));
        let u8_ = pb::TensorProto { raw_data: vec![0xff, 0x80], ..typed(DataType::Uint8, vec![2]) };
        assert_eq!(decode(&u8_).unwrap().values, Values::I64(vec![255, 128]));
        let u8_typed = pb::TensorProto { int32_data: vec![255, 128], ..typed(DataType::Uint8, vec![2]) };
        assert_eq!(decode(&u8_typed).unwrap().values, Values::I64(vec![255, 128]));
        let d = pb::TensorProto { double_data: vec![0.5], ..typed(DataType::Double, vec![]) };
        assert_eq!(decode(&d).unwrap().values.to_f32(), vec![0.5]);
    }

    #[test]
    fn bad_tensors_are_refused_by_category() {
        let short = pb::TensorProto { raw_data: vec![0; 4], ..typed(DataType::Float, vec![2]) };
        assert!(matches!(decode(&short), Err(Error::Invalid(m)) if m.contains("1 values for shape [2]")));
        let neg = typed(DataType::Float, vec![-1]);
        assert!(matches!(decode(&neg), Err(Error::Invalid(m)) if m.contains("negative")));
        let half = typed(DataType::Float16, vec![0]);
        assert!(decode(&half).unwrap_err().is_unsupported());
        let ext = pb::TensorProto { data_location: Some(DataLocation::External as i32), ..typed(DataType::Float, vec![0]) };
        assert!(decode(&ext).unwrap_err().is_unsupported());
        let unknown = pb::TensorProto { data_type: 99, ..Default::default() };
        assert!(decode(&unknown).unwrap_err().is_unsupported());
    }
}
