//! The aging twin of the head-CT seed paper: a 3-D GLOW (openai/glow, extended to
//! volumes) whose encoder G maps a volume to multi-scale latents, whose decoder
//! G⁻¹ is derived analytically from the same weights, and a temporal model P that
//! advances the (normalised) latents by one year. `edgemed-run age` computes
//! x+ = G⁻¹(P^n(G(x))).
//!
//! Architecture (tensors NCXYZ; convolutions as torch's conv3d, 3x3x3 ones with
//! zero padding 1):
//! - `squeeze`: y[n, 8c + 4a + 2b + d, i, j, k] = x[n, c, 2i+a, 2j+b, 2k+d].
//! - Encoder: z = squeeze(x); for each level l of L: K flow steps; below the top,
//!   split z into halves z1 | z2, a learned prior conv3x3x3(z1) gives (mean, logs)
//!   interleaved (even / odd channels), the level's latent is
//!   eps_l = (z2 - mean) exp(-logs), and z = squeeze(z1). The top latent is
//!   (z - top.mean) exp(-top.logs), per channel. Channels: C_0 = 8 in_channels,
//!   C_{l+1} = 4 C_l; level l runs at grid / 2^(l+1).
//! - Flow step: actnorm (z + bias) exp(logs); invertible 1x1x1 conv with the LU
//!   parametrisation W = P L (U + diag(sign_s exp(log_s))), L unit lower and U
//!   strictly upper triangular (entries outside those triangles are ignored, as
//!   openai/glow masks them); affine coupling: h = conv2(relu(conv1(relu(conv0(z1))))),
//!   shift = h[0::2], scale = sigmoid(h[1::2] + 2), z2 = (z2 + shift) scale.
//! - `logdet` is the flow steps' log |det dz/dx| (actnorm, 1x1x1 conv, coupling),
//!   without prior terms.
//! - Temporal model P: for each level, out_l = z_l + stack_l(z_l), the stack being
//!   `temporal_depths[l]` 3x3x3 convolutions (width `temporal_widths[l]`) with ReLU between.
//!
//! The three exported models share one packed latent: `latent` [N, T] holds each
//! level's latent flattened in C order ([C, X, Y, Z]), level 0 first, so each model
//! has a single input (encoder: `input` -> `latent`, `logdet`; decoder: `latent` ->
//! `output`; temporal: `latent` -> `latent_next`). The layout is in the metadata
//! (`edgemed.glow.latent_shapes`).
//!
//! In the decoder the inverses are folded where exact: actnorm and the 1x1x1 conv
//! become one conv with weight diag(exp(-logs)) W⁻¹ (W⁻¹ computed in f64), the
//! coupling divides by the scale, the split draws z2 = mean + exp(logs) eps_l.
//! The encoder folds actnorm into the 1x1x1 conv the same way. The interleaved
//! (even/odd) outputs of the coupling and prior convs are reordered into two
//! contiguous halves at export, so the graphs slice instead of striding.
//!
//! Weights (safetensors, float32), for level l, step k:
//! `flow.{l}.{k}.actnorm.{bias,logs}` [C_l];
//! `flow.{l}.{k}.invconv.{p,lower,upper}` [C_l, C_l] (p a permutation matrix),
//! `flow.{l}.{k}.invconv.{log_s,sign_s}` [C_l];
//! `flow.{l}.{k}.coupling.conv0.weight` [width, C_l/2, 3, 3, 3], `conv1.weight`
//! [width, width, 1, 1, 1], `conv2.weight` [C_l, width, 3, 3, 3], each with `.bias`;
//! `prior.{l}.{weight,bias}` ([C_l, C_l/2, 3, 3, 3], [C_l]) below the top,
//! `prior.top.{mean,logs}` [C_{L-1}];
//! `temporal.{l}.conv{j}.{weight,bias}`.
//! Metadata: `arch` = glow3d, `in_channels`, `levels`, `steps`, `width`,
//! `temporal_widths`, `temporal_depths` (comma lists, one per level).

use std::collections::BTreeMap;

use edgemed_onnx::pb;

use crate::error::{Error, Result};
use crate::weights::{metadata_usize, metadata_usizes, Init, ParamSource, Tensor, Weights};
use edgemed_onnx::builder::{Attr, GraphBuilder, D};

