//! Model metadata carried in ONNX `metadata_props` under the `edgemed.` prefix.
//! The models crate writes these; models from elsewhere get sane PCam defaults.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};

/// What the classification pipeline needs to know about a model.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelMetadata {
    /// Side of the square raw patch the model was trained on (PCam: 96).
    pub patch_size: u32,
    /// Side of the square centre crop fed to the network; `None`: the model's input size.
    pub crop_size: Option<u32>,
    /// Per-channel mean and std applied after scaling pixels to [0, 1].
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub class_names: Vec<String>,
    /// Index of the class whose probability is reported (PCam: metastatic tissue).
    pub positive_class: usize,
    /// Order N of the rotation group C_N; 1 for a conventional network.
    pub group_order: u32,
    /// Whether the runtime must zero the input outside its inscribed circle.
    pub circular_mask: bool,
    pub arch: Option<String>,
    /// Every `metadata_props` entry, including ones this struct does not interpret.
    pub raw: BTreeMap<String, String>,
}

pub const PREFIX: &str = "edgemed.";

/// ImageNet statistics: what most PCam models trained with torchvision transforms expect.
pub const DEFAULT_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const DEFAULT_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl Default for ModelMetadata {
    fn default() -> Self {
        ModelMetadata {
            patch_size: 96,
            crop_size: None,
            mean: DEFAULT_MEAN,
            std: DEFAULT_STD,
            class_names: vec!["normal".into(), "metastatic".into()],
            positive_class: 1,
            group_order: 1,
            circular_mask: false,
            arch: None,
            raw: BTreeMap::new(),
        }
    }
}

impl ModelMetadata {
    /// Reads the `edgemed.*` keys; missing keys keep their defaults, malformed ones are errors.
    pub fn from_props(path: &Path, props: &[(String, String)]) -> Result<Self> {
        let mut md = ModelMetadata::default();
        for (k, v) in props {
            md.raw.insert(k.clone(), v.clone());
        }
        let bad = |key: &str, value: &str, reason: &str| Error::BadMetadata {
            path: path.to_path_buf(),
            key: key.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let get = |name: &str| md.raw.get(&format!("{PREFIX}{name}")).cloned();
        let parse_u32 = |name: &str, v: &str| -> Result<u32> {
            v.trim().parse::<u32>().ok().filter(|x| *x > 0).ok_or_else(|| bad(name, v, "expected a positive integer"))
        };
        let parse3 = |name: &str, v: &str| -> Result<[f32; 3]> {
            let xs: Vec<f32> = v
                .split(',')
                .map(|s| s.trim().parse::<f32>())
                .collect::<Result<_, _>>()
                .map_err(|_| bad(name, v, "expected three comma-separated numbers"))?;
            match xs.as_slice() {
                [a, b, c] if xs.iter().all(|x| x.is_finite()) => Ok([*a, *b, *c]),
                _ => Err(bad(name, v, "expected three comma-separated finite numbers")),
            }
        };
        if let Some(v) = get("patch_size") {
            md.patch_size = parse_u32("patch_size", &v)?;
        }
        if let Some(v) = get("crop_size") {
            md.crop_size = Some(parse_u32("crop_size", &v)?);
        }
        if let Some(v) = get("mean") {
            md.mean = parse3("mean", &v)?;
        }
        if let Some(v) = get("std") {
            md.std = parse3("std", &v)?;
            if md.std.iter().any(|s| *s <= 0.0) {
                return Err(bad("std", &v, "standard deviations must be positive"));
            }
        }
        if let Some(v) = get("class_names") {
            md.class_names = v.split(',').map(|s| s.trim().to_string()).collect();
            if md.class_names.iter().any(|s| s.is_empty()) {
                return Err(bad("class_names", &v, "empty class name"));
            }
        }
        if let Some(v) = get("positive_class") {
            md.positive_class = match md.class_names.iter().position(|c| *c == v) {
                Some(i) => i,
                None => v.trim().parse::<usize>().map_err(|_| bad("positive_class", &v, "neither a class name nor an index"))?,
            };
        } else if md.positive_class >= md.class_names.len() {
            md.positive_class = md.class_names.len() - 1;
        }
        if md.positive_class >= md.class_names.len() {
            return Err(bad("positive_class", &md.positive_class.to_string(), "index beyond the class names"));
        }
        if let Some(v) = get("group_order") {
            md.group_order = parse_u32("group_order", &v)?;
        }
        if let Some(v) = get("circular_mask") {
            md.circular_mask = match v.trim() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => return Err(bad("circular_mask", &v, "expected true or false")),
            };
        }
        md.arch = get("arch");
        Ok(md)
    }

