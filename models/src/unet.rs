//! 2-D and 3-D U-Nets in the shape of MONAI's `monai.networks.nets.UNet`, exported
//! from a MONAI `state_dict` saved as safetensors (MONAI's parameter names kept:
//! `model.0.conv.unit0.conv.weight`, `model.1.submodule.0.residual.bias`, ...) or
//! from a seeded initialisation.
//!
//! The layout follows MONAI 1.x: every level is `Sequential(down, SkipConnection(
//! inner), up)`, the skip concatenates `[x, inner(x)]` on channels, down layers are
//! `ResidualUnit`s (or plain `Convolution`s with `num_res_units = 0`) striding by
//! `strides[i]`, the bottom is a stride-1 down layer, and up layers are a transposed
//! convolution (kernel `up_kernel_size`, padding (k-1)/2, output padding stride-1)
//! followed, with residual units, by a one-subunit `ResidualUnit` whose last
//! convolution is bare at the top. Each convolution is followed by norm, dropout,
//! activation (MONAI's default "NDA" ordering); dropout is the identity at inference.
//!
//! Settings come from the weight file's metadata key `constructor` (the JSON of the
//! UNet constructor arguments, as `scripts/make_unet_fixtures.py` writes it) or
//! from the caller. Supported: norm `instance` (affine or not), `batch`, none;
//! act `prelu` (one or per-channel slopes), `relu`, `leakyrelu`; any depth, odd
//! kernels, `bias` on or off. Batch norm is emitted as BatchNormalization nodes
//! (the converter folds them); instance norm as InstanceNormalization.

use std::collections::BTreeMap;

use edgemed_onnx::pb;

use crate::error::{Error, Result};
use crate::weights::{Init, ParamSource, Weights};
use edgemed_onnx::builder::{Attr, GraphBuilder, D};

