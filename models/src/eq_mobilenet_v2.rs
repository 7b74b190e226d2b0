//! The seed paper's rotation-equivariant MobileNetV2 for the cyclic group C_N,
//! from base parameters (safetensors or seeded) to an ONNX graph.
//! The parametrisation, tensor names and layout are specified in
//! `models/EQ_MOBILENET_V2.md`.

use std::collections::BTreeMap;

use edgemed_onnx::metadata::ModelMetadata;
use edgemed_onnx::pb;
use rand::{RngExt, SeedableRng};

use crate::error::{Error, Result};
use crate::rotation::{FilterParam, Rotator};
use crate::weights::{Tensor, Weights};
use edgemed_onnx::builder::{Attr, GraphBuilder, D};

pub const ARCH: &str = "eq_mobilenet_v2";
const BN_EPS: f32 = 1e-5;

/// torchvision's MobileNetV2 stages (expansion t, channels c, repeats n, stride s),
/// with the 160-channel stage at stride 1 so every map stays odd (95 -> 47 -> 23 -> 11 -> 5).
const STAGES: [(usize, usize, usize, usize); 7] =
    [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 1), (6, 320, 1, 1)];
const STEM_CHANNELS: usize = 32;
const HEAD_CHANNELS: usize = 1280;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Order N of the rotation group C_N (1 = conventional MobileNetV2).
    pub group_order: usize,
    pub width: f32,
    pub num_classes: usize,
    /// Side of the square network input; must stay odd through every stride-2 layer.
    pub input_size: usize,
    pub class_names: Vec<String>,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Fold batch norm into the convolutions (as torch.onnx.export with constant folding does).
    pub fold_batch_norm: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            group_order: 4,
            width: 1.0,
            num_classes: 2,
            input_size: 95,
            class_names: vec!["normal".into(), "metastatic".into()],
            mean: [0.5; 3],
            std: [0.25; 3],
            fold_batch_norm: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// RGB (trivial representation) -> regular fields, 3x3.
    Lifting,
    /// Regular -> regular, 1x1.
    Pointwise,
    /// Regular -> regular, 3x3, one filter per channel.
    Depthwise,
}

/// One convolution (+ batch norm) of the network.
#[derive(Debug, Clone)]
pub struct Layer {
    pub name: String,
    pub kind: LayerKind,
    pub fields_in: usize,
    pub fields_out: usize,
    pub stride: usize,
    pub relu6: bool,
}

/// The network as a sequence of blocks; residual adds where shapes allow.
#[derive(Debug, Clone)]
pub struct Plan {
    pub stem: Layer,
    /// Per block: its layers and whether it adds its input back.
    pub blocks: Vec<(Vec<Layer>, bool)>,
    pub head: Layer,
    /// Side of the last feature map (before pooling).
    pub final_size: usize,
}

impl Config {
    /// Number of regular fields standing in for `channels` MobileNetV2 channels.
    pub fn fields(&self, channels: usize) -> usize {
        ((channels as f32 * self.width / self.group_order as f32 + 0.5).floor() as usize).max(1)
    }

    pub fn validate(&self) -> Result<()> {
        FilterParam::for_group(self.group_order)?;
        let bad = |m: String| Err(Error::Config(m));
        if !(self.width > 0.0 && self.width <= 4.0) {
            return bad(format!("width {} must be in (0, 4]", self.width));
        }
        if self.num_classes == 0 || self.class_names.len() != self.num_classes {
            return bad(format!("{} class names for {} classes", self.class_names.len(), self.num_classes));
        }
        // Written so NaN standard deviations fail too.
        if self.std.iter().any(|s| s.is_nan() || *s <= 0.0) || self.mean.iter().any(|m| !m.is_finite()) {
            return bad("mean must be finite and std positive".into());
        }
        Ok(())
    }