    /// The `metadata_props` entries that describe this metadata (what the models crate writes).
    pub fn to_props(&self) -> Vec<(String, String)> {
        let join = |xs: &[f32; 3]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",");
        let mut props = vec![
            ("patch_size".to_string(), self.patch_size.to_string()),
            ("mean".into(), join(&self.mean)),
            ("std".into(), join(&self.std)),
            ("class_names".into(), self.class_names.join(",")),
            ("positive_class".into(), self.positive_class.to_string()),
            ("group_order".into(), self.group_order.to_string()),
            ("field_size".into(), self.group_order.to_string()),
            ("circular_mask".into(), self.circular_mask.to_string()),
        ];
        if let Some(c) = self.crop_size {
            props.push(("crop_size".into(), c.to_string()));
        }
        if let Some(a) = &self.arch {
            props.push(("arch".into(), a.clone()));
        }
        props.into_iter().map(|(k, v)| (format!("{PREFIX}{k}"), v)).collect()
    }
}

/// Whether pixel (i, j) of an S x S map lies in its inscribed circle:
/// (i - c)^2 + (j - c)^2 <= (S/2)^2, c = (S - 1)/2. Symmetric under 90-degree
/// rotations, which keeps C4 invariance exact.
pub fn in_circle(s: usize, i: usize, j: usize) -> bool {
    let c = (s as f64 - 1.0) / 2.0;
    (i as f64 - c).powi(2) + (j as f64 - c).powi(2) <= (s as f64 / 2.0).powi(2)
}

/// The inscribed-circle mask of an S x S map, row-major (see [`in_circle`]).
pub fn circular_mask(s: usize) -> Vec<bool> {
    (0..s * s).map(|k| in_circle(s, k / s, k % s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_rot90_symmetric_and_round() {
        for s in [5, 95] {
            let m = circular_mask(s);
            for i in 0..s {
                for j in 0..s {
                    assert_eq!(m[i * s + j], m[j * s + (s - 1 - i)]);
                }
            }
            assert!(!m[0] && m[(s / 2) * s + s / 2]);
        }
        // 5x5: corners out, everything else in (the 6.25 radius squared cuts exactly the corners).
        assert_eq!(circular_mask(5).iter().filter(|b| !**b).count(), 4);
    }

    #[test]
    fn round_trips_through_props() {
        let md = ModelMetadata {
            crop_size: Some(95),
            mean: [0.5, 0.25, 0.125],
            group_order: 8,
            circular_mask: true,
            arch: Some("eq_mobilenet_v2".into()),
            ..Default::default()
        };
        let back = ModelMetadata::from_props(Path::new("m.onnx"), &md.to_props()).unwrap();
        assert_eq!(ModelMetadata { raw: Default::default(), ..back }, md);
    }

    #[test]
    fn defaults_without_props() {
        let md = ModelMetadata::from_props(Path::new("m.onnx"), &[]).unwrap();
        assert_eq!(md.patch_size, 96);
        assert_eq!(md.positive_class, 1);
        assert!(!md.circular_mask);
    }

    #[test]
    fn malformed_values_are_errors() {
        for (k, v) in [
            ("edgemed.mean", "0.5,0.5"),
            ("edgemed.std", "1,0,1"),
            ("edgemed.patch_size", "-3"),
            ("edgemed.circular_mask", "maybe"),
            ("edgemed.positive_class", "tumour"),
        ] {
            let err = ModelMetadata::from_props(Path::new("m.onnx"), &[(k.to_string(), v.to_string())]).unwrap_err();
            assert!(err.to_string().contains(k.trim_start_matches(PREFIX)), "{err}");
        }
    }
}
