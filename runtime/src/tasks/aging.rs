//! Aging prediction with the digital twin of the head-CT seed paper:
//! x+ = G⁻¹(P^n(G(x))), G a 3-D GLOW encoder, G⁻¹ its analytic decoder, P the
//! temporal latent model advancing one year (all three from `edgemed export
//! aging-twin`, in one directory as encoder.onnx, decoder.onnx, temporal.onnx).
//!
//! Between G and P the latents are normalised as in the paper, z <- clip((z + a)/b, 0, 1)
//! (a = 24, b = 48, from the models' metadata), once, and mapped back with z = b zn - a
//! before decoding; the clip is not repeated after each year, so P sees its own
//! outputs as it was trained to. The volume is prepared as the paper does: optional CT
//! windowing, an optional crop around the centre of gravity, trilinear resampling to
//! the model's grid, and the intensity map v * scale + offset the models carry.

use std::path::{Path, PathBuf};

use nifti::NiftiHeader;

use crate::backend::{self, Backend, BackendOptions};
use crate::error::{Error, Result};
use crate::formats::volume::{self, Volume};
use crate::model::OnnxModel;
use crate::ndarray::{Array3, ArrayD, IxDyn};

/// What the three models say about themselves (and must agree on).
#[derive(Debug, Clone, PartialEq)]
pub struct TwinSpec {
    pub grid: [usize; 3],
    pub latent_len: usize,
    pub latent_offset: f32,
    pub latent_scale: f32,
    pub intensity_scale: f32,
    pub intensity_offset: f32,
}

fn spec_of(model: &OnnxModel, role: &str) -> Result<TwinSpec> {
    let raw = &model.metadata.raw;
    let bad = |key: &str, reason: String| Error::BadMetadata {
        path: model.path.clone(),
        key: key.to_string(),
        value: raw.get(key).cloned().unwrap_or_default(),
        reason,
    };
    let get = |key: &str| -> Result<&String> {
        raw.get(key)
            .ok_or_else(|| bad(key, format!("missing: not the {role} of an aging twin (export one with `edgemed export aging-twin`)")))
    };
    let arch = get("edgemed.arch")?;
    if arch != &format!("glow3d_{role}") {
        return Err(bad("edgemed.arch", format!("expected glow3d_{role}")));
    }
    let float = |key: &str| -> Result<f32> {
        get(key)?.trim().parse::<f32>().ok().filter(|v| v.is_finite()).ok_or_else(|| bad(key, "expected a finite number".into()))
    };
    let grid: Vec<usize> = get("edgemed.glow.grid")?
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad("edgemed.glow.grid", "expected X,Y,Z".into()))?;
    let [gx, gy, gz] = grid.as_slice() else { return Err(bad("edgemed.glow.grid", "expected X,Y,Z".into())) };
    let mut latent_len = 0usize;
    for s in get("edgemed.glow.latent_shapes")?.split(',') {
        let dims: Vec<usize> = s
            .split('x')
            .map(|d| d.trim().parse::<usize>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| bad("edgemed.glow.latent_shapes", "expected CxXxYxZ,...".into()))?;
        latent_len += dims.iter().product::<usize>();
    }
    let spec = TwinSpec {
        grid: [*gx, *gy, *gz],
        latent_len,
        latent_offset: float("edgemed.glow.latent_offset")?,
        latent_scale: float("edgemed.glow.latent_scale")?,
        intensity_scale: float("edgemed.glow.intensity_scale")?,
        intensity_offset: float("edgemed.glow.intensity_offset")?,
    };
    if spec.latent_scale == 0.0 || spec.intensity_scale == 0.0 || spec.grid.contains(&0) {
        return Err(bad("edgemed.glow.*", "scales and grid must be non-zero".into()));
    }
    Ok(spec)
}

/// The twin's three models as files, checked to belong together.
pub struct TwinModels {
    pub encoder: OnnxModel,
    pub decoder: OnnxModel,
    pub temporal: OnnxModel,
    pub spec: TwinSpec,
}