    pub fn plan(&self) -> Result<Plan> {
        self.validate()?;
        let mut size = self.input_size;
        let down = |size: &mut usize| -> Result<()> {
            if (*size).is_multiple_of(2) || *size < 3 {
                return Err(Error::Config(format!(
                    "input size {} reaches an even or tiny map ({size}) at a stride-2 layer; 90-degree rotations would not be exact (use 95, 191, ...)",
                    self.input_size
                )));
            }
            *size = (*size - 3) / 2 + 1;
            Ok(())
        };
        down(&mut size)?;
        let layer = |name: String, kind, fields_in, fields_out, stride, relu6| Layer { name, kind, fields_in, fields_out, stride, relu6 };
        let stem = layer("stem".into(), LayerKind::Lifting, 1, self.fields(STEM_CHANNELS), 2, true);
        let mut f_in = stem.fields_out;
        let mut blocks = Vec::new();
        for (t, c, n, s) in STAGES {
            let f_out = self.fields(c);
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                if stride == 2 {
                    down(&mut size)?;
                }
                let b = blocks.len();
                let hidden = f_in * t;
                let mut layers = Vec::new();
                if t != 1 {
                    layers.push(layer(format!("blocks.{b}.expand"), LayerKind::Pointwise, f_in, hidden, 1, true));
                }
                layers.push(layer(format!("blocks.{b}.dw"), LayerKind::Depthwise, hidden, hidden, stride, true));
                layers.push(layer(format!("blocks.{b}.project"), LayerKind::Pointwise, hidden, f_out, 1, false));
                blocks.push((layers, stride == 1 && f_in == f_out));
                f_in = f_out;
            }
        }
        let head = layer("head".into(), LayerKind::Pointwise, f_in, self.fields(HEAD_CHANNELS), 1, true);
        Ok(Plan { stem, blocks, head, final_size: size })
    }

    pub fn metadata(&self) -> ModelMetadata {
        ModelMetadata {
            patch_size: 96.max(self.input_size as u32 + 1),
            crop_size: Some(self.input_size as u32),
            mean: self.mean,
            std: self.std,
            class_names: self.class_names.clone(),
            positive_class: self.num_classes - 1,
            group_order: self.group_order as u32,
            circular_mask: true,
            arch: Some(ARCH.into()),
            raw: Default::default(),
        }
    }

    /// Reads the settings a safetensors file carries (see EQ_MOBILENET_V2.md); absent keys keep `self`'s.
    pub fn with_weights_metadata(mut self, md: &BTreeMap<String, String>, file: &str) -> Result<Self> {
        let bad = |k: &str, v: &str| Error::Safetensors { file: file.into(), reason: format!("metadata {k}={v:?} is malformed") };
        if let Some(a) = md.get("arch") {
            if a != ARCH {
                return Err(Error::Safetensors { file: file.into(), reason: format!("weights are for architecture {a:?}, not {ARCH}") });
            }
        }
        if let Some(v) = md.get("group_order") {
            self.group_order = v.parse().map_err(|_| bad("group_order", v))?;
        }
        if let Some(v) = md.get("width") {
            self.width = v.parse().map_err(|_| bad("width", v))?;
        }
        if let Some(v) = md.get("num_classes") {
            self.num_classes = v.parse().map_err(|_| bad("num_classes", v))?;
        }
        if let Some(v) = md.get("class_names") {
            self.class_names = v.split(',').map(|s| s.trim().to_string()).collect();
        } else if self.class_names.len() != self.num_classes {
            self.class_names = (0..self.num_classes).map(|i| format!("class{i}")).collect();
        }
        let three = |k: &str, v: &str| -> Result<[f32; 3]> {
            let xs: Vec<f32> = v.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>().map_err(|_| bad(k, v))?;
            xs.try_into().map_err(|_| bad(k, v))
        };
        if let Some(v) = md.get("mean") {
            self.mean = three("mean", v)?;
        }
        if let Some(v) = md.get("std") {
            self.std = three("std", v)?;
        }
        Ok(self)
    }

    pub fn weights_metadata(&self) -> BTreeMap<String, String> {
        let join = |x: &[f32; 3]| x.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",");
        BTreeMap::from([
            ("arch".to_string(), ARCH.to_string()),
            ("group_order".into(), self.group_order.to_string()),
            ("width".into(), self.width.to_string()),
            ("num_classes".into(), self.num_classes.to_string()),
            ("class_names".into(), self.class_names.join(",")),
            ("mean".into(), join(&self.mean)),
            ("std".into(), join(&self.std)),
        ])
    }
}

