//! 3-D BagNets for brain age and sex from T1-weighted MRI: the ResNet-50 BagNet of
//! Brendel and Bethge (2019) with every convolution made 3-D, half the feature maps,
//! instance normalisation instead of batch normalisation, and one linear head per
//! target (age: 1 output, sex: 2 logits) after a global spatial average.
//!
//! The layout follows the reference PyTorch BagNet (`bagnets/pytorchnet.py`): a stem
//! `conv1` (1x1x1) and `conv2` (3x3x3, valid) then `bn1` and ReLU; four stages of
//! Bottleneck blocks (depths 3, 4, 6, 3; planes w, 2w, 4w, 8w; expansion 4; strides
//! 2, 2, 2, 1 on each stage's first block, in its `conv2` and its 1x1x1 downsample).
//! In stage i the first `kernel3[i]` blocks keep a 3x3x3 `conv2`, the others 1x1x1;
//! `kernel3` is [1,1,0,0] (BagNet-9), [1,1,1,0] (-17) or [1,1,1,1] (-33). Every
//! convolution is valid (no padding), so a block's residual is one or two voxels
//! larger than its body and is cropped at the end of each axis, as BagNet does.
//! The receptive field of map voxel i (per axis) is then exactly input voxels
//! `8 i .. 8 i + rf - 1`: all offsets align at 0, the stride is 8.
//!
//! Normalisation: `instance` (torch `InstanceNorm3d`, statistics of each subject's
//! whole volume; emitted as InstanceNormalization) is the paper's; it makes every
//! map value depend, through two numbers per channel and layer, on the whole volume,
//! so the map is local only up to those statistics. `running` (torch
//! `InstanceNorm3d(track_running_stats=True)` in eval mode: fixed statistics; emitted
//! as BatchNormalization, which computes the same) makes each map value a function of
//! its receptive field alone, which tiled inference and the receptive-field test rely
//! on. Weight names and shapes: models/BAGNET3D.md.

use std::collections::BTreeMap;

use edgemed_onnx::pb;

use crate::error::{Error, Result};
use crate::weights::{Init, ParamSource, Weights};
use edgemed_onnx::builder::{Attr, GraphBuilder, D};

pub const ARCH: &str = "bagnet3d";
/// torch's instance-norm epsilon.
const NORM_EPS: f32 = 1e-5;
/// ResNet-50 stage depths.
pub const DEPTHS: [usize; 4] = [3, 4, 6, 3];
pub const STRIDES: [usize; 4] = [2, 2, 2, 1];
const EXPANSION: usize = 4;
/// The map's stride: the product of the stage strides.
pub const STRIDE: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Norm {
    /// Per-subject statistics (torch's default InstanceNorm3d).
    Instance,
    /// Stored running statistics (InstanceNorm3d with track_running_stats, eval mode).
    Running,
}

impl Norm {
    pub fn name(self) -> &'static str {
        match self {
            Norm::Instance => "instance",
            Norm::Running => "running",
        }
    }
}