pub const ARCH: &str = "glow3d";
/// The seed paper's latent normalisation z <- clip((z + a) / b, 0, 1).
pub const LATENT_OFFSET: f32 = 24.0;
pub const LATENT_SCALE: f32 = 48.0;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub in_channels: usize,
    pub levels: usize,
    pub steps: usize,
    /// Hidden width of the coupling networks.
    pub width: usize,
    pub temporal_widths: Vec<usize>,
    pub temporal_depths: Vec<usize>,
    /// Input grid (X, Y, Z) of the exported models; each divisible by 2^levels.
    pub grid: [usize; 3],
    /// Volume intensities map to model inputs as v * scale + offset (and back).
    pub intensity_scale: f32,
    pub intensity_offset: f32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            in_channels: 1,
            levels: 3,
            steps: 4,
            width: 16,
            temporal_widths: vec![16, 32, 64],
            temporal_depths: vec![2, 2, 2],
            grid: [128, 128, 128],
            // CT windowed to [0, 255] (clip(HU + 80, 0, 255)) maps to [-0.5, 0.5] as in openai/glow.
            intensity_scale: 1.0 / 255.0,
            intensity_offset: -0.5,
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.levels == 0 || self.steps == 0 || self.width == 0 || self.in_channels == 0 {
            return bad("levels, steps, width and in_channels must be positive".into());
        }
        if self.temporal_widths.len() != self.levels || self.temporal_depths.len() != self.levels {
            return bad(format!(
                "temporal widths {:?} and depths {:?}: need one per level ({})",
                self.temporal_widths, self.temporal_depths, self.levels
            ));
        }
        if self.temporal_widths.contains(&0) || self.temporal_depths.contains(&0) {
            return bad("temporal widths and depths must be positive".into());
        }
        let f = 1usize << self.levels;
        if self.grid.iter().any(|&g| g == 0 || g % f != 0) {
            return bad(format!("grid {:?}: each size must be a positive multiple of {f} (2^levels)", self.grid));
        }
        if !(self.intensity_scale.is_finite() && self.intensity_scale != 0.0 && self.intensity_offset.is_finite()) {
            return bad("intensity scale must be finite and non-zero".into());
        }
        Ok(())
    }

    /// Channels of the flow at level l.
    pub fn channels(&self, l: usize) -> usize {
        8 * self.in_channels * 4usize.pow(l as u32)
    }

    /// Spatial size at level l.
    pub fn level_grid(&self, l: usize) -> [usize; 3] {
        self.grid.map(|g| g >> (l + 1))
    }

    /// Each level's latent as [C, X, Y, Z], level 0 first.
    pub fn latent_shapes(&self) -> Vec<[usize; 4]> {
        (0..self.levels)
            .map(|l| {
                let c = if l + 1 < self.levels { self.channels(l) / 2 } else { self.channels(l) };
                let [x, y, z] = self.level_grid(l);
                [c, x, y, z]
            })
            .collect()
    }

    /// Length of the packed latent per batch item.
    pub fn latent_len(&self) -> usize {
        self.latent_shapes().iter().map(|s| s.iter().product::<usize>()).sum()
    }

    pub fn weights_metadata(&self) -> BTreeMap<String, String> {
        let join = |v: &[usize]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",");
        BTreeMap::from([
            ("arch".into(), ARCH.into()),
            ("in_channels".into(), self.in_channels.to_string()),
            ("levels".into(), self.levels.to_string()),
            ("steps".into(), self.steps.to_string()),
            ("width".into(), self.width.to_string()),
            ("temporal_widths".into(), join(&self.temporal_widths)),
            ("temporal_depths".into(), join(&self.temporal_depths)),
        ])
    }

    /// Reads the architecture from weight-file metadata; `grid` and intensities stay the caller's.
    pub fn with_weights_metadata(mut self, md: &BTreeMap<String, String>, file: &str) -> Result<Self> {
        let list = |key: &str| metadata_usizes(md, key, file);
        let one = |key: &str| metadata_usize(md, key, file);
        if let Some(a) = md.get("arch") {
            if a != ARCH {
                return Err(Error::Config(format!("{file}: metadata arch {a:?}, expected {ARCH:?}")));
            }
        }
        self.in_channels = one("in_channels")?;
        self.levels = one("levels")?;
        self.steps = one("steps")?;
        self.width = one("width")?;
        self.temporal_widths = list("temporal_widths")?;
        self.temporal_depths = list("temporal_depths")?;
        self.validate()?;
        Ok(self)
    }

    fn model_metadata(&self, role: &str) -> Vec<(String, String)> {
        let shapes = self.latent_shapes().iter().map(|s| s.map(|d| d.to_string()).join("x")).collect::<Vec<_>>().join(",");
        vec![
            ("edgemed.arch".into(), format!("{ARCH}_{role}")),
            ("edgemed.glow.grid".into(), self.grid.map(|g| g.to_string()).join(",")),
            ("edgemed.glow.latent_shapes".into(), shapes),
            ("edgemed.glow.latent_offset".into(), LATENT_OFFSET.to_string()),
            ("edgemed.glow.latent_scale".into(), LATENT_SCALE.to_string()),
            ("edgemed.glow.intensity_scale".into(), self.intensity_scale.to_string()),
            ("edgemed.glow.intensity_offset".into(), self.intensity_offset.to_string()),
        ]
    }
}

