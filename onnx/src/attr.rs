//! Reading node attributes: one set of helpers for the engine's compiler, its float
//! interpreter and the converter's passes. A missing attribute gives the default (or
//! `None`), as ONNX's operator specifications define defaults.

use crate::pb;

pub fn attr<'a>(n: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

/// An integer attribute, `default` when absent.
pub fn int(n: &pb::NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).map_or(default, |a| a.i)
}

/// An integer attribute, `None` when absent.
pub fn int_opt(n: &pb::NodeProto, name: &str) -> Option<i64> {
    attr(n, name).map(|a| a.i)
}

/// A float attribute, `default` when absent.
pub fn float(n: &pb::NodeProto, name: &str, default: f32) -> f32 {
    attr(n, name).map_or(default, |a| a.f)
}

/// An integer-list attribute, `None` when absent.
pub fn ints(n: &pb::NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}

/// A string attribute (lossy UTF-8), `None` when absent.
pub fn string(n: &pb::NodeProto, name: &str) -> Option<String> {
    attr(n, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_and_absent_attributes() {
        let n = pb::NodeProto {
            attribute: vec![
                pb::AttributeProto { name: "axis".into(), i: -1, ..Default::default() },
                pb::AttributeProto { name: "pads".into(), ints: vec![1, 1, 1, 1], ..Default::default() },
                pb::AttributeProto { name: "alpha".into(), f: 0.2, ..Default::default() },
                pb::AttributeProto { name: "mode".into(), s: b"constant".to_vec(), ..Default::default() },
            ],
            ..Default::default()
        };
        assert_eq!((int(&n, "axis", 1), int(&n, "group", 1), int_opt(&n, "group")), (-1, 1, None));
        assert_eq!(ints(&n, "pads"), Some(vec![1, 1, 1, 1]));
        assert_eq!(ints(&n, "strides"), None);
        assert_eq!((float(&n, "alpha", 0.01), float(&n, "beta", 1.0)), (0.2, 1.0));
        assert_eq!(string(&n, "mode").as_deref(), Some("constant"));
    }
}