impl std::str::FromStr for Norm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "instance" => Ok(Norm::Instance),
            "running" => Ok(Norm::Running),
            _ => Err(Error::Config(format!("norm {s:?}: expected instance or running"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// 9, 17 or 33.
    pub receptive_field: usize,
    /// Base width (the reference's 64 halved: 32); planes are w, 2w, 4w, 8w.
    pub width: usize,
    pub in_channels: usize,
    pub age: bool,
    pub sex: bool,
    pub norm: Norm,
    /// Whether the norms have a learnt scale and shift (`.weight`, `.bias`).
    pub affine: bool,
    /// Fixed spatial input size; default symbolic (any size of at least one receptive field).
    pub window: Option<[usize; 3]>,
}

impl Default for Config {
    fn default() -> Self {
        Config { receptive_field: 17, width: 32, in_channels: 1, age: true, sex: true, norm: Norm::Instance, affine: true, window: None }
    }
}

impl Config {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if ![9, 17, 33].contains(&self.receptive_field) {
            return bad(format!("receptive field {}: BagNets have 9, 17 or 33", self.receptive_field));
        }
        if self.width == 0 || self.in_channels == 0 {
            return bad("width and in_channels must be positive".into());
        }
        if !self.age && !self.sex {
            return bad("no head: ask for age, sex or both".into());
        }
        if let Some(w) = self.window {
            if w.iter().any(|&s| s < self.receptive_field) {
                return bad(format!("window {w:?} is smaller than the receptive field {}", self.receptive_field));
            }
        }
        Ok(())
    }

    /// How many blocks of each stage keep a 3x3x3 kernel.
    pub fn kernel3(&self) -> [usize; 4] {
        match self.receptive_field {
            9 => [1, 1, 0, 0],
            17 => [1, 1, 1, 0],
            _ => [1, 1, 1, 1],
        }
    }

    /// Output names in order: `age`, then `sex_0`, `sex_1` (the two sex logits).
    pub fn outputs(&self) -> Vec<&'static str> {
        let mut o = vec![];
        if self.age {
            o.push("age");
        }
        if self.sex {
            o.extend(["sex_0", "sex_1"]);
        }
        o
    }

    pub fn heads(&self) -> &'static str {
        match (self.age, self.sex) {
            (true, true) => "both",
            (true, false) => "age",
            _ => "sex",
        }
    }

    /// Feature width before the heads (8w planes times the expansion).
    pub fn features(&self) -> usize {
        8 * self.width * EXPANSION
    }

    /// Map voxels along an axis of `n` input voxels (0 if smaller than the receptive field).
    pub fn map_len(&self, n: usize) -> usize {
        if n < self.receptive_field {
            0
        } else {
            (n - self.receptive_field) / STRIDE + 1
        }
    }

    /// Settings stored in (and read back from) a weight file's metadata.
    pub fn weights_metadata(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("arch".into(), ARCH.into()),
            ("receptive_field".into(), self.receptive_field.to_string()),
            ("width".into(), self.width.to_string()),
            ("in_channels".into(), self.in_channels.to_string()),
            ("heads".into(), self.heads().into()),
            ("norm".into(), self.norm.name().into()),
        ])
    }

    /// The settings a weight file's tensors fix: width and input channels from
    /// `conv1.weight`, heads from `fc_age.*` / `fc_sex.*`, normalisation from
    /// `bn1.running_mean` and `bn1.weight`; the receptive field from the metadata key
    /// `receptive_field` when there is one (it cannot be told from the tensors of
    /// stages whose kernels are all 1x1x1 apart from their shapes, which it checks).
    pub fn with_weights(mut self, w: &Weights, file: &str) -> Result<Self> {
        let c1 = w.tensors.get("conv1.weight").ok_or_else(|| Error::MissingTensor {
            file: file.into(),
            name: "conv1.weight".into(),
            expected: vec![self.width, self.in_channels, 1, 1, 1],
        })?;
        if c1.shape.len() != 5 {
            return Err(Error::TensorShape {
                file: file.into(),
                name: "conv1.weight".into(),
                got: c1.shape.clone(),
                expected: vec![self.width, self.in_channels, 1, 1, 1],
            });
        }
        self.width = c1.shape[0];
        self.in_channels = c1.shape[1];
        self.age = w.tensors.contains_key("fc_age.weight");
        self.sex = w.tensors.contains_key("fc_sex.weight");
        self.norm = if w.tensors.contains_key("bn1.running_mean") { Norm::Running } else { Norm::Instance };
        self.affine = w.tensors.contains_key("bn1.weight");
        if let Some(rf) = w.metadata.get("receptive_field") {
            self.receptive_field =
                rf.trim().parse().map_err(|_| Error::Config(format!("{file}: metadata receptive_field={rf:?} is not an integer")))?;
        } else {
            // The 3x3x3 blocks show in conv2's kernel: the last stage whose first block has one.
            let k3 = |s: usize| w.tensors.get(&format!("layer{s}.0.conv2.weight")).is_some_and(|t| t.shape.get(2) == Some(&3));
            self.receptive_field = if k3(4) {
                33
            } else if k3(3) {
                17
            } else {
                9
            };
        }
        self.validate()?;
        Ok(self)
    }
}