/// The parameters of one flow step, as read (before folding).
struct Step {
    actnorm_bias: Vec<f64>,
    actnorm_logs: Vec<f64>,
    /// W = P L (U + diag(sign_s exp(log_s))), row-major [C, C].
    w: Vec<f64>,
    log_s_sum: f64,
    conv0: (Tensor, Tensor),
    conv1: (Tensor, Tensor),
    /// Output channels reordered: shift (even) then scale (odd) halves.
    conv2: (Tensor, Tensor),
}

struct Params {
    steps: Vec<Vec<Step>>,
    /// Prior convs below the top, outputs reordered: mean then logs halves.
    priors: Vec<(Tensor, Tensor)>,
    top_mean: Vec<f32>,
    top_logs: Vec<f32>,
    /// temporal[l] = the stack's (weight, bias) convs.
    temporal: Vec<Vec<(Tensor, Tensor)>>,
}

/// Moves the even output channels of a conv to the first half, the odd ones to the
/// second (openai/glow reads shift/mean from 0::2 and scale/logs from 1::2).
fn deinterleave(w: &Tensor, b: &Tensor) -> (Tensor, Tensor) {
    let c = w.shape[0];
    let inner = w.len() / c;
    let order: Vec<usize> = (0..c).step_by(2).chain((1..c).step_by(2)).collect();
    let wd = order.iter().flat_map(|&o| w.data[o * inner..(o + 1) * inner].iter().copied()).collect();
    let bd = order.iter().map(|&o| b.data[o]).collect();
    (Tensor::new(w.shape.clone(), wd), Tensor::new(b.shape.clone(), bd))
}

fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut c = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            if aik != 0.0 {
                for j in 0..n {
                    c[i * n + j] += aik * b[k * n + j];
                }
            }
        }
    }
    c
}

/// Inverse by Gauss-Jordan elimination with partial pivoting, in f64.
pub fn invert(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut m = a.to_vec();
    let mut inv: Vec<f64> = (0..n * n).map(|i| if i / n == i % n { 1.0 } else { 0.0 }).collect();
    for col in 0..n {
        let piv = (col..n).max_by(|&x, &y| m[x * n + col].abs().total_cmp(&m[y * n + col].abs()))?;
        if m[piv * n + col].abs() < 1e-12 {
            return None;
        }
        for j in 0..n {
            m.swap(col * n + j, piv * n + j);
            inv.swap(col * n + j, piv * n + j);
        }
        let d = m[col * n + col];
        for j in 0..n {
            m[col * n + j] /= d;
            inv[col * n + j] /= d;
        }
        for r in 0..n {
            if r != col {
                let f = m[r * n + col];
                if f != 0.0 {
                    for j in 0..n {
                        m[r * n + j] -= f * m[col * n + j];
                        inv[r * n + j] -= f * inv[col * n + j];
                    }
                }
            }
        }
    }
    Some(inv)
}

