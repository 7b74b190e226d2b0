//! Super-resolution of a volume, patch by patch, with a model that upsamples a fixed
//! patch by an integer rate (3-D ESPCN from the models crate: valid convolutions, so
//! each patch is read with a `halo` of neighbouring voxels and its output interior is
//! exactly what the whole volume would give there). Only one patch is in flight, so
//! working memory does not grow with the volume; the output is `r^3` times the input.
//!
//! The model says its rate and halo in metadata (`edgemed.upsample_scale`,
//! `edgemed.receptive_halo`); its input is `[batch, 1, P + 2 halo, ...]` and its output
//! `[batch, 1, r P, ...]`. Beyond the volume's border the edge voxels are repeated.

use nifti::NiftiHeader;

use crate::backend::{self, BackendOptions};
use crate::error::{Error, Result};
use crate::model::{Dim, OnnxModel};
use crate::ndarray::{s, Array3, ArrayD, ArrayView3, IxDyn};

/// What the runtime needs to know about an upsampling model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub scale: usize,
    pub halo: usize,
    /// Interior patch: the input minus the halo on both sides.
    pub patch: [usize; 3],
}

pub fn geometry(model: &OnnxModel) -> Result<Geometry> {
    let bad = |key: &str, reason: String| Error::BadMetadata {
        path: model.path.clone(),
        key: format!("edgemed.{key}"),
        value: model.metadata.raw.get(&format!("edgemed.{key}")).cloned().unwrap_or_default(),
        reason,
    };
    let read = |key: &str| -> Result<usize> {
        let v = model
            .metadata
            .raw
            .get(&format!("edgemed.{key}"))
            .ok_or_else(|| bad(key, "missing: not an upsampling model (export one with `edgemed export espcn3d`)".into()))?;
        v.trim().parse::<usize>().map_err(|_| bad(key, "expected a non-negative integer".into()))
    };
    let (scale, halo) = (read("upsample_scale")?, read("receptive_halo")?);
    if scale == 0 {
        return Err(bad("upsample_scale", "must be at least 1".into()));
    }
    let dims = model.spatial_input()?;
    let not_volume = |reason: String| Error::NotAnImageModel { path: model.path.clone(), reason };
    let fixed: Vec<usize> = match dims.as_slice() {
        [_, Dim::Fixed(1), rest @ ..] if rest.len() == 3 => rest
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) if *n > 2 * halo => Ok(*n - 2 * halo),
                _ => Err(not_volume(format!("spatial input dims {dims:?} must be fixed and larger than twice the halo {halo}"))),
            })
            .collect::<Result<_>>()?,
        _ => return Err(not_volume(format!("input {dims:?}: expected [batch, 1, X, Y, Z]"))),
    };
    Ok(Geometry { scale, halo, patch: [fixed[0], fixed[1], fixed[2]] })
}

/// Patch starts along one axis: every `patch` voxels, the last one flush with the end
/// (recomputing a few voxels rather than padding the model's input).
fn starts(n: usize, patch: usize) -> Vec<usize> {
    if n <= patch {
        return vec![0];
    }
    let mut s: Vec<usize> = (0..n - patch).step_by(patch).collect();
    s.push(n - patch);
    s
}