impl TwinModels {
    /// Loads `dir/{encoder,decoder,temporal}.onnx` with `load` (the caller's manifest and budget checks).
    pub fn load<E: From<Error>>(dir: &Path, load: impl Fn(&Path) -> std::result::Result<OnnxModel, E>) -> std::result::Result<Self, E> {
        if !dir.is_dir() {
            return Err(E::from(Error::Invalid(format!(
                "{}: expected the aging twin's directory (encoder.onnx, decoder.onnx, temporal.onnx from `edgemed export aging-twin`)",
                dir.display()
            ))));
        }
        let path = |n: &str| -> PathBuf { dir.join(format!("{n}.onnx")) };
        let (encoder, decoder, temporal) = (load(&path("encoder"))?, load(&path("decoder"))?, load(&path("temporal"))?);
        let spec = spec_of(&encoder, "encoder")?;
        for (m, role) in [(&decoder, "decoder"), (&temporal, "temporal")] {
            if spec_of(m, role)? != spec {
                return Err(E::from(Error::Invalid(format!(
                    "{}: its grid, latent layout or normalisation differ from {}'s: the models come from different exports",
                    m.path.display(),
                    encoder.path.display()
                ))));
            }
        }
        Ok(TwinModels { encoder, decoder, temporal, spec })
    }
}

/// The compiled twin.
pub struct Twin {
    encoder: Box<dyn Backend>,
    decoder: Box<dyn Backend>,
    temporal: Box<dyn Backend>,
    pub spec: TwinSpec,
}

fn finite(what: &str, v: &[f32]) -> Result<()> {
    let bad = v.iter().filter(|x| !x.is_finite()).count();
    if bad > 0 {
        return Err(Error::NonFinite { what: format!("{what}: {bad} values") });
    }
    Ok(())
}

impl Twin {
    pub fn new(models: &TwinModels, opts: &BackendOptions) -> Result<Self> {
        let s = &models.spec;
        let [x, y, z] = s.grid;
        Ok(Twin {
            encoder: backend::create(&models.encoder, &[1, 1, x, y, z], opts)?,
            decoder: backend::create(&models.decoder, &[1, s.latent_len], opts)?,
            temporal: backend::create(&models.temporal, &[1, s.latent_len], opts)?,
            spec: s.clone(),
        })
    }

    /// G: a volume on the model grid, in the volume's intensity units -> (packed latent, log-determinant).
    pub fn encode(&self, v: &Array3<f32>) -> Result<(Vec<f32>, f32)> {
        let s = &self.spec;
        let x = v
            .mapv(|v| v * s.intensity_scale + s.intensity_offset)
            .into_dyn()
            .into_shape_with_order(IxDyn(self.encoder.input_shape()))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let mut out = self.encoder.run(x)?;
        if out.len() < 2 {
            return Err(Error::Invalid("the encoder must output the latent and the log-determinant".into()));
        }
        let latent = out.swap_remove(0).into_raw_vec_and_offset().0;
        finite("encoder latent", &latent)?;
        let logdet = out[0].iter().next().copied().unwrap_or(f32::NAN);
        Ok((latent, logdet))
    }

    /// z <- clip((z + a) / b, 0, 1).
    pub fn normalise(&self, z: &mut [f32]) {
        let (a, b) = (self.spec.latent_offset, self.spec.latent_scale);
        z.iter_mut().for_each(|v| *v = ((*v + a) / b).clamp(0.0, 1.0));
    }

    /// P: one year on a normalised latent.
    pub fn step(&self, zn: &[f32]) -> Result<Vec<f32>> {
        let x = ArrayD::from_shape_vec(IxDyn(&[1, zn.len()]), zn.to_vec()).map_err(|e| Error::Invalid(e.to_string()))?;
        let out = self.temporal.run(x)?.swap_remove(0).into_raw_vec_and_offset().0;
        finite("temporal model output", &out)?;
        Ok(out)
    }