/// A random orthogonal matrix (Gram-Schmidt on Gaussian columns) factorised as
/// openai/glow does: A = P L U with partial pivoting; returns (P, L, U) row-major.
fn random_orthogonal_lu(src: &mut ParamSource, n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut q = vec![0f64; n * n];
    for j in 0..n {
        let mut v: Vec<f64> = (0..n).map(|_| src.normal() as f64).collect();
        for k in 0..j {
            let dot: f64 = (0..n).map(|i| v[i] * q[i * n + k]).sum();
            (0..n).for_each(|i| v[i] -= dot * q[i * n + k]);
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        (0..n).for_each(|i| q[i * n + j] = v[i] / norm);
    }
    // Doolittle with row pivoting: perm * q = L U, so q = perm^T L U.
    let mut u = q;
    let mut l = vec![0f64; n * n];
    let mut perm: Vec<usize> = (0..n).collect();
    for c in 0..n {
        let p = (c..n).max_by(|&x, &y| u[x * n + c].abs().total_cmp(&u[y * n + c].abs())).unwrap();
        for j in 0..n {
            u.swap(c * n + j, p * n + j);
            l.swap(c * n + j, p * n + j);
        }
        perm.swap(c, p);
        for r in c + 1..n {
            let f = u[r * n + c] / u[c * n + c];
            l[r * n + c] = f;
            for j in c..n {
                u[r * n + j] -= f * u[c * n + j];
            }
        }
    }
    (0..n).for_each(|i| l[i * n + i] = 1.0);
    // P = perm^T: row perm[i] of P has its one in column i.
    let mut p = vec![0f64; n * n];
    for (i, &r) in perm.iter().enumerate() {
        p[r * n + i] = 1.0;
    }
    (p, l, u)
}

fn read_params(cfg: &Config, src: &mut ParamSource) -> Result<Params> {
    let file = src.file_name().to_string();
    let mut steps = Vec::new();
    let small = |s: f32| Init::Normal(0.0, s);
    for l in 0..cfg.levels {
        let c = cfg.channels(l);
        let h = c / 2;
        let mut level = Vec::new();
        for k in 0..cfg.steps {
            let p = format!("flow.{l}.{k}");
            let bias = src.get(&format!("{p}.actnorm.bias"), &[c], small(0.1))?;
            let logs = src.get(&format!("{p}.actnorm.logs"), &[c], small(0.1))?;
            let lu = if src.is_file() { None } else { Some(random_orthogonal_lu(src, c)) };
            let to32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
            let pm = src.get_with(&format!("{p}.invconv.p"), &[vec![c, c]], |_, _| to32(&lu.as_ref().unwrap().0))?;
            let lower = src.get_with(&format!("{p}.invconv.lower"), &[vec![c, c]], |_, _| to32(&lu.as_ref().unwrap().1))?;
            let upper = src.get_with(&format!("{p}.invconv.upper"), &[vec![c, c]], |_, _| to32(&lu.as_ref().unwrap().2))?;
            let diag = |i: usize| lu.as_ref().unwrap().2[i * c + i];
            let log_s =
                src.get_with(&format!("{p}.invconv.log_s"), &[vec![c]], |_, _| (0..c).map(|i| diag(i).abs().ln() as f32).collect())?;
            let sign_s =
                src.get_with(&format!("{p}.invconv.sign_s"), &[vec![c]], |_, _| (0..c).map(|i| diag(i).signum() as f32).collect())?;
            let is_perm = pm.data.iter().all(|&v| v == 0.0 || v == 1.0)
                && (0..c).all(|i| {
                    (0..c).map(|j| pm.data[i * c + j]).sum::<f32>() == 1.0 && (0..c).map(|j| pm.data[j * c + i]).sum::<f32>() == 1.0
                });
            if !is_perm {
                return Err(Error::Config(format!("{file}: {p}.invconv.p is not a permutation matrix")));
            }
            if sign_s.data.iter().any(|&s| s != 1.0 && s != -1.0) {
                return Err(Error::Config(format!("{file}: {p}.invconv.sign_s must hold only +1 and -1")));
            }
            let f64s = |t: &Tensor| t.data.iter().map(|&x| x as f64).collect::<Vec<f64>>();
            let (pd, mut ld, mut ud) = (f64s(&pm), f64s(&lower), f64s(&upper));
            for i in 0..c {
                for j in 0..c {
                    if j >= i {
                        ld[i * c + j] = if i == j { 1.0 } else { 0.0 };
                    }
                    if j < i {
                        ud[i * c + j] = 0.0;
                    }
                }
                ud[i * c + i] = sign_s.data[i] as f64 * (log_s.data[i] as f64).exp();
            }
            let w = matmul(&pd, &matmul(&ld, &ud, c), c);
            let fan = |n: usize| Init::HeNormal { fan_in: n, gain: 1.0 };
            let conv = |src: &mut ParamSource, name: &str, o: usize, i: usize, kk: usize, init: Init| -> Result<(Tensor, Tensor)> {
                Ok((
                    src.get(&format!("{p}.coupling.{name}.weight"), &[o, i, kk, kk, kk], init)?,
                    src.get(&format!("{p}.coupling.{name}.bias"), &[o], small(0.01))?,
                ))
            };
            let conv0 = conv(src, "conv0", cfg.width, h, 3, fan(h * 27))?;
            let conv1 = conv(src, "conv1", cfg.width, cfg.width, 1, fan(cfg.width))?;
            // openai/glow starts the last coupling conv at zero (identity coupling); a
            // small start keeps a seeded flow well conditioned but not trivial.
            let (w2, b2) = conv(src, "conv2", c, cfg.width, 3, Init::HeNormal { fan_in: cfg.width * 27, gain: 0.1 })?;
            level.push(Step {
                actnorm_bias: f64s(&bias),
                actnorm_logs: f64s(&logs),
                w,
                log_s_sum: log_s.data.iter().map(|&x| x as f64).sum(),
                conv0,
                conv1,
                conv2: deinterleave(&w2, &b2),
            });
        }
        steps.push(level);
    }
    let mut priors = Vec::new();
    for l in 0..cfg.levels - 1 {
        let c = cfg.channels(l);
        let w = src.get(&format!("prior.{l}.weight"), &[c, c / 2, 3, 3, 3], Init::HeNormal { fan_in: c / 2 * 27, gain: 0.1 })?;
        let b = src.get(&format!("prior.{l}.bias"), &[c], small(0.1))?;
        priors.push(deinterleave(&w, &b));
    }
    let ct = cfg.channels(cfg.levels - 1);
    let top_mean = src.get("prior.top.mean", &[ct], small(0.1))?.data;
    let top_logs = src.get("prior.top.logs", &[ct], small(0.1))?.data;
    let mut temporal = Vec::new();
    for (l, shape) in cfg.latent_shapes().iter().enumerate() {
        let c = shape[0];
        let (w, d) = (cfg.temporal_widths[l], cfg.temporal_depths[l]);
        let mut stack = Vec::new();
        for j in 0..d {
            let cin = if j == 0 { c } else { w };
            let cout = if j + 1 == d { c } else { w };
            // A seeded P stays near the identity (small residual), as a trained one would.
            let gain = if j + 1 == d { 0.005 } else { 1.0 };
            stack.push((
                src.get(&format!("temporal.{l}.conv{j}.weight"), &[cout, cin, 3, 3, 3], Init::HeNormal { fan_in: cin * 27, gain })?,
                src.get(&format!("temporal.{l}.conv{j}.bias"), &[cout], small(0.001))?,
            ));
        }
        temporal.push(stack);
    }
    Ok(Params { steps, priors, top_mean, top_logs, temporal })
}

/// Graph-building helpers shared by the three models.
struct G {
    g: GraphBuilder,
    n: usize,
}

impl G {
    fn name(&mut self, what: &str) -> String {
        self.n += 1;
        format!("{what}_{}", self.n)
    }

    fn node(&mut self, op: &str, what: &str, inputs: &[&str], attrs: Vec<Attr>) -> String {
        let name = self.name(what);
        self.g.node(op, &name, inputs, attrs)
    }

    fn konst(&mut self, what: &str, shape: &[usize], data: &[f32]) -> String {
        let name = self.name(what);
        self.g.init_f32(&name, shape, data)
    }

    fn ints(&mut self, what: &str, data: &[i64]) -> String {
        let name = self.name(what);
        self.g.init_i64(&name, &[data.len()], data)
    }

    /// A per-channel constant broadcast over [N, C, X, Y, Z].
    fn channel_const(&mut self, what: &str, data: &[f32]) -> String {
        self.konst(what, &[1, data.len(), 1, 1, 1], data)
    }

    fn conv(&mut self, what: &str, x: &str, w: &Tensor, b: &Tensor) -> String {
        let k = w.shape[2] as i64;
        let pad = (k - 1) / 2;
        let wn = self.konst(&format!("{what}.weight"), &w.shape, &w.data);
        let bn = self.konst(&format!("{what}.bias"), &b.shape, &b.data);
        self.node(
            "Conv",
            what,
            &[x, &wn, &bn],
            vec![Attr::Ints("kernel_shape", vec![k; 3]), Attr::Ints("pads", vec![pad; 6]), Attr::Ints("strides", vec![1; 3])],
        )
    }

    fn slice(&mut self, what: &str, x: &str, axis: i64, start: usize, end: usize) -> String {
        let s = self.ints("starts", &[start as i64]);
        let e = self.ints("ends", &[end as i64]);
        let a = self.ints("axes", &[axis]);
        self.node("Slice", what, &[x, &s, &e, &a], vec![])
    }

    fn reshape(&mut self, what: &str, x: &str, shape: &[i64]) -> String {
        let s = self.ints("shape", shape);
        self.node("Reshape", what, &[x, &s], vec![])
    }

    /// [N, C, X, Y, Z] -> [N, 8C, X/2, Y/2, Z/2] (see the module docs for the channel order).
    fn squeeze(&mut self, x: &str, c: usize, grid: [usize; 3]) -> String {
        let [a, b, d] = grid.map(|g| (g / 2) as i64);
        let c = c as i64;
        let y = self.reshape("squeeze.split", x, &[0, c, a, 2, b, 2, d, 2]);
        let y = self.node("Transpose", "squeeze.transpose", &[&y], vec![Attr::Ints("perm", vec![0, 1, 3, 5, 7, 2, 4, 6])]);
        self.reshape("squeeze", &y, &[0, 8 * c, a, b, d])
    }

    /// The inverse of [`G::squeeze`]: [N, C, X, Y, Z] -> [N, C/8, 2X, 2Y, 2Z].
    fn unsqueeze(&mut self, x: &str, c: usize, grid: [usize; 3]) -> String {
        let [a, b, d] = grid.map(|g| g as i64);
        let c = (c / 8) as i64;
        let y = self.reshape("unsqueeze.split", x, &[0, c, 2, 2, 2, a, b, d]);
        let y = self.node("Transpose", "unsqueeze.transpose", &[&y], vec![Attr::Ints("perm", vec![0, 1, 5, 2, 6, 3, 7, 4])]);
        self.reshape("unsqueeze", &y, &[0, c, 2 * a, 2 * b, 2 * d])
    }

    /// The coupling network's (shift, scale) for the conditioning half z1.
    fn coupling_net(&mut self, p: &str, z1: &str, s: &Step, c: usize) -> (String, String) {
        let h = self.conv(&format!("{p}.conv0"), z1, &s.conv0.0, &s.conv0.1);
        let h = self.node("Relu", &format!("{p}.relu0"), &[&h], vec![]);
        let h = self.conv(&format!("{p}.conv1"), &h, &s.conv1.0, &s.conv1.1);
        let h = self.node("Relu", &format!("{p}.relu1"), &[&h], vec![]);
        let h = self.conv(&format!("{p}.conv2"), &h, &s.conv2.0, &s.conv2.1);
        let shift = self.slice(&format!("{p}.shift"), &h, 1, 0, c / 2);
        let raw = self.slice(&format!("{p}.raw_scale"), &h, 1, c / 2, c);
        let two = self.konst("two", &[1], &[2.0]);
        let raw = self.node("Add", &format!("{p}.plus2"), &[&raw, &two], vec![]);
        let scale = self.node("Sigmoid", &format!("{p}.scale"), &[&raw], vec![]);
        (shift, scale)
    }
}

/// Reads (and checks) the parameters; a seeded source invents them.
fn params(cfg: &Config, src: &mut ParamSource) -> Result<Params> {
    cfg.validate()?;
    read_params(cfg, src)
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn build_encoder(cfg: &Config, p: &Params) -> pb::ModelProto {
    let mut g = G { g: GraphBuilder::new("glow3d_encoder"), n: 0 };
    let [gx, gy, gz] = cfg.grid.map(|v| v as i64);
    g.g.input_f32("input", &[D::Sym("batch"), D::N(cfg.in_channels as i64), D::N(gx), D::N(gy), D::N(gz)]);
    let mut z = g.squeeze("input", cfg.in_channels, cfg.grid);
    let mut logdet_terms: Vec<String> = Vec::new();
    let mut logdet_const = 0f64;
    let mut latents = Vec::new();
    for l in 0..cfg.levels {
        let c = cfg.channels(l);
        let voxels = cfg.level_grid(l).iter().product::<usize>() as f64;
        for (k, s) in p.steps[l].iter().enumerate() {
            let name = format!("flow.{l}.{k}");
            // actnorm folded into the 1x1x1 conv: W diag(e^logs) (x + b).
            let e: Vec<f64> = s.actnorm_logs.iter().map(|x| x.exp()).collect();
            let w: Vec<f64> = (0..c * c).map(|i| s.w[i] * e[i % c]).collect();
            let b: Vec<f64> = (0..c).map(|i| (0..c).map(|j| w[i * c + j] * s.actnorm_bias[j]).sum()).collect();
            z = g.conv(&format!("{name}.invconv"), &z, &Tensor::new(vec![c, c, 1, 1, 1], f32s(&w)), &Tensor::new(vec![c], f32s(&b)));
            logdet_const += voxels * (s.actnorm_logs.iter().sum::<f64>() + s.log_s_sum);
            let z1 = g.slice(&format!("{name}.z1"), &z, 1, 0, c / 2);
            let z2 = g.slice(&format!("{name}.z2"), &z, 1, c / 2, c);
            let (shift, scale) = g.coupling_net(&format!("{name}.coupling"), &z1, s, c);
            let z2 = g.node("Add", &format!("{name}.shifted"), &[&z2, &shift], vec![]);
            let z2 = g.node("Mul", &format!("{name}.scaled"), &[&z2, &scale], vec![]);
            let log = g.node("Log", &format!("{name}.log_scale"), &[&scale], vec![]);
            let axes = g.ints("axes", &[1, 2, 3, 4]);
            logdet_terms.push(g.node("ReduceSum", &format!("{name}.logdet"), &[&log, &axes], vec![Attr::Int("keepdims", 0)]));
            z = g.node("Concat", &format!("{name}.out"), &[&z1, &z2], vec![Attr::Int("axis", 1)]);
        }
        if l + 1 < cfg.levels {
            let z1 = g.slice(&format!("split.{l}.z1"), &z, 1, 0, c / 2);
            let z2 = g.slice(&format!("split.{l}.z2"), &z, 1, c / 2, c);
            let (pw, pb_) = &p.priors[l];
            let h = g.conv(&format!("prior.{l}"), &z1, pw, pb_);
            let mean = g.slice(&format!("prior.{l}.mean"), &h, 1, 0, c / 2);
            let logs = g.slice(&format!("prior.{l}.logs"), &h, 1, c / 2, c);
            let neg = g.node("Neg", &format!("prior.{l}.neg_logs"), &[&logs], vec![]);
            let inv_std = g.node("Exp", &format!("prior.{l}.inv_std"), &[&neg], vec![]);
            let centred = g.node("Sub", &format!("split.{l}.centred"), &[&z2, &mean], vec![]);
            latents.push(g.node("Mul", &format!("latent.{l}"), &[&centred, &inv_std], vec![]));
            z = g.squeeze(&z1, c / 2, cfg.level_grid(l));
        } else {
            let mean = g.channel_const("prior.top.mean", &p.top_mean);
            let inv_std: Vec<f32> = p.top_logs.iter().map(|&x| (-(x as f64)).exp() as f32).collect();
            let inv_std = g.channel_const("prior.top.inv_std", &inv_std);
            let centred = g.node("Sub", "top.centred", &[&z, &mean], vec![]);
            latents.push(g.node("Mul", &format!("latent.{l}"), &[&centred, &inv_std], vec![]));
        }
    }
    let flat: Vec<String> = latents.iter().enumerate().map(|(l, z)| g.reshape(&format!("latent.{l}.flat"), z, &[0, -1])).collect();
    let refs: Vec<&str> = flat.iter().map(|s| s.as_str()).collect();
    let packed = g.node("Concat", "latent.packed", &refs, vec![Attr::Int("axis", 1)]);
    g.g.node("Identity", "latent", &[&packed], vec![]);
    let mut logdet = g.konst("logdet.const", &[1], &[logdet_const as f32]);
    for t in &logdet_terms {
        logdet = g.node("Add", "logdet.sum", &[&logdet, t], vec![]);
    }
    g.g.node("Identity", "logdet", &[&logdet], vec![]);
    g.g.output_f32("latent", &[D::Sym("batch"), D::N(cfg.latent_len() as i64)]);
    g.g.output_f32("logdet", &[D::Sym("batch")]);
    g.g.into_model("edgemed-models", &cfg.model_metadata("encoder"))
}

/// Unpacks level `l` of a packed latent `x` into [N, C, X, Y, Z].
fn unpack(g: &mut G, x: &str, cfg: &Config, l: usize) -> String {
    let shapes = cfg.latent_shapes();
    let start: usize = shapes[..l].iter().map(|s| s.iter().product::<usize>()).sum();
    let len: usize = shapes[l].iter().product();
    let s = g.slice(&format!("latent.{l}.flat"), x, 1, start, start + len);
    let sh: Vec<i64> = std::iter::once(0).chain(shapes[l].iter().map(|&d| d as i64)).collect();
    g.reshape(&format!("latent.{l}"), &s, &sh)
}

fn build_decoder(cfg: &Config, p: &Params) -> Result<pb::ModelProto> {
    let mut g = G { g: GraphBuilder::new("glow3d_decoder"), n: 0 };
    g.g.input_f32("latent", &[D::Sym("batch"), D::N(cfg.latent_len() as i64)]);
    let top = cfg.levels - 1;
    let eps = unpack(&mut g, "latent", cfg, top);
    let std: Vec<f32> = p.top_logs.iter().map(|&x| (x as f64).exp() as f32).collect();
    let std = g.channel_const("prior.top.std", &std);
    let mean = g.channel_const("prior.top.mean", &p.top_mean);
    let scaled = g.node("Mul", "top.scaled", &[&eps, &std], vec![]);
    let mut z = g.node("Add", "top.z", &[&scaled, &mean], vec![]);
    for l in (0..cfg.levels).rev() {
        let c = cfg.channels(l);
        if l < top {
            // z holds level l+1's input; undo the squeeze, then redraw z2 from eps_l.
            let z1 = g.unsqueeze(&z, cfg.channels(l + 1), cfg.level_grid(l + 1));
            let (pw, pb_) = &p.priors[l];
            let h = g.conv(&format!("prior.{l}"), &z1, pw, pb_);
            let mean = g.slice(&format!("prior.{l}.mean"), &h, 1, 0, c / 2);
            let logs = g.slice(&format!("prior.{l}.logs"), &h, 1, c / 2, c);
            let std = g.node("Exp", &format!("prior.{l}.std"), &[&logs], vec![]);
            let eps = unpack(&mut g, "latent", cfg, l);
            let scaled = g.node("Mul", &format!("split.{l}.scaled"), &[&eps, &std], vec![]);
            let z2 = g.node("Add", &format!("split.{l}.z2"), &[&scaled, &mean], vec![]);
            z = g.node("Concat", &format!("split.{l}.z"), &[&z1, &z2], vec![Attr::Int("axis", 1)]);
        }
        for (k, s) in p.steps[l].iter().enumerate().rev() {
            let name = format!("flow.{l}.{k}");
            let z1 = g.slice(&format!("{name}.z1"), &z, 1, 0, c / 2);
            let z2 = g.slice(&format!("{name}.z2"), &z, 1, c / 2, c);
            let (shift, scale) = g.coupling_net(&format!("{name}.coupling"), &z1, s, c);
            let z2 = g.node("Div", &format!("{name}.unscaled"), &[&z2, &scale], vec![]);
            let z2 = g.node("Sub", &format!("{name}.unshifted"), &[&z2, &shift], vec![]);
            z = g.node("Concat", &format!("{name}.coupled"), &[&z1, &z2], vec![Attr::Int("axis", 1)]);
            // (x + b) e^logs = W^-1 y  =>  x = diag(e^-logs) W^-1 y - b: one conv.
            let inv = invert(&s.w, c)
                .ok_or_else(|| Error::Config(format!("{name}.invconv: the 1x1x1 convolution is singular and cannot be inverted")))?;
            let w: Vec<f64> = (0..c * c).map(|i| inv[i] * (-s.actnorm_logs[i / c]).exp()).collect();
            let b: Vec<f64> = s.actnorm_bias.iter().map(|x| -x).collect();
            z = g.conv(
                &format!("{name}.invconv_inverse"),
                &z,
                &Tensor::new(vec![c, c, 1, 1, 1], f32s(&w)),
                &Tensor::new(vec![c], f32s(&b)),
            );
        }
    }
    let x = g.unsqueeze(&z, cfg.channels(0), cfg.level_grid(0));
    g.g.node("Identity", "output", &[&x], vec![]);
    let [gx, gy, gz] = cfg.grid.map(|v| v as i64);
    g.g.output_f32("output", &[D::Sym("batch"), D::N(cfg.in_channels as i64), D::N(gx), D::N(gy), D::N(gz)]);
    Ok(g.g.into_model("edgemed-models", &cfg.model_metadata("decoder")))
}

fn build_temporal(cfg: &Config, p: &Params) -> pb::ModelProto {
    let mut g = G { g: GraphBuilder::new("glow3d_temporal"), n: 0 };
    g.g.input_f32("latent", &[D::Sym("batch"), D::N(cfg.latent_len() as i64)]);
    let mut outs = Vec::new();
    for l in 0..cfg.levels {
        let z = unpack(&mut g, "latent", cfg, l);
        let mut h = z.clone();
        let depth = p.temporal[l].len();
        for (j, (w, b)) in p.temporal[l].iter().enumerate() {
            h = g.conv(&format!("temporal.{l}.conv{j}"), &h, w, b);
            if j + 1 < depth {
                h = g.node("Relu", &format!("temporal.{l}.relu{j}"), &[&h], vec![]);
            }
        }
        let y = g.node("Add", &format!("temporal.{l}.skip"), &[&z, &h], vec![]);
        outs.push(g.reshape(&format!("temporal.{l}.flat"), &y, &[0, -1]));
    }
    let refs: Vec<&str> = outs.iter().map(|s| s.as_str()).collect();
    let packed = g.node("Concat", "latent.packed", &refs, vec![Attr::Int("axis", 1)]);
    g.g.node("Identity", "latent_next", &[&packed], vec![]);
    g.g.output_f32("latent_next", &[D::Sym("batch"), D::N(cfg.latent_len() as i64)]);
    g.g.into_model("edgemed-models", &cfg.model_metadata("temporal"))
}

/// The three models of the aging twin, built from one set of weights.
pub struct Twin {
    pub encoder: pb::ModelProto,
    pub decoder: pb::ModelProto,
    pub temporal: pb::ModelProto,
    /// The weights used (the file's, or the seeded ones).
    pub weights: Weights,
}

/// Builds encoder, decoder and temporal model from `weights` (or a seeded initialisation).
pub fn build(cfg: &Config, weights: Option<(&Weights, &str)>, seed: u64) -> Result<Twin> {
    let mut src = ParamSource::from_file_or_seed(weights, seed, || cfg.weights_metadata());
    let p = params(cfg, &mut src)?;
    let weights = src.finish()?;
    Ok(Twin { encoder: build_encoder(cfg, &p), decoder: build_decoder(cfg, &p)?, temporal: build_temporal(cfg, &p), weights })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_is_an_inverse() {
        let a = vec![2.0, 1.0, 0.0, 0.0, 3.0, 1.0, 1.0, 0.0, 4.0];
        let inv = invert(&a, 3).unwrap();
        let id = matmul(&a, &inv, 3);
        for i in 0..3 {
            for j in 0..3 {
                assert!((id[i * 3 + j] - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
        assert!(invert(&[1.0, 2.0, 2.0, 4.0], 2).is_none());
    }

    #[test]
    fn seeded_lu_reassembles_an_orthogonal_matrix() {
        let mut src = ParamSource::seeded(3, BTreeMap::new());
        let n = 6;
        let (p, l, u) = random_orthogonal_lu(&mut src, n);
        let q = matmul(&p, &matmul(&l, &u, n), n);
        let qtq = (0..n * n).map(|i| (0..n).map(|k| q[k * n + i / n] * q[k * n + i % n]).sum::<f64>()).collect::<Vec<_>>();
        for i in 0..n {
            for j in 0..n {
                assert!((qtq[i * n + j] - if i == j { 1.0 } else { 0.0 }).abs() < 1e-9, "{qtq:?}");
                if j > i {
                    assert_eq!(l[i * n + j], 0.0);
                }
                if j < i {
                    assert!(u[i * n + j].abs() < 1e-12);
                }
            }
        }
    }

    #[test]
    fn latent_layout() {
        let cfg = Config { grid: [16, 16, 16], ..Config::default() };
        assert_eq!(cfg.latent_shapes(), vec![[4, 8, 8, 8], [16, 4, 4, 4], [128, 2, 2, 2]]);
        assert_eq!(cfg.latent_len(), 4096);
        assert!(Config { grid: [12, 16, 16], ..Config::default() }.validate().is_err());
    }
}