/// Upsamples `volume` by the model's rate; `progress(done, total)` after every patch.
/// `threads`: with a backend that runs side by side (the INT8 engine, tract), that many
/// patches at once, each on one thread (a volume of one patch splits its ops instead);
/// ONNX Runtime splits each patch's ops. The output is the same at any count: patches
/// are written in the same order.
pub fn upsample(
    model: &OnnxModel,
    volume: ArrayView3<f32>,
    opts: &BackendOptions,
    threads: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Array3<f32>> {
    let geo = geometry(model)?;
    let (r, h, p) = (geo.scale, geo.halo, geo.patch);
    let inp = p.map(|x| x + 2 * h);
    let n = [volume.shape()[0], volume.shape()[1], volume.shape()[2]];
    let (sx, sy, sz) = (starts(n[0], p[0]), starts(n[1], p[1]), starts(n[2], p[2]));
    let mut corners: Vec<[usize; 3]> = Vec::with_capacity(sx.len() * sy.len() * sz.len());
    for &x in &sx {
        for &y in &sy {
            corners.extend(sz.iter().map(|&z| [x, y, z]));
        }
    }
    let total = corners.len();
    let (net, side) = backend::create_side_by_side(model, &[1, 1, inp[0], inp[1], inp[2]], opts, threads, total)?;
    // One patch's upsampled voxels, checked: made on whichever thread runs it.
    let patch = |[x0, y0, z0]: [usize; 3]| -> Result<Array3<f32>> {
        let tile = tile_with_halo(volume, [x0, y0, z0], inp, h);
        let mut outs = net.run(tile)?;
        let y = outs.drain(..).next().ok_or_else(|| Error::Invalid("the model has no output".into()))?;
        let want = [1, 1, p[0] * r, p[1] * r, p[2] * r];
        if y.shape() != want {
            return Err(Error::WrongShape { got: y.shape().to_vec(), expected: want.to_vec() });
        }
        if y.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite { what: format!("model output for the patch at {:?}", [x0, y0, z0]) });
        }
        Ok(y.into_shape_with_order((p[0] * r, p[1] * r, p[2] * r)).expect("checked shape"))
    };
    let mut out = Array3::<f32>::zeros((n[0] * r, n[1] * r, n[2] * r));
    let mut done = 0;
    crate::parallel::with_helpers(side - 1, patch, |helpers| -> Result<()> {
        for group in corners.chunks(helpers.threads()) {
            for (&[x0, y0, z0], y) in group.iter().zip(helpers.map(group.to_vec())) {
                let y = y?;
                // Only the part inside the volume (patches larger than a small volume).
                let e = [(n[0] - x0).min(p[0]) * r, (n[1] - y0).min(p[1]) * r, (n[2] - z0).min(p[2]) * r];
                out.slice_mut(s![x0 * r..x0 * r + e[0], y0 * r..y0 * r + e[1], z0 * r..z0 * r + e[2]]).assign(&y.slice(s![
                    ..e[0],
                    ..e[1],
                    ..e[2]
                ]));
                done += 1;
                progress(done, total);
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// The model's input for the patch at `corner`: `inp` voxels a side from `halo` before
/// it, the volume's edge voxels repeated past its faces, as `[1, 1, inp...]`.
fn tile_with_halo(volume: ArrayView3<f32>, corner: [usize; 3], inp: [usize; 3], halo: usize) -> ArrayD<f32> {
    let n = volume.shape();
    let at = |d: usize, i: usize| (corner[d] + i).saturating_sub(halo).min(n[d] - 1);
    let zs: Vec<usize> = (0..inp[2]).map(|k| at(2, k)).collect();
    let mut v = Vec::with_capacity(inp[0] * inp[1] * inp[2]);
    for i in 0..inp[0] {
        for j in 0..inp[1] {
            let row = volume.slice(s![at(0, i), at(1, j), ..]);
            v.extend(zs.iter().map(|&k| row[k]));
        }
    }
    ArrayD::from_shape_vec(IxDyn(&[1, 1, inp[0], inp[1], inp[2]]), v).expect("sized")
}

/// The header of the upsampled volume: voxels `r` times smaller, the same physical
/// extent (voxel centre i' of the output lies at (i' + 0.5) / r - 0.5 of the input).
pub fn upsampled_header(h: &NiftiHeader, r: usize) -> NiftiHeader {
    let step = 1.0 / r as f64;
    let dims = [h.dim[1], h.dim[2], h.dim[3]].map(|d| d.max(1) as usize * r);
    crate::formats::volume::regridded_header(h, [0.5 * step - 0.5; 3], [step; 3], dims)
}

#[cfg(test)]
mod tests {
    #[test]
    fn starts_cover_and_end_flush() {
        assert_eq!(super::starts(10, 4), vec![0, 4, 6]);
        assert_eq!(super::starts(8, 4), vec![0, 4]);
        assert_eq!(super::starts(3, 4), vec![0]);
        assert_eq!(super::starts(4, 4), vec![0]);
    }
}