/// Every base tensor the architecture reads, with its shape.
pub fn expected_tensors(cfg: &Config) -> Result<Vec<(String, Vec<usize>)>> {
    let plan = cfg.plan()?;
    let param = FilterParam::for_group(cfg.group_order)?;
    let n = cfg.group_order;
    let mut out = Vec::new();
    let layers = std::iter::once(&plan.stem).chain(plan.blocks.iter().flat_map(|(l, _)| l)).chain(std::iter::once(&plan.head));
    for l in layers {
        let (suffix, shape) = match l.kind {
            LayerKind::Lifting => (
                param.suffix(),
                if param == FilterParam::Grid { vec![l.fields_out, 3, 3, 3] } else { vec![l.fields_out, 3, param.numbers()] },
            ),
            LayerKind::Pointwise => ("weight", vec![l.fields_out, l.fields_in, n]),
            LayerKind::Depthwise => {
                (param.suffix(), if param == FilterParam::Grid { vec![l.fields_out, 3, 3] } else { vec![l.fields_out, param.numbers()] })
            }
        };
        out.push((format!("{}.{suffix}", l.name), shape));
        for bn in ["weight", "bias", "running_mean", "running_var"] {
            out.push((format!("{}.bn.{bn}", l.name), vec![l.fields_out]));
        }
    }
    out.push(("classifier.weight".into(), vec![cfg.num_classes, plan.head.fields_out]));
    out.push(("classifier.bias".into(), vec![cfg.num_classes]));
    Ok(out)
}

/// Checks that `weights` holds exactly the tensors `cfg` needs, with the right shapes.
pub fn check_weights(cfg: &Config, weights: &Weights, file: &str) -> Result<()> {
    let expected = expected_tensors(cfg)?;
    for (name, shape) in &expected {
        match weights.tensors.get(name) {
            None => return Err(Error::MissingTensor { file: file.into(), name: name.clone(), expected: shape.clone() }),
            Some(t) if &t.shape != shape => {
                return Err(Error::TensorShape { file: file.into(), name: name.clone(), got: t.shape.clone(), expected: shape.clone() })
            }
            Some(t) if t.data.iter().any(|x| !x.is_finite()) => return Err(Error::NonFinite { file: file.into(), name: name.clone() }),
            Some(_) => {}
        }
    }
    let known: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let unused: Vec<&str> = weights.tensors.keys().map(|k| k.as_str()).filter(|k| !known.contains(k)).collect();
    if !unused.is_empty() {
        return Err(Error::UnusedTensors { file: file.into(), names: unused.join(", ") });
    }
    if let Some(name) =
        expected.iter().map(|(n, _)| n).find(|n| n.ends_with("running_var") && weights.tensors[*n].data.iter().any(|v| *v < 0.0))
    {
        return Err(Error::Safetensors { file: file.into(), reason: format!("{name} has negative variances") });
    }
    Ok(())
}

/// A seeded initialisation: He-uniform filters and batch-norm parameters like a trained
/// network's (mostly positive shifts, some channels more than 3 sigma above zero,
/// which is what high-bias absorption is for), so tests and benchmarks see realistic activations.
pub fn init_weights(cfg: &Config, seed: u64) -> Result<Weights> {
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut tensors = BTreeMap::new();
    for (name, shape) in expected_tensors(cfg)? {
        let len: usize = shape.iter().product();
        let mut uniform = |lo: f32, hi: f32| -> Vec<f32> { (0..len).map(|_| rng.random_range(lo..hi)).collect() };
        let data = if name.ends_with(".bn.weight") {
            uniform(0.25, 1.25)
        } else if name.ends_with(".bn.bias") {
            uniform(-0.5, 1.5)
        } else if name.ends_with(".bn.running_mean") {
            uniform(-0.2, 0.2)
        } else if name.ends_with(".bn.running_var") {
            uniform(0.5, 2.0)
        } else if name == "classifier.bias" {
            vec![0.0; len]
        } else {
            // Fan-in of the expanded convolution: a base pointwise [O, I, N] reads I*N channels.
            let fan_in: usize = if name.ends_with("coeff") {
                shape[1..shape.len() - 1].iter().product::<usize>().max(1) * 9
            } else {
                shape[1..].iter().product()
            };
            let bound = (6.0 / fan_in as f32).sqrt();
            uniform(-bound, bound)
        };
        tensors.insert(name, Tensor::new(shape, data));
    }
    Ok(Weights { tensors, metadata: cfg.weights_metadata() })
}

