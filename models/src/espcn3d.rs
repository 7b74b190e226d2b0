//! 3-D ESPCN for super-resolution (the low-memory image-quality-transfer seed):
//! a stack of valid (unpadded) 3-D convolutions with ReLU between them, the last one
//! producing `in_channels * r^3` channels, then a 3-D pixel shuffle to r times the
//! resolution.
//!
//! Valid convolutions make the receptive field explicit: an input patch of
//! `P + 2 * halo` voxels per side gives exactly the `r * P` output voxels of its
//! interior, so patches stitched side by side equal the whole-volume output (no
//! seams). The exported model has a fixed patch size and says its halo and rate in
//! metadata (`edgemed.receptive_halo`, `edgemed.upsample_scale`), which
//! `edgemed-run upsample` reads.
//!
//! Weights (safetensors, float32): `conv{i}.weight` `[out, in, k, k, k]` and
//! `conv{i}.bias` `[out]` for i = 0..layers; metadata `kernels` ("3,1,3"),
//! `channels` (hidden widths, "16,8"), `scale` ("2"), `in_channels` ("1").

use std::collections::BTreeMap;

use edgemed_onnx::pb;
use rand::{RngExt, SeedableRng};

use crate::error::{Error, Result};
use crate::weights::{metadata_usize, metadata_usizes, Tensor, Weights};
use edgemed_onnx::builder::{Attr, GraphBuilder, D};

pub const ARCH: &str = "espcn3d";

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub in_channels: usize,
    /// Widths of the hidden layers (one fewer than `kernels`).
    pub channels: Vec<usize>,
    /// Kernel side of every convolution, odd.
    pub kernels: Vec<usize>,
    /// Upsampling rate per axis.
    pub scale: usize,
    /// Interior (output-aligned) input patch per axis; the model's input is patch + 2 halo.
    pub patch: [usize; 3],
}

impl Default for Config {
    fn default() -> Self {
        Config { in_channels: 1, channels: vec![16, 8], kernels: vec![3, 1, 3], scale: 2, patch: [16, 16, 16] }
    }
}

impl Config {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.kernels.is_empty() || self.kernels.len() != self.channels.len() + 1 {
            return bad(format!(
                "{} kernels for {} hidden widths: need one more kernel than widths",
                self.kernels.len(),
                self.channels.len()
            ));
        }
        if self.kernels.iter().any(|k| k % 2 == 0) {
            return bad(format!("kernels {:?} must be odd", self.kernels));
        }
        if self.scale < 1 || self.in_channels < 1 || self.channels.contains(&0) || self.patch.contains(&0) {
            return bad("scale, channels and patch must be positive".into());
        }
        Ok(())
    }

    /// Voxels each output loses per side to the valid convolutions.
    pub fn halo(&self) -> usize {
        self.kernels.iter().map(|k| (k - 1) / 2).sum()
    }

    fn widths(&self) -> Vec<usize> {
        let r3 = self.scale.pow(3);
        [vec![self.in_channels], self.channels.clone(), vec![self.in_channels * r3]].concat()
    }

    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let w = self.widths();
        self.kernels
            .iter()
            .enumerate()
            .flat_map(|(i, &k)| [(format!("conv{i}.weight"), vec![w[i + 1], w[i], k, k, k]), (format!("conv{i}.bias"), vec![w[i + 1]])])
            .collect()
    }

    /// Reads the architecture from a weight file's metadata (keys as in the module docs).
    pub fn from_weights_metadata(md: &BTreeMap<String, String>, patch: [usize; 3], file: &str) -> Result<Self> {
        let list = |key: &str| metadata_usizes(md, key, file);
        let one = |key: &str| metadata_usize(md, key, file);
        let cfg = Config {
            in_channels: one("in_channels")?,
            channels: list("channels")?,
            kernels: list("kernels")?,
            scale: one("scale")?,
            patch,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn weights_metadata(&self) -> BTreeMap<String, String> {
        let join = |v: &[usize]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",");
        BTreeMap::from([
            ("arch".into(), ARCH.into()),
            ("in_channels".into(), self.in_channels.to_string()),
            ("channels".into(), join(&self.channels)),
            ("kernels".into(), join(&self.kernels)),
            ("scale".into(), self.scale.to_string()),
        ])
    }
}