pub const ARCH: &str = "unet";
/// torch's default epsilon for batch and instance norm, which MONAI keeps.
const NORM_EPS: f32 = 1e-5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Norm {
    None,
    Instance { affine: bool },
    Batch,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Act {
    None,
    Relu,
    LeakyRelu(f32),
    Prelu,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub spatial_dims: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub channels: Vec<usize>,
    pub strides: Vec<usize>,
    pub kernel_size: usize,
    pub up_kernel_size: usize,
    pub num_res_units: usize,
    pub norm: Norm,
    pub act: Act,
    pub bias: bool,
    /// Fixed spatial input size, or symbolic (any size divisible by the strides).
    pub window: Option<Vec<usize>>,
}

impl Default for Config {
    /// MONAI's tutorial 3-D segmentation network.
    fn default() -> Self {
        Config {
            spatial_dims: 3,
            in_channels: 1,
            out_channels: 2,
            channels: vec![16, 32, 64, 128, 256],
            strides: vec![2, 2, 2, 2],
            kernel_size: 3,
            up_kernel_size: 3,
            num_res_units: 2,
            norm: Norm::Instance { affine: false },
            act: Act::Prelu,
            bias: true,
            window: None,
        }
    }
}

/// MONAI's `("name", {args})` or `"name"` layer spec.
fn layer_spec(v: &serde_json::Value, key: &str) -> Result<(String, serde_json::Map<String, serde_json::Value>)> {
    let bad = || Error::Config(format!("constructor {key}={v}: expected a name or [name, {{args}}]"));
    match v {
        serde_json::Value::Null => Ok(("none".into(), Default::default())),
        serde_json::Value::String(s) => Ok((s.to_lowercase(), Default::default())),
        serde_json::Value::Array(a) => match a.as_slice() {
            [serde_json::Value::String(s)] => Ok((s.to_lowercase(), Default::default())),
            [serde_json::Value::String(s), serde_json::Value::Object(o)] => Ok((s.to_lowercase(), o.clone())),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

impl Config {
    /// Reads MONAI's constructor arguments (JSON object) over the defaults of `UNet.__init__`.
    pub fn from_constructor_json(json: &str) -> Result<Self> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| Error::Config(format!("constructor metadata is not JSON: {e}")))?;
        let o = v.as_object().ok_or_else(|| Error::Config("constructor metadata is not a JSON object".into()))?;
        let uint = |k: &str, default: Option<usize>| -> Result<usize> {
            match o.get(k) {
                None => default.ok_or_else(|| Error::Config(format!("constructor has no {k:?}"))),
                Some(x) => x.as_u64().map(|x| x as usize).ok_or_else(|| Error::Config(format!("constructor {k}={x} is not an integer"))),
            }
        };
        let list = |k: &str| -> Result<Vec<usize>> {
            let x = o.get(k).ok_or_else(|| Error::Config(format!("constructor has no {k:?}")))?;
            match x {
                serde_json::Value::Array(a) => a
                    .iter()
                    .map(|e| e.as_u64().map(|e| e as usize).ok_or_else(|| Error::Config(format!("constructor {k}={x}: not integers"))))
                    .collect(),
                serde_json::Value::Number(n) => Ok(vec![n.as_u64().unwrap_or(0) as usize]),
                _ => Err(Error::Config(format!("constructor {k}={x}: not a list of integers"))),
            }
        };
        let kernel = |k: &str| -> Result<usize> {
            match o.get(k) {
                None => Ok(3),
                Some(serde_json::Value::Array(a)) if a.windows(2).all(|w| w[0] == w[1]) && !a.is_empty() => {
                    a[0].as_u64().map(|x| x as usize).ok_or_else(|| Error::Config(format!("constructor {k}: not an integer")))
                }
                Some(x) => x
                    .as_u64()
                    .map(|x| x as usize)
                    .ok_or_else(|| Error::Config(format!("constructor {k}={x}: only cubic kernels are supported"))),
            }
        };
        let (norm_name, norm_args) = layer_spec(o.get("norm").unwrap_or(&serde_json::Value::String("instance".into())), "norm")?;
        let norm = match norm_name.as_str() {
            "instance" => Norm::Instance { affine: norm_args.get("affine").and_then(|a| a.as_bool()).unwrap_or(false) },
            "batch" => Norm::Batch,
            "none" => Norm::None,
            other => return Err(Error::Config(format!("norm {other:?} is not supported (instance, batch or none)"))),
        };
        let (act_name, act_args) = layer_spec(o.get("act").unwrap_or(&serde_json::Value::String("prelu".into())), "act")?;
        let act = match act_name.as_str() {
            "prelu" => Act::Prelu,
            "relu" => Act::Relu,
            "leakyrelu" => Act::LeakyRelu(act_args.get("negative_slope").and_then(|a| a.as_f64()).unwrap_or(0.01) as f32),
            "none" => Act::None,
            other => return Err(Error::Config(format!("act {other:?} is not supported (prelu, relu, leakyrelu or none)"))),
        };
        if let Some(ord) = o.get("adn_ordering").and_then(|a| a.as_str()) {
            if ord.replace('D', "") != "NA" {
                return Err(Error::Config(format!("adn_ordering {ord:?} is not supported (norm before activation, MONAI's default)")));
            }
        }
        let cfg = Config {
            spatial_dims: uint("spatial_dims", None)?,
            in_channels: uint("in_channels", None)?,
            out_channels: uint("out_channels", None)?,
            channels: list("channels")?,
            strides: list("strides")?,
            kernel_size: kernel("kernel_size")?,
            up_kernel_size: kernel("up_kernel_size")?,
            num_res_units: uint("num_res_units", Some(0))?,
            norm,
            act,
            bias: o.get("bias").and_then(|b| b.as_bool()).unwrap_or(true),
            window: None,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if !(2..=3).contains(&self.spatial_dims) {
            return bad(format!("spatial_dims {} (2 or 3)", self.spatial_dims));
        }
        if self.channels.len() < 2 || self.strides.len() + 1 < self.channels.len() {
            return bad(format!(
                "channels {:?} and strides {:?}: need at least two levels and one stride per level below the top",
                self.channels, self.strides
            ));
        }
        if self.channels.contains(&0) || self.in_channels == 0 || self.out_channels == 0 || self.strides.contains(&0) {
            return bad("channels and strides must be positive".into());
        }
        if self.kernel_size.is_multiple_of(2) || self.up_kernel_size.is_multiple_of(2) {
            return bad(format!("kernel sizes {} / {} must be odd", self.kernel_size, self.up_kernel_size));
        }
        if let Some(w) = &self.window {
            let f = self.downsampling();
            if w.len() != self.spatial_dims || w.iter().any(|&s| s == 0 || s % f != 0) {
                return bad(format!("window {w:?}: needs {} sizes, each divisible by {f} (the product of the strides)", self.spatial_dims));
            }
        }
        Ok(())
    }

    /// Total downsampling factor: input sizes must be multiples of it.
    pub fn downsampling(&self) -> usize {
        self.strides[..self.channels.len() - 1].iter().product()
    }

    /// The MONAI constructor arguments, stored as weight-file metadata.
    pub fn constructor_json(&self) -> String {
        let norm = match self.norm {
            Norm::None => serde_json::Value::Null,
            Norm::Batch => "batch".into(),
            Norm::Instance { affine: false } => "instance".into(),
            Norm::Instance { affine: true } => serde_json::json!(["instance", {"affine": true}]),
        };
        let act = match self.act {
            Act::None => serde_json::Value::Null,
            Act::Relu => "relu".into(),
            Act::Prelu => "prelu".into(),
            Act::LeakyRelu(s) => serde_json::json!(["leakyrelu", {"negative_slope": s}]),
        };
        serde_json::json!({
            "spatial_dims": self.spatial_dims, "in_channels": self.in_channels, "out_channels": self.out_channels,
            "channels": self.channels, "strides": self.strides, "kernel_size": self.kernel_size,
            "up_kernel_size": self.up_kernel_size, "num_res_units": self.num_res_units, "norm": norm, "act": act,
            "bias": self.bias,
        })
        .to_string()
    }

    pub fn weights_metadata(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("arch".into(), ARCH.into()), ("constructor".into(), self.constructor_json())])
    }
}

/// Walks MONAI's module tree once, taking parameters by MONAI's names and emitting ONNX.
struct Emitter<'c, 's> {
    cfg: &'c Config,
    g: GraphBuilder,
    params: ParamSource<'s>,
}

impl Emitter<'_, '_> {
    fn dims(&self) -> usize {
        self.cfg.spatial_dims
    }

    fn init(&mut self, name: &str, shape: &[usize], init: Init) -> Result<String> {
        let t = self.params.get(name, shape, init)?;
        Ok(self.g.init_f32(name, &t.shape, &t.data))
    }

    /// One MONAI `Convolution` at `p` (`p.conv`, then `p.adn` unless `conv_only`).
    #[allow(clippy::too_many_arguments)]
    fn convolution(
        &mut self,
        x: &str,
        p: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        transposed: bool,
        conv_only: bool,
    ) -> Result<String> {
        let d = self.dims();
        let kshape = vec![k; d];
        let wshape = if transposed { [vec![cin, cout], kshape.clone()].concat() } else { [vec![cout, cin], kshape.clone()].concat() };
        let fan_in = if transposed { cout * k.pow(d as u32) } else { cin * k.pow(d as u32) };
        let w = self.init(&format!("{p}.conv.weight"), &wshape, Init::HeNormal { fan_in, gain: 1.0 })?;
        let mut inputs = vec![x.to_string(), w];
        if self.cfg.bias {
            inputs.push(self.init(&format!("{p}.conv.bias"), &[cout], Init::Uniform(0.05))?);
        }
        let pad = ((k - 1) / 2) as i64;
        let mut attrs = vec![
            Attr::Ints("kernel_shape", vec![k as i64; d]),
            Attr::Ints("pads", vec![pad; 2 * d]),
            Attr::Ints("strides", vec![stride as i64; d]),
        ];
        if transposed {
            attrs.push(Attr::Ints("output_padding", vec![stride as i64 - 1; d]));
        }
        let refs: Vec<&str> = inputs.iter().map(|s| s.as_str()).collect();
        let y = self.g.node(if transposed { "ConvTranspose" } else { "Conv" }, &format!("{p}.conv"), &refs, attrs);
        if conv_only {
            return Ok(y);
        }
        self.adn(&y, &format!("{p}.adn"), cout)
    }

    fn adn(&mut self, x: &str, p: &str, c: usize) -> Result<String> {
        let d = self.dims();
        let mut y = x.to_string();
        match self.cfg.norm {
            Norm::None => {}
            Norm::Batch => {
                let s = self.init(&format!("{p}.N.weight"), &[c], Init::Normal(1.0, 0.1))?;
                let b = self.init(&format!("{p}.N.bias"), &[c], Init::Normal(0.0, 0.1))?;
                let m = self.init(&format!("{p}.N.running_mean"), &[c], Init::Normal(0.0, 0.1))?;
                let v = self.init(&format!("{p}.N.running_var"), &[c], Init::Constant(1.0))?;
                y = self.g.node("BatchNormalization", &format!("{p}.N"), &[&y, &s, &b, &m, &v], vec![Attr::Float("epsilon", NORM_EPS)]);
            }
            Norm::Instance { affine } => {
                let (s, b) = if affine {
                    (
                        self.init(&format!("{p}.N.weight"), &[c], Init::Constant(1.0))?,
                        self.init(&format!("{p}.N.bias"), &[c], Init::Constant(0.0))?,
                    )
                } else {
                    (
                        self.g.init_f32(&format!("{p}.N.scale"), &[c], &vec![1.0; c]),
                        self.g.init_f32(&format!("{p}.N.zero"), &[c], &vec![0.0; c]),
                    )
                };
                y = self.g.node("InstanceNormalization", &format!("{p}.N"), &[&y, &s, &b], vec![Attr::Float("epsilon", NORM_EPS)]);
            }
        }
        match self.cfg.act {
            Act::None => {}
            Act::Relu => y = self.g.node("Relu", &format!("{p}.A"), &[&y], vec![]),
            Act::LeakyRelu(a) => y = self.g.node("LeakyRelu", &format!("{p}.A"), &[&y], vec![Attr::Float("alpha", a)]),
            Act::Prelu => {
                // torch's PReLU holds 1 or C slopes; ONNX wants them broadcastable per channel.
                let name = format!("{p}.A.weight");
                let t = self.params.get_any(&name, &[vec![1], vec![c]], Init::Constant(0.25))?;
                let slopes: Vec<f32> = if t.data.len() == 1 { vec![t.data[0]; c] } else { t.data.clone() };
                let shape = [vec![c], vec![1; d]].concat();
                let s = self.g.init_f32(&name, &shape, &slopes);
                y = self.g.node("PRelu", &format!("{p}.A"), &[&y, &s], vec![]);
            }
        }
        Ok(y)
    }

    /// MONAI `ResidualUnit` at `p`: `subunits` convolutions plus a residual path
    /// (identity, or a convolution when the stride or the width changes).
    #[allow(clippy::too_many_arguments)]
    fn residual_unit(
        &mut self,
        x: &str,
        p: &str,
        cin: usize,
        cout: usize,
        stride: usize,
        subunits: usize,
        last_conv_only: bool,
    ) -> Result<String> {
        let k = self.cfg.kernel_size;
        let subunits = subunits.max(1);
        let (mut y, mut c, mut s) = (x.to_string(), cin, stride);
        for su in 0..subunits {
            let conv_only = last_conv_only && su == subunits - 1;
            y = self.convolution(&y, &format!("{p}.conv.unit{su}"), c, cout, k, s, false, conv_only)?;
            c = cout;
            s = 1;
        }
        let res = if stride != 1 || cin != cout {
            let (rk, pad) = if stride == 1 { (1, 0) } else { (k, (k - 1) / 2) };
            let d = self.dims();
            let w = self.init(
                &format!("{p}.residual.weight"),
                &[vec![cout, cin], vec![rk; d]].concat(),
                Init::HeNormal { fan_in: cin * rk.pow(d as u32), gain: 1.0 },
            )?;
            let mut inputs = vec![x.to_string(), w];
            if self.cfg.bias {
                inputs.push(self.init(&format!("{p}.residual.bias"), &[cout], Init::Uniform(0.05))?);
            }
            let refs: Vec<&str> = inputs.iter().map(|s| s.as_str()).collect();
            let attrs = vec![
                Attr::Ints("kernel_shape", vec![rk as i64; d]),
                Attr::Ints("pads", vec![pad as i64; 2 * d]),
                Attr::Ints("strides", vec![stride as i64; d]),
            ];
            self.g.node("Conv", &format!("{p}.residual"), &refs, attrs)
        } else {
            x.to_string()
        };
        Ok(self.g.node("Add", &format!("{p}.add"), &[&y, &res], vec![]))
    }

    fn down(&mut self, x: &str, p: &str, cin: usize, cout: usize, stride: usize) -> Result<String> {
        if self.cfg.num_res_units > 0 {
            self.residual_unit(x, p, cin, cout, stride, self.cfg.num_res_units, false)
        } else {
            self.convolution(x, p, cin, cout, self.cfg.kernel_size, stride, false, false)
        }
    }

    fn up(&mut self, x: &str, p: &str, cin: usize, cout: usize, stride: usize, is_top: bool) -> Result<String> {
        let k = self.cfg.up_kernel_size;
        if self.cfg.num_res_units > 0 {
            let y = self.convolution(x, &format!("{p}.0"), cin, cout, k, stride, true, false)?;
            self.residual_unit(&y, &format!("{p}.1"), cout, cout, 1, 1, is_top)
        } else {
            self.convolution(x, p, cin, cout, k, stride, true, is_top)
        }
    }

    /// `Sequential(down, SkipConnection(inner), up)` at `p` for `channels[0..]`.
    #[allow(clippy::too_many_arguments)]
    fn block(&mut self, x: &str, p: &str, cin: usize, cout: usize, channels: &[usize], strides: &[usize], is_top: bool) -> Result<String> {
        let (c, s) = (channels[0], strides[0]);
        let down = self.down(x, &format!("{p}.0"), cin, c, s)?;
        let inner_p = format!("{p}.1.submodule");
        let (inner, up_in) = if channels.len() > 2 {
            (self.block(&down, &inner_p, c, c, &channels[1..], &strides[1..], false)?, 2 * c)
        } else {
            (self.down(&down, &inner_p, c, channels[1], 1)?, c + channels[1])
        };
        let cat = self.g.node("Concat", &format!("{p}.1.cat"), &[&down, &inner], vec![Attr::Int("axis", 1)]);
        self.up(&cat, &format!("{p}.2"), up_in, cout, s, is_top)
    }
}

/// Builds the ONNX graph (input `input`, output `logits`) and returns it with the
/// parameters used (the file's, or the seeded ones when `weights` is `None`).
pub fn build_onnx(cfg: &Config, weights: Option<(&Weights, &str)>, seed: u64) -> Result<(pb::ModelProto, Weights)> {
    cfg.validate()?;
    let params = ParamSource::from_file_or_seed(weights, seed, || cfg.weights_metadata());
    let mut e = Emitter { cfg, g: GraphBuilder::new(ARCH), params };
    let spatial: Vec<D> = match &cfg.window {
        Some(w) => w.iter().map(|&s| D::N(s as i64)).collect(),
        None => ["x", "y", "z"][3 - cfg.spatial_dims..].iter().map(|s| D::Sym(s)).collect(),
    };
    let dims = |c: usize| [vec![D::Sym("batch"), D::N(c as i64)], spatial.clone()].concat();
    e.g.input_f32("input", &dims(cfg.in_channels));
    let y = e.block("input", "model", cfg.in_channels, cfg.out_channels, &cfg.channels, &cfg.strides, true)?;
    e.g.node("Identity", "logits", &[&y], vec![]);
    e.g.output_f32("logits", &dims(cfg.out_channels));
    let md = vec![
        ("edgemed.arch".to_string(), ARCH.to_string()),
        ("edgemed.monai_constructor".to_string(), cfg.constructor_json()),
        ("edgemed.size_multiple".to_string(), cfg.downsampling().to_string()),
    ];
    let Emitter { g, params, .. } = e;
    let used = params.finish()?;
    Ok((g.into_model("edgemed-models", &md), used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructor_json_round_trips() {
        let cfg = Config { norm: Norm::Instance { affine: true }, act: Act::LeakyRelu(0.1), ..Config::default() };
        assert_eq!(Config::from_constructor_json(&cfg.constructor_json()).unwrap(), cfg);
        let cfg = Config { norm: Norm::Batch, act: Act::Relu, num_res_units: 0, spatial_dims: 2, ..Config::default() };
        assert_eq!(Config::from_constructor_json(&cfg.constructor_json()).unwrap(), cfg);
    }

    #[test]
    fn unsupported_settings_are_named() {
        let e = Config::from_constructor_json(
            r#"{"spatial_dims":3,"in_channels":1,"out_channels":2,"channels":[4,8],"strides":[2],"norm":"group"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("norm \"group\""), "{e}");
        let e = Config { window: Some(vec![30, 32, 32]), channels: vec![4, 8, 16], strides: vec![2, 2], ..Config::default() }
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("divisible by 4"), "{e}");
    }

    #[test]
    fn seeded_export_lists_monai_names() {
        let cfg = Config { channels: vec![4, 8, 16], strides: vec![2, 2], num_res_units: 1, ..Config::default() };
        let (_, w) = build_onnx(&cfg, None, 1).unwrap();
        for name in [
            "model.0.conv.unit0.conv.weight",
            "model.0.residual.weight",
            "model.1.submodule.1.submodule.residual.weight",
            "model.2.0.conv.weight",
            "model.2.1.conv.unit0.conv.bias",
        ] {
            assert!(w.tensors.contains_key(name), "{name} missing from {:?}", w.tensors.keys().collect::<Vec<_>>());
        }
        assert_eq!(w.tensors["model.2.0.conv.weight"].shape, vec![8, 2, 3, 3, 3], "transposed conv weights are [in, out, k...]");
        // The seeded weights are a valid weight file for the same settings.
        build_onnx(&cfg, Some((&w, "seeded")), 0).unwrap();
    }
}