/// Expanded ONNX conv weight [F_out*N, C_in, k, k] of one layer (see the layout table in the spec).
fn expand_conv(l: &Layer, base: &Tensor, rot: &Rotator, n: usize) -> (Vec<usize>, Vec<f32>) {
    let p = rot.param().numbers();
    match l.kind {
        LayerKind::Lifting => {
            let mut w = vec![0f32; l.fields_out * n * 3 * 9];
            for o in 0..l.fields_out {
                for r in 0..n {
                    for c in 0..3 {
                        let filt = rot.rotate(&base.data[(o * 3 + c) * p..(o * 3 + c + 1) * p], r);
                        w[((o * n + r) * 3 + c) * 9..][..9].copy_from_slice(&filt);
                    }
                }
            }
            (vec![l.fields_out * n, 3, 3, 3], w)
        }
        LayerKind::Pointwise => {
            let (fo, fi) = (l.fields_out, l.fields_in);
            let mut w = vec![0f32; fo * n * fi * n];
            for o in 0..fo {
                for r in 0..n {
                    for i in 0..fi {
                        for s in 0..n {
                            w[(o * n + r) * fi * n + i * n + s] = base.data[(o * fi + i) * n + (s + n - r) % n];
                        }
                    }
                }
            }
            (vec![fo * n, fi * n, 1, 1], w)
        }
        LayerKind::Depthwise => {
            let mut w = vec![0f32; l.fields_out * n * 9];
            for f in 0..l.fields_out {
                for r in 0..n {
                    w[(f * n + r) * 9..][..9].copy_from_slice(&rot.rotate(&base.data[f * p..(f + 1) * p], r));
                }
            }
            (vec![l.fields_out * n, 1, 3, 3], w)
        }
    }
}

fn repeat_fields(v: &[f32], n: usize) -> Vec<f32> {
    v.iter().flat_map(|x| std::iter::repeat_n(*x, n)).collect()
}