pub fn check_weights(cfg: &Config, weights: &Weights, file: &str) -> Result<()> {
    let expected = cfg.expected_tensors();
    for (name, shape) in &expected {
        match weights.tensors.get(name) {
            None => return Err(Error::MissingTensor { file: file.into(), name: name.clone(), expected: shape.clone() }),
            Some(t) if &t.shape != shape => {
                return Err(Error::TensorShape { file: file.into(), name: name.clone(), got: t.shape.clone(), expected: shape.clone() })
            }
            Some(_) => {}
        }
    }
    let unused: Vec<&String> = weights.tensors.keys().filter(|k| !expected.iter().any(|(n, _)| n == *k)).collect();
    if !unused.is_empty() {
        return Err(Error::UnusedTensors { file: file.into(), names: unused.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ") });
    }
    Ok(())
}

/// He-normal weights and small biases from `seed`.
pub fn init_weights(cfg: &Config, seed: u64) -> Result<Weights> {
    cfg.validate()?;
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut w = Weights { metadata: cfg.weights_metadata(), ..Default::default() };
    for (name, shape) in cfg.expected_tensors() {
        let n: usize = shape.iter().product();
        let data = if name.ends_with(".bias") {
            (0..n).map(|_| rng.random_range(-0.05f32..0.05)).collect()
        } else {
            let fan_in: usize = shape[1..].iter().product();
            let std = (2.0 / fan_in as f32).sqrt();
            // Box-Muller from two uniforms.
            (0..n)
                .map(|_| {
                    let (u, v): (f32, f32) = (rng.random_range(1e-7f32..1.0), rng.random_range(0f32..1.0));
                    std * (-2.0 * u.ln()).sqrt() * (2.0 * std::f32::consts::PI * v).cos()
                })
                .collect()
        };
        w.tensors.insert(name, Tensor::new(shape, data));
    }
    Ok(w)
}

/// Appends a 3-D pixel shuffle (`[N, C r^3, D, H, W] -> [N, C, rD, rH, rW]`, MONAI's and
/// torch's channel order) of `x` to `g` and returns its output name.
pub fn pixel_shuffle_3d(g: &mut GraphBuilder, name: &str, x: &str, channels: usize, r: usize, dims: [usize; 3]) -> String {
    let (c, r, [d, h, w]) = (channels as i64, r as i64, dims.map(|v| v as i64));
    let split = g.init_i64(&format!("{name}.split_shape"), &[8], &[0, c, r, r, r, d, h, w]);
    let merged = g.init_i64(&format!("{name}.merged_shape"), &[5], &[0, c, d * r, h * r, w * r]);
    let y = g.node("Reshape", &format!("{name}.split"), &[x, &split], vec![]);
    let y = g.node("Transpose", &format!("{name}.transpose"), &[&y], vec![Attr::Ints("perm", vec![0, 1, 5, 2, 6, 3, 7, 4])]);
    g.node("Reshape", name, &[&y, &merged], vec![])
}

pub fn build_onnx(cfg: &Config, weights: &Weights) -> Result<pb::ModelProto> {
    cfg.validate()?;
    check_weights(cfg, weights, "weights")?;
    let halo = cfg.halo();
    let inp = cfg.patch.map(|p| p + 2 * halo);
    let mut g = GraphBuilder::new(ARCH);
    let r = cfg.scale;
    g.input_f32("input", &[D::Sym("batch"), D::N(cfg.in_channels as i64), D::N(inp[0] as i64), D::N(inp[1] as i64), D::N(inp[2] as i64)]);
    let mut x = "input".to_string();
    for (i, &k) in cfg.kernels.iter().enumerate() {
        let wt = &weights.tensors[&format!("conv{i}.weight")];
        let bs = &weights.tensors[&format!("conv{i}.bias")];
        let wn = g.init_f32(&format!("conv{i}.weight"), &wt.shape, &wt.data);
        let bn = g.init_f32(&format!("conv{i}.bias"), &bs.shape, &bs.data);
        let k = k as i64;
        x = g.node(
            "Conv",
            &format!("conv{i}"),
            &[&x, &wn, &bn],
            vec![Attr::Ints("kernel_shape", vec![k; 3]), Attr::Ints("pads", vec![0; 6]), Attr::Ints("strides", vec![1; 3])],
        );
        if i + 1 < cfg.kernels.len() {
            x = g.node("Relu", &format!("conv{i}.relu"), &[&x], vec![]);
        }
    }
    let y = pixel_shuffle_3d(&mut g, "shuffle", &x, cfg.in_channels, r, cfg.patch);
    g.node("Identity", "output", &[&y], vec![]);
    let out = cfg.patch.map(|p| (p * r) as i64);
    g.output_f32("output", &[D::Sym("batch"), D::N(cfg.in_channels as i64), D::N(out[0]), D::N(out[1]), D::N(out[2])]);
    let md = vec![
        ("edgemed.arch".to_string(), ARCH.to_string()),
        ("edgemed.upsample_scale".to_string(), r.to_string()),
        ("edgemed.receptive_halo".to_string(), halo.to_string()),
    ];
    Ok(g.into_model("edgemed-models", &md))
}