    /// G⁻¹ of a normalised latent (z = b zn - a), back in the volume's intensity units.
    pub fn decode(&self, zn: &[f32]) -> Result<Array3<f32>> {
        let (a, b) = (self.spec.latent_offset, self.spec.latent_scale);
        let z: Vec<f32> = zn.iter().map(|v| v * b - a).collect();
        let x = ArrayD::from_shape_vec(IxDyn(&[1, z.len()]), z).map_err(|e| Error::Invalid(e.to_string()))?;
        let out = self.decoder.run(x)?.swap_remove(0);
        finite("decoder output", out.as_slice().unwrap_or(&[]))?;
        let s = &self.spec;
        let [gx, gy, gz] = s.grid;
        let v = out.into_shape_with_order((gx, gy, gz)).map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(v.mapv(|x| (x - s.intensity_offset) / s.intensity_scale))
    }
}

/// A named intensity band whose volume is tracked per year (the paper follows the
/// ventricles, CSF-dense voxels).
#[derive(Debug, Clone, PartialEq)]
pub struct Band {
    pub name: String,
    pub lo: f32,
    pub hi: f32,
}

impl std::str::FromStr for Band {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Invalid(format!("--track {s:?}: expected NAME:LO:HI (intensities of the written volume), e.g. csf:80:95"));
        let parts: Vec<&str> = s.split(':').collect();
        let [name, lo, hi] = parts.as_slice() else { return Err(bad()) };
        let (lo, hi) = (lo.parse::<f32>().map_err(|_| bad())?, hi.parse::<f32>().map_err(|_| bad())?);
        if name.is_empty() || lo.is_nan() || hi.is_nan() || lo > hi {
            return Err(bad());
        }
        Ok(Band { name: name.to_string(), lo, hi })
    }
}

impl Band {
    pub fn voxels(&self, v: &Array3<f32>) -> usize {
        v.iter().filter(|&&x| x >= self.lo && x <= self.hi).count()
    }
}

/// A volume brought onto the model grid, with the header that places the grid in the
/// scanner space of the original.
pub struct Prepared {
    pub data: Array3<f32>,
    pub header: NiftiHeader,
    /// Voxel volume of the grid in mL (header units taken as mm).
    pub voxel_ml: f64,
}

/// CT window (optional), crop of `crop` voxels around the centre of gravity
/// (optional, padded with the volume's minimum), trilinear resampling to `grid`.
pub fn prepare(vol: &Volume, ct_window: bool, crop: Option<[usize; 3]>, grid: [usize; 3]) -> Result<Prepared> {
    let mut data = vol.data.clone();
    if ct_window {
        volume::ct_window(&mut data);
    }
    let (region, start) = match crop {
        Some(size) => {
            if size.contains(&0) {
                return Err(Error::Invalid(format!("--crop {size:?}: sizes must be positive")));
            }
            let fill = data.iter().copied().fold(f32::INFINITY, f32::min);
            let centre = volume::centre_of_gravity(data.view());
            let (c, s) = volume::crop_around(data.view(), centre, size, fill);
            (c, s.map(|v| v as f64))
        }
        None => (data, [0.0; 3]),
    };
    let src = region.shape().to_vec();
    let resampled = if src == grid { region } else { volume::resample_trilinear(region.view(), grid) };
    // Output voxel o's centre sits at input index start + (o + 0.5) step - 0.5 (align_corners=False).
    let step: [f64; 3] = std::array::from_fn(|d| src[d] as f64 / grid[d] as f64);
    let first: [f64; 3] = std::array::from_fn(|d| start[d] + 0.5 * step[d] - 0.5);
    let header = volume::regridded_header(&vol.header, first, step, grid);
    let sp = header.pixdim;
    let voxel_ml = (sp[1] as f64 * sp[2] as f64 * sp[3] as f64).abs() / 1000.0;
    Ok(Prepared { data: resampled, header, voxel_ml })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_parse_and_refuse() {
        assert_eq!("csf:80:95".parse::<Band>().unwrap(), Band { name: "csf".into(), lo: 80.0, hi: 95.0 });
        for bad in ["csf", "csf:1", ":1:2", "x:3:2", "x:a:2"] {
            assert!(bad.parse::<Band>().is_err(), "{bad}");
        }
    }
}