/// Builds the ONNX model (opset 13) from checked base weights.
pub fn build_onnx(cfg: &Config, weights: &Weights) -> Result<pb::ModelProto> {
    check_weights(cfg, weights, "weights")?;
    let plan = cfg.plan()?;
    let n = cfg.group_order;
    let rot = Rotator::new(n)?;
    let mut g = GraphBuilder::new(&format!("{ARCH}_c{n}"));
    let s = cfg.input_size as i64;
    g.input_f32("input", &[D::Sym("batch"), D::N(3), D::N(s), D::N(s)]);
    g.init_f32("relu6.min", &[], &[0.0]);
    g.init_f32("relu6.max", &[], &[6.0]);

    let conv = |g: &mut GraphBuilder, l: &Layer, x: &str| -> String {
        let base =
            &weights.tensors[&format!("{}.{}", l.name, if l.kind == LayerKind::Pointwise { "weight" } else { rot.param().suffix() })];
        let (shape, mut w) = expand_conv(l, base, &rot, n);
        let bn = |k: &str| repeat_fields(&weights.tensors[&format!("{}.bn.{k}", l.name)].data, n);
        let (gamma, beta, mean, var) = (bn("weight"), bn("bias"), bn("running_mean"), bn("running_var"));
        let k = shape[2];
        let pad = if l.kind == LayerKind::Pointwise || l.stride == 2 { 0 } else { 1 };
        let mut attrs = vec![
            Attr::Ints("kernel_shape", vec![k as i64, k as i64]),
            Attr::Ints("strides", vec![l.stride as i64; 2]),
            Attr::Ints("pads", vec![pad; 4]),
            Attr::Ints("dilations", vec![1, 1]),
            Attr::Int("group", if l.kind == LayerKind::Depthwise { shape[0] as i64 } else { 1 }),
        ];
        let y = if cfg.fold_batch_norm {
            let per = w.len() / shape[0];
            let mut bias = vec![0f32; shape[0]];
            for c in 0..shape[0] {
                let a = gamma[c] / (var[c] + BN_EPS).sqrt();
                w[c * per..(c + 1) * per].iter_mut().for_each(|v| *v *= a);
                bias[c] = beta[c] - mean[c] * a;
            }
            let wn = g.init_f32(&format!("{}.conv.weight", l.name), &shape, &w);
            let bn_ = g.init_f32(&format!("{}.conv.bias", l.name), &[shape[0]], &bias);
            g.node("Conv", &format!("{}.conv", l.name), &[x, &wn, &bn_], std::mem::take(&mut attrs))
        } else {
            let wn = g.init_f32(&format!("{}.conv.weight", l.name), &shape, &w);
            let c = g.node("Conv", &format!("{}.conv", l.name), &[x, &wn], std::mem::take(&mut attrs));
            let names: Vec<String> = [("weight", &gamma), ("bias", &beta), ("running_mean", &mean), ("running_var", &var)]
                .iter()
                .map(|(k, v)| g.init_f32(&format!("{}.bn.{k}", l.name), &[shape[0]], v))
                .collect();
            g.node(
                "BatchNormalization",
                &format!("{}.bn", l.name),
                &[&c, &names[0], &names[1], &names[2], &names[3]],
                vec![Attr::Float("epsilon", BN_EPS)],
            )
        };
        if l.relu6 {
            g.node("Clip", &format!("{}.relu6", l.name), &[&y, "relu6.min", "relu6.max"], vec![])
        } else {
            y
        }
    };

    let mut x = conv(&mut g, &plan.stem, "input");
    for (b, (layers, residual)) in plan.blocks.iter().enumerate() {
        let block_in = x.clone();
        for l in layers {
            x = conv(&mut g, l, &x);
        }
        if *residual {
            x = g.node("Add", &format!("blocks.{b}.add"), &[&block_in, &x], vec![]);
        }
    }
    x = conv(&mut g, &plan.head, &x);

    let fs = plan.final_size;
    let mask: Vec<f32> = edgemed_onnx::metadata::circular_mask(fs).into_iter().map(|b| b as u8 as f32).collect();
    let m = g.init_f32("pool.mask", &[1, 1, fs, fs], &mask);
    x = g.node("Mul", "pool.masked", &[&x, &m], vec![]);
    let f_head = plan.head.fields_out;
    let shape = g.init_i64("pool.field_shape", &[5], &[-1, f_head as i64, n as i64, fs as i64, fs as i64]);
    x = g.node("Reshape", "pool.fields", &[&x, &shape], vec![]);
    x = g.node("ReduceMax", "pool.group_max", &[&x], vec![Attr::Ints("axes", vec![2]), Attr::Int("keepdims", 0)]);
    x = g.node("GlobalAveragePool", "pool.gap", &[&x], vec![]);
    x = g.node("Flatten", "pool.flatten", &[&x], vec![Attr::Int("axis", 1)]);
    let cw = &weights.tensors["classifier.weight"];
    let wn = g.init_f32("classifier.weight", &cw.shape, &cw.data);
    let bn = g.init_f32("classifier.bias", &[cfg.num_classes], &weights.tensors["classifier.bias"].data);
    let logits = g.node("Gemm", "logits", &[&x, &wn, &bn], vec![Attr::Int("transB", 1)]);
    debug_assert_eq!(logits, "logits");
    g.output_f32("logits", &[D::Sym("batch"), D::N(cfg.num_classes as i64)]);

    let mut props = cfg.metadata().to_props();
    props.push(("edgemed.width".into(), cfg.width.to_string()));
    Ok(g.into_model("edgemed-models", &props))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotation::rot90;

    fn cfg(n: usize) -> Config {
        Config { group_order: n, width: 0.25, ..Config::default() }
    }

    fn initializer<'a>(m: &'a pb::ModelProto, name: &str) -> (&'a [i64], Vec<f32>) {
        let t = m.graph.as_ref().unwrap().initializer.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no {name}"));
        (&t.dims, t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())
    }

    #[test]
    fn plan_keeps_maps_odd_and_matches_mobilenet_v2() {
        let plan = Config::default().plan().unwrap();
        assert_eq!(plan.final_size, 5);
        assert_eq!(plan.blocks.len(), 17);
        assert_eq!(plan.stem.fields_out * 4, 32, "C4 at width 1 keeps MobileNetV2's 32 stem channels");
        assert_eq!(plan.head.fields_out * 4, 1280);
        assert_eq!(plan.blocks.iter().filter(|(_, res)| *res).count(), 10, "torchvision has 10 residual blocks");
        assert_eq!(Config { group_order: 12, ..Config::default() }.fields(32), 3, "C12 rounds 32 channels to 3 fields");
        let err = Config { input_size: 96, ..Config::default() }.plan().unwrap_err().to_string();
        assert!(err.contains("even"), "{err}");
    }

    #[test]
    fn pointwise_weights_commute_with_the_field_roll() {
        // W[(o, r+1), (i, s+1)] == W[(o, r), (i, s)]: the defining property of a group convolution.
        let n = 4;
        let c = cfg(n);
        let m = build_onnx(&c, &init_weights(&c, 3).unwrap()).unwrap();
        let (dims, w) = initializer(&m, "blocks.1.expand.conv.weight");
        let (co, ci) = (dims[0] as usize, dims[1] as usize);
        for o in 0..co / n {
            for r in 0..n {
                for i in 0..ci / n {
                    for s in 0..n {
                        let a = w[(o * n + r) * ci + i * n + s];
                        let b = w[(o * n + (r + 1) % n) * ci + i * n + (s + 1) % n];
                        assert_eq!(a, b);
                    }
                }
            }
        }
    }

    #[test]
    fn lifting_and_depthwise_filters_are_quarter_turns_of_each_other() {
        for n in [4, 8, 12] {
            let c = cfg(n);
            let m = build_onnx(&c, &init_weights(&c, 5).unwrap()).unwrap();
            for (name, per_out) in [("stem.conv.weight", 3usize), ("blocks.2.dw.conv.weight", 1)] {
                let (dims, w) = initializer(&m, name);
                let fields = dims[0] as usize / n;
                for f in 0..fields {
                    for r in 0..n {
                        for c_in in 0..per_out {
                            let at = |r: usize| -> [f32; 9] { w[((f * n + r) * per_out + c_in) * 9..][..9].try_into().unwrap() };
                            let turned = rot90(&at(r), 1);
                            let next = at((r + n / 4) % n);
                            assert!(turned.iter().zip(&next).all(|(a, b)| (a - b).abs() <= 1e-6), "C{n} {name}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn batch_norm_is_shared_within_fields_and_folding_keeps_it() {
        let c = cfg(8);
        let w = init_weights(&c, 9).unwrap();
        let m = build_onnx(&c, &w).unwrap();
        let (_, gamma) = initializer(&m, "head.bn.weight");
        assert!(gamma.chunks(8).all(|f| f.iter().all(|g| *g == f[0])));
        let folded = build_onnx(&Config { fold_batch_norm: true, ..c }, &w).unwrap();
        let ops: Vec<&str> = folded.graph.as_ref().unwrap().node.iter().map(|n| n.op_type.as_str()).collect();
        assert!(!ops.contains(&"BatchNormalization") && ops.contains(&"Conv"));
    }

    #[test]
    fn weights_round_trip_through_safetensors() {
        let c = cfg(4);
        let w = init_weights(&c, 11).unwrap();
        let path = std::env::temp_dir().join(format!("edgemed-w-{}.safetensors", std::process::id()));
        w.save(&path).unwrap();
        let back = Weights::load(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(back, w);
        let c2 = Config::default().with_weights_metadata(&back.metadata, "w").unwrap();
        assert_eq!((c2.group_order, c2.width), (4, 0.25));
        check_weights(&c2, &back, "w").unwrap();
    }

    #[test]
    fn mismatched_weights_are_named() {
        let c = cfg(4);
        let good = init_weights(&c, 1).unwrap();
        let mut missing = good.clone();
        missing.tensors.remove("blocks.3.dw.weight");
        assert!(check_weights(&c, &missing, "w").unwrap_err().to_string().contains("missing tensor \"blocks.3.dw.weight\""));
        let mut shaped = good.clone();
        shaped.tensors.insert("head.bn.bias".into(), Tensor::new(vec![3], vec![0.0; 3]));
        assert!(check_weights(&c, &shaped, "w").unwrap_err().to_string().contains("\"head.bn.bias\" has shape [3]"));
        let mut extra = good.clone();
        extra.tensors.insert("fc.weight".into(), Tensor::new(vec![1], vec![0.0]));
        assert!(check_weights(&c, &extra, "w").unwrap_err().to_string().contains("fc.weight"));
        let mut nan = good;
        nan.tensors.get_mut("stem.weight").unwrap().data[0] = f32::NAN;
        assert!(check_weights(&c, &nan, "w").unwrap_err().to_string().contains("NaN"));
        // C8 weights read as C4 fail on the steerable coefficient names.
        let c8 = cfg(8);
        assert!(check_weights(&c, &init_weights(&c8, 1).unwrap(), "w").is_err());
    }
}