/// Walks the reference module tree once, taking parameters by its names and emitting ONNX.
struct Emitter<'c, 's> {
    cfg: &'c Config,
    g: GraphBuilder,
    params: ParamSource<'s>,
}

impl Emitter<'_, '_> {
    fn param(&mut self, name: &str, shape: &[usize], init: Init) -> Result<String> {
        let t = self.params.get(name, shape, init)?;
        Ok(self.g.init_f32(name, &t.shape, &t.data))
    }

    /// A bias-free valid Conv3d named `p` (weight `p.weight`).
    fn conv(&mut self, x: &str, p: &str, cin: usize, cout: usize, k: usize, stride: usize) -> Result<String> {
        let w = self.param(&format!("{p}.weight"), &[cout, cin, k, k, k], Init::HeNormal { fan_in: cin * k * k * k, gain: 1.0 })?;
        Ok(self.g.node(
            "Conv",
            p,
            &[x, &w],
            vec![
                Attr::Ints("kernel_shape", vec![k as i64; 3]),
                Attr::Ints("pads", vec![0; 6]),
                Attr::Ints("strides", vec![stride as i64; 3]),
            ],
        ))
    }

    /// The norm named `p` over `c` channels; `gain` scales a seeded scale (small on a
    /// block's last norm, so a seeded 16-block network neither explodes nor vanishes).
    fn norm(&mut self, x: &str, p: &str, c: usize, gain: f32) -> Result<String> {
        let (s, b) = if self.cfg.affine {
            (
                self.param(&format!("{p}.weight"), &[c], Init::Normal(gain, 0.1 * gain))?,
                self.param(&format!("{p}.bias"), &[c], Init::Normal(0.0, 0.1))?,
            )
        } else {
            (
                self.g.init_f32(&format!("{p}.unit_scale"), &[c], &vec![1.0; c]),
                self.g.init_f32(&format!("{p}.zero_shift"), &[c], &vec![0.0; c]),
            )
        };
        Ok(match self.cfg.norm {
            Norm::Instance => self.g.node("InstanceNormalization", p, &[x, &s, &b], vec![Attr::Float("epsilon", NORM_EPS)]),
            Norm::Running => {
                let m = self.param(&format!("{p}.running_mean"), &[c], Init::Normal(0.0, 0.1))?;
                let v = self.param(&format!("{p}.running_var"), &[c], Init::Constant(1.0))?;
                self.g.node("BatchNormalization", p, &[x, &s, &b, &m, &v], vec![Attr::Float("epsilon", NORM_EPS)])
            }
        })
    }

    fn relu(&mut self, x: &str) -> String {
        self.g.node("Relu", &format!("{x}.relu"), &[x], vec![])
    }

