//! Memory budget: what a model and its inputs would need, worked out from declared
//! sizes before anything that large is allocated, so a board refuses a model or input
//! it cannot hold with a clear message instead of being killed by the kernel.
//!
//! Counted here: the model file; its weights (initializers, from their declared dims);
//! the input tensor. The tract backend adds, once tract has inferred every shape for
//! the input, the peak of the activations alive at once along the evaluation order
//! (`backend::tract::peak_activation_bytes`).

use edgemed_onnx::pb;

use crate::error::{Error, Result};

/// Default budget: room for the runtime on a 2 GB board beside the OS and other services.
pub const DEFAULT_BUDGET: u64 = 1 << 30;

/// Parses `512M`, `1G`, `1.5GiB`, `1048576` (bytes); `0` or `none` turns the check off.
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim().to_ascii_lowercase();
    if t == "none" || t == "unlimited" {
        return Ok(0);
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale: u64 = match unit.trim().trim_end_matches("ib").trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(Error::Invalid(format!("memory size {s:?}: expected e.g. 512M, 1G, 1.5GiB or bytes"))),
    };
    let n: f64 = num.parse().map_err(|_| Error::Invalid(format!("memory size {s:?}: expected e.g. 512M, 1G, 1.5GiB or bytes")))?;
    Ok((n * scale as f64) as u64)
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// Fails with [`Error::OverBudget`] when `bytes` exceeds a non-zero `budget`.
pub fn check(what: impl FnOnce() -> String, bytes: u64, budget: u64) -> Result<()> {
    if budget != 0 && bytes > budget {
        return Err(Error::OverBudget { what: what(), needed: mib(bytes), budget: mib(budget) });
    }
    Ok(())
}

fn elem_size(t: i32) -> u64 {
    use pb::tensor_proto::DataType as D;
    match D::try_from(t) {
        Ok(D::Double | D::Int64 | D::Uint64 | D::Complex64) => 8,
        Ok(D::Float | D::Int32 | D::Uint32) => 4,
        Ok(D::Float16 | D::Bfloat16 | D::Int16 | D::Uint16) => 2,
        Ok(D::Complex128) => 16,
        _ => 1,
    }
}

/// Bytes the initializers declare (dims x element size), saturating: a forged dims field
/// must not overflow into a small number.
pub fn declared_weight_bytes(graph: &pb::GraphProto) -> u64 {
    graph
        .initializer
        .iter()
        .map(|t| t.dims.iter().fold(elem_size(t.data_type), |acc, &d| acc.saturating_mul(d.max(0) as u64)))
        .fold(0u64, u64::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("512m").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("none").unwrap(), 0);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("1X").is_err());
    }

    #[test]
    fn forged_initializer_dims_saturate() {
        let mut g = pb::GraphProto::default();
        g.initializer.push(pb::TensorProto { dims: vec![1 << 40, 1 << 40], data_type: 1, ..Default::default() });
        assert_eq!(declared_weight_bytes(&g), u64::MAX);
        assert!(check(|| "w".into(), declared_weight_bytes(&g), DEFAULT_BUDGET).is_err());
        assert!(check(|| "w".into(), 10, 0).is_ok());
    }
}