    /// Bottleneck `p`: conv1 1x1x1, conv2 kxkxk (stride), conv3 1x1x1 (4 planes), and the
    /// residual (downsample 1x1x1 conv + norm when the stride or width changes), cropped
    /// at the end of each axis to the body's size.
    fn bottleneck(&mut self, x: &str, p: &str, cin: usize, planes: usize, k: usize, stride: usize) -> Result<String> {
        let cout = planes * EXPANSION;
        let y = self.conv(x, &format!("{p}.conv1"), cin, planes, 1, 1)?;
        let y = self.norm(&y, &format!("{p}.bn1"), planes, 1.0)?;
        let y = self.relu(&y);
        let y = self.conv(&y, &format!("{p}.conv2"), planes, planes, k, stride)?;
        let y = self.norm(&y, &format!("{p}.bn2"), planes, 1.0)?;
        let y = self.relu(&y);
        let y = self.conv(&y, &format!("{p}.conv3"), planes, cout, 1, 1)?;
        let y = self.norm(&y, &format!("{p}.bn3"), cout, 0.3)?;
        let mut res = x.to_string();
        if stride != 1 || cin != cout {
            res = self.conv(x, &format!("{p}.downsample.0"), cin, cout, 1, stride)?;
            res = self.norm(&res, &format!("{p}.downsample.1"), cout, 1.0)?;
        }
        // Residual size floor((n-1)/s)+1 against the body's floor((n-k)/s)+1: for
        // s = 1 the difference is k-1, for s = 2 and k = 3 it is 1, for k = 1 it is 0,
        // whatever n is, so the crop is a constant and symbolic sizes keep working.
        let diff = if stride == 1 { k - 1 } else { (k - 1) / stride.max(1) };
        if diff > 0 {
            let starts = self.g.init_i64(&format!("{p}.crop.starts"), &[3], &[0, 0, 0]);
            let ends = self.g.init_i64(&format!("{p}.crop.ends"), &[3], &[-(diff as i64); 3]);
            let axes = self.g.init_i64(&format!("{p}.crop.axes"), &[3], &[2, 3, 4]);
            res = self.g.node("Slice", &format!("{p}.crop"), &[&res, &starts, &ends, &axes], vec![]);
        }
        let y = self.g.node("Add", &format!("{p}.add"), &[&y, &res], vec![]);
        Ok(self.relu(&y))
    }

    fn network(&mut self, x: &str) -> Result<String> {
        let (cfg, w) = (self.cfg, self.cfg.width);
        let y = self.conv(x, "conv1", cfg.in_channels, w, 1, 1)?;
        let y = self.conv(&y, "conv2", w, w, 3, 1)?;
        let y = self.norm(&y, "bn1", w, 1.0)?;
        let mut y = self.relu(&y);
        let mut cin = w;
        let k3 = cfg.kernel3();
        for s in 0..4 {
            let planes = w << s;
            for b in 0..DEPTHS[s] {
                let k = if b < k3[s] { 3 } else { 1 };
                let stride = if b == 0 { STRIDES[s] } else { 1 };
                y = self.bottleneck(&y, &format!("layer{}.{b}", s + 1), cin, planes, k, stride)?;
                cin = planes * EXPANSION;
            }
        }
        Ok(y)
    }

    /// Global average, flatten, and one Gemm whose rows are the heads' (age, then sex).
    fn heads(&mut self, x: &str) -> Result<String> {
        let c = self.cfg.features();
        let pooled = self.g.node("GlobalAveragePool", "avgpool", &[x], vec![]);
        let flat = self.g.node("Flatten", "flatten", &[&pooled], vec![Attr::Int("axis", 1)]);
        let (mut wrows, mut bias) = (vec![], vec![]);
        let std = 1.0 / (c as f32).sqrt();
        if self.cfg.age {
            wrows.extend(self.params.get("fc_age.weight", &[1, c], Init::Normal(0.0, std))?.data);
            // A seeded age head starts near a middle-aged adult.
            bias.extend(self.params.get("fc_age.bias", &[1], Init::Constant(50.0))?.data);
        }
        if self.cfg.sex {
            wrows.extend(self.params.get("fc_sex.weight", &[2, c], Init::Normal(0.0, std))?.data);
            bias.extend(self.params.get("fc_sex.bias", &[2], Init::Normal(0.0, 0.1))?.data);
        }
        let k = bias.len();
        let wn = self.g.init_f32("fc.weight", &[k, c], &wrows);
        let bn = self.g.init_f32("fc.bias", &[k], &bias);
        // The Gemm computes the graph output itself (no Identity after it), the head
        // `edgemed export --local-map` rewrites.
        Ok(self.g.node("Gemm", "prediction", &[&flat, &wn, &bn], vec![Attr::Int("transB", 1)]))
    }
}

/// Builds the ONNX graph (input `input` `[batch, C, x, y, z]`, output `prediction`
/// `[batch, K]` with K = 1, 2 or 3 as [`Config::outputs`] lists) and returns it with
/// the parameters used (the file's, or the seeded ones when `weights` is `None`).
pub fn build_onnx(cfg: &Config, weights: Option<(&Weights, &str)>, seed: u64) -> Result<(pb::ModelProto, Weights)> {
    cfg.validate()?;
    let params = ParamSource::from_file_or_seed(weights, seed, || cfg.weights_metadata());
    let mut e = Emitter { cfg, g: GraphBuilder::new(ARCH), params };
    let spatial: Vec<D> = match cfg.window {
        Some(w) => w.iter().map(|&s| D::N(s as i64)).collect(),
        None => vec![D::Sym("x"), D::Sym("y"), D::Sym("z")],
    };
    e.g.input_f32("input", &[vec![D::Sym("batch"), D::N(cfg.in_channels as i64)], spatial].concat());
    let features = e.network("input")?;
    e.heads(&features)?;
    e.g.output_f32("prediction", &[D::Sym("batch"), D::N(cfg.outputs().len() as i64)]);
    let md = vec![
        ("edgemed.arch".to_string(), ARCH.to_string()),
        ("edgemed.receptive_field".to_string(), cfg.receptive_field.to_string()),
        ("edgemed.map_stride".to_string(), STRIDE.to_string()),
        ("edgemed.outputs".to_string(), cfg.outputs().join(",")),
        ("edgemed.heads".to_string(), cfg.heads().to_string()),
        ("edgemed.norm".to_string(), cfg.norm.name().to_string()),
        ("edgemed.width".to_string(), cfg.width.to_string()),
    ];
    let Emitter { g, params, .. } = e;
    let mut used = params.finish()?;
    used.metadata.extend(cfg.weights_metadata());
    Ok((g.into_model("edgemed-models", &md), used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel3_gives_the_receptive_field() {
        // Walk the kernels and strides: rf grows by (k-1) times the current jump.
        for rf in [9, 17, 33] {
            let cfg = Config { receptive_field: rf, ..Config::default() };
            let (mut r, mut jump) = (3, 1);
            for s in 0..4 {
                for b in 0..DEPTHS[s] {
                    let k = if b < cfg.kernel3()[s] { 3 } else { 1 };
                    r += (k - 1) * jump;
                    if b == 0 {
                        jump *= STRIDES[s];
                    }
                }
            }
            assert_eq!((r, jump), (rf, STRIDE));
        }
    }

    #[test]
    fn seeded_weights_round_trip_and_name_the_reference_modules() {
        for norm in [Norm::Instance, Norm::Running] {
            let cfg = Config { width: 4, norm, receptive_field: 9, ..Config::default() };
            let (_, w) = build_onnx(&cfg, None, 3).unwrap();
            for name in
                ["conv1.weight", "conv2.weight", "bn1.weight", "layer1.0.downsample.0.weight", "layer4.2.conv3.weight", "fc_sex.bias"]
            {
                assert!(w.tensors.contains_key(name), "{name}");
            }
            assert_eq!(w.tensors["layer2.0.conv2.weight"].shape, vec![8, 8, 3, 3, 3]);
            assert_eq!(w.tensors["layer3.0.conv2.weight"].shape, vec![16, 16, 1, 1, 1]);
            let back = Config::default().with_weights(&w, "seeded").unwrap();
            assert_eq!(back, cfg);
            build_onnx(&back, Some((&w, "seeded")), 0).unwrap();
        }
    }

    #[test]
    fn bad_settings_are_one_line() {
        let e = Config { receptive_field: 12, ..Config::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("9, 17 or 33"), "{e}");
        let e = Config { age: false, sex: false, ..Config::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("no head"), "{e}");
    }
}
