//! Brain age and sex from a T1-weighted MRI with a 3-D BagNet local-map model
//! (`edgemed export bagnet3d`, then `edgemed export --local-map`, optionally
//! `edgemed quantize`): preparation of the volume (1 mm isotropic, brain mask,
//! whitening inside the mask), the local prediction maps computed tile by tile, the
//! subject's prediction (the maps' mean), and the maps' geometry in the input's space.
//!
//! Map voxel i (per axis) sees input voxels `s i .. s i + rf - 1` (stride s = 8,
//! receptive field rf from the model's metadata), so its centre is input voxel
//! `s i + (rf - 1) / 2`, and an input of n voxels gives `(n - rf) / s + 1` map voxels.
//! With local normalisation (the model's `edgemed.norm` is not `instance`) a tile of
//! T map voxels per side needs only the `s (T - 1) + rf` input voxels under it: tiles
//! reproduce the whole-volume maps bit for bit and working memory follows the tile.
//! Instance normalisation takes its statistics from the whole volume: the INT8 engine
//! streams them over the tiles, a pass per norm ([`local_maps`]), again bit for bit
//! the whole volume's maps in memory that follows the tile.

use nifti::NiftiHeader;

use crate::backend::{self, BackendOptions};
use crate::error::{Error, Result};
use crate::formats::volume::{regridded_header, resample_trilinear, Volume};
use crate::model::{Dim, OnnxModel};
use crate::ndarray::{s, Array3, Array4, ArrayD, ArrayView3, Axis, IxDyn};

/// What the runtime needs to know about a local-map model.
#[derive(Debug, Clone, PartialEq)]
pub struct MapGeometry {
    pub receptive_field: usize,
    pub stride: usize,
    /// Names of the map's channels (`age`, `sex_0`, `sex_1`).
    pub outputs: Vec<String>,
    /// Whether each map value depends on its receptive field alone (no instance norm).
    pub local: bool,
    /// Fixed spatial input size, if the model has one.
    pub fixed_input: Option<[usize; 3]>,
}

impl MapGeometry {
    /// Map voxels along an axis of `n` input voxels.
    pub fn map_len(&self, n: usize) -> usize {
        if n < self.receptive_field {
            0
        } else {
            (n - self.receptive_field) / self.stride + 1
        }
    }

    /// Input voxel at the centre of map voxel 0's receptive field.
    pub fn first_centre(&self) -> f64 {
        (self.receptive_field as f64 - 1.0) / 2.0
    }

    pub fn channel(&self, name: &str) -> Option<usize> {
        self.outputs.iter().position(|o| o == name)
    }
}

pub fn geometry(model: &OnnxModel) -> Result<MapGeometry> {
    let raw = &model.metadata.raw;
    let get = |k: &str| raw.get(&format!("edgemed.{k}")).map(|v| v.trim().to_string());
    let bad = |key: &str, reason: String| Error::BadMetadata {
        path: model.path.clone(),
        key: format!("edgemed.{key}"),
        value: get(key).unwrap_or_default(),
        reason,
    };
    let not_map = |reason: String| Error::NotAnImageModel { path: model.path.clone(), reason };
    if get("local_map").as_deref() != Some("true") {
        return Err(not_map(
            "no 3-D local-map head (edgemed.local_map is not set): export a BagNet with `edgemed export bagnet3d`, then rewrite it with `edgemed export --local-map`".into(),
        ));
    }
    let number = |key: &str| -> Result<usize> {
        let v = get(key).ok_or_else(|| bad(key, "missing: not a 3-D BagNet map model (edgemed export bagnet3d)".into()))?;
        v.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| bad(key, "expected a positive integer".into()))
    };
    let receptive_field = number("receptive_field")?;
    let stride = number("map_stride")?;
    let outputs: Vec<String> =
        get("outputs").ok_or_else(|| bad("outputs", "missing".into()))?.split(',').map(|s| s.trim().to_string()).collect();
    let has = |name: &str| outputs.iter().any(|o| o == name);
    if !(has("age") || has("sex_0") && has("sex_1")) {
        return Err(bad("outputs", "expected age and/or sex_0,sex_1".into()));
    }
    let dims = model.spatial_input()?;
    let fixed_input = match dims.as_slice() {
        [_, Dim::Fixed(1), rest @ ..] if rest.len() == 3 => match rest {
            [Dim::Fixed(a), Dim::Fixed(b), Dim::Fixed(c)] => Some([*a, *b, *c]),
            _ => None,
        },
        _ => return Err(not_map(format!("input {dims:?}: expected [batch, 1, X, Y, Z] (a 3-D model of one channel)"))),
    };
    let instance = get("norm").as_deref() == Some("instance")
        || model.graph().node.iter().any(|n| n.op_type == "InstanceNormalization" || n.op_type == "GroupNormalization");
    Ok(MapGeometry { receptive_field, stride, outputs, local: !instance, fixed_input })
}

/// The volume as the model wants it: 1 mm isotropic, whitened inside the brain mask
/// (zero outside), with the header of that grid.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub input: Array3<f32>,
    pub mask: Array3<bool>,
    pub header: NiftiHeader,
    /// The input's voxel size when it was resampled.
    pub resampled_from: Option<[f32; 3]>,
    pub mask_voxels: usize,
    /// Mean and standard deviation of the intensities inside the mask.
    pub whitening: (f32, f32),
}

/// Brain volumes outside this range (mL) are not a brain mask of a skull-stripped head.
pub const BRAIN_ML: (f64, f64) = (300.0, 3000.0);

/// Resamples when the voxels are not 1 mm (unless `resample` is false: then an error),
/// takes the mask (`mask`, else the non-zero voxels of a skull-stripped input), checks
/// it is plausibly a brain, and whitens inside it.
pub fn prepare(vol: &Volume, mask: Option<&Volume>, resample: bool) -> Result<Prepared> {
    let path = || std::path::PathBuf::from("input");
    let sp = vol.spacing();
    if sp.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(Error::BadVolume { path: path(), reason: format!("voxel size {sp:?} mm is not positive") });
    }
    if let Some(m) = mask {
        if m.shape() != vol.shape() {
            return Err(Error::Invalid(format!(
                "the mask is {:?} voxels, the image {:?}: they must share the grid",
                m.shape(),
                vol.shape()
            )));
        }
    }
    let iso = sp.iter().all(|s| (s - 1.0).abs() < 1e-3);
    let (data, mask_data, header, resampled_from) = if iso {
        (vol.data.clone(), mask.map(|m| m.data.clone()), vol.header.clone(), None)
    } else {
        if !resample {
            return Err(Error::Invalid(format!(
                "voxels are {:.3}x{:.3}x{:.3} mm; the model wants 1 mm isotropic (leave out --no-resample to resample)",
                sp[0], sp[1], sp[2]
            )));
        }
        let n = vol.shape();
        let shape = [0, 1, 2].map(|d| ((n[d] as f64 * sp[d] as f64).round() as usize).max(1));
        // Voxel o of the new grid is at input index (o + 0.5) n / n' - 0.5, as the resampler aligns them.
        let step = [0, 1, 2].map(|d| n[d] as f64 / shape[d] as f64);
        let first = step.map(|s| 0.5 * s - 0.5);
        let header = regridded_header(&vol.header, first, step, shape);
        let m = mask.map(|m| resample_trilinear(m.data.mapv(|v| if v > 0.0 { 1.0 } else { 0.0 }).view(), shape).mapv(|v| v - 0.5));
        (resample_trilinear(vol.data.view(), shape), m, header, Some(sp))
    };
    // The mask: given, or the non-zero voxels (a skull-stripped input is zero outside the brain).
    let mask: Array3<bool> = match &mask_data {
        Some(m) => m.mapv(|v| v > 0.0),
        None => data.mapv(|v| v != 0.0),
    };
    let count = mask.iter().filter(|&&b| b).count();
    let total = mask.len();
    let ml = count as f64 / 1000.0;
    let what = if mask_data.is_some() { "the mask" } else { "the non-zero voxels (no --mask: a skull-stripped input)" };
    if count == 0 {
        return Err(Error::Invalid(format!("{what}: empty, no brain to predict from")));
    }
    if ml < BRAIN_ML.0 || ml > BRAIN_ML.1 || count as f64 > 0.9 * total as f64 {
        return Err(Error::Invalid(format!(
            "{what}: {ml:.0} mL, {:.0}% of the field of view: not a brain mask (a brain is {:.0} to {:.0} mL and leaves background around it; skull-strip the input or give --mask)",
            100.0 * count as f64 / total as f64,
            BRAIN_ML.0,
            BRAIN_ML.1
        )));
    }
    let (mut sum, mut sq) = (0f64, 0f64);
    for (v, &m) in data.iter().zip(mask.iter()) {
        if m {
            sum += *v as f64;
            sq += (*v as f64) * (*v as f64);
        }
    }
    let mean = sum / count as f64;
    let std = (sq / count as f64 - mean * mean).max(0.0).sqrt();
    if std.is_nan() || std < 1e-6 * mean.abs().max(1.0) {
        return Err(Error::Invalid(format!("{what}: intensities are constant inside the brain; nothing to whiten")));
    }
    let mut input = data;
    input.zip_mut_with(&mask, |v, &m| *v = if m { ((*v as f64 - mean) / std) as f32 } else { 0.0 });
    Ok(Prepared { input, mask, header, resampled_from, mask_voxels: count, whitening: (mean as f32, std as f32) })
}

/// Tile starts along a map axis of `m` voxels: every `t`, the last flush with the end.
fn starts(m: usize, t: usize) -> Vec<usize> {
    if m <= t {
        return vec![0];
    }
    let mut s: Vec<usize> = (0..m - t).step_by(t).collect();
    s.push(m - t);
    s
}

/// The local maps `[K, mx, my, mz]` of `x`, computed in tiles of `tile` map voxels per
/// side (0: the whole volume at once; at least 2 otherwise) on `threads` threads (each
/// with one tile in flight); `progress(done, total)` after every tile's run.
///
/// A model with instance norms ([`MapGeometry::local`] false) sees the volume cropped
/// to `s m + rf - 1` voxels per axis (`m` whole tiles of stride `s` with their
/// receptive field: at most `s - 1` voxels off the far end), whole or in tiles: its
/// tiles are streamed by the INT8 engine ([`streamed_maps`]), bit for bit the whole
/// volume's maps.
pub fn local_maps(
    model: &OnnxModel,
    geo: &MapGeometry,
    x: ArrayView3<f32>,
    tile: usize,
    threads: usize,
    opts: &BackendOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<Array4<f32>> {
    if tile == 1 {
        // A tile of one map voxel ends in 1x1x1 activations, which tract multiplies on a
        // matrix-vector path that rounds differently from the whole volume's.
        return Err(Error::Invalid("tiles of 1 map voxel: give at least 2 (or 0 for the whole volume)".into()));
    }
    let n = [x.shape()[0], x.shape()[1], x.shape()[2]];
    if geo.local {
        return tiled_maps(model, geo, x, tile, threads, opts, progress);
    }
    let (s, rf) = (geo.stride, geo.receptive_field);
    let m = n.map(|v| (v + 1).saturating_sub(rf) / s);
    if m.contains(&0) {
        return Err(Error::Invalid(format!(
            "the volume {n:?} is smaller than the receptive field {rf} and one stride {s} of an instance-norm model ({} voxels)",
            rf + s - 1
        )));
    }
    let crop = m.map(|v| s * v + rf - 1);
    let x = x.slice_move(s![..crop[0], ..crop[1], ..crop[2]]);
    if tile == 0 || m.iter().all(|&v| v <= tile) {
        // The whole crop: the statistics take the voxels past the last map voxel's field too.
        let net = backend::create(model, &[1, 1, crop[0], crop[1], crop[2]], opts)?;
        let input = x.to_owned().into_shape_with_order(IxDyn(&[1, 1, crop[0], crop[1], crop[2]])).expect("same size");
        let maps = tile_map(net.run(input)?, geo.outputs.len(), m, [0; 3])?;
        progress(1, 1);
        Ok(maps)
    } else {
        streamed_maps(model, geo, x, tile, threads, opts, progress)
    }
}

/// The tiles' map starts `[a, b, c]` (per axis every `t`, the last flush with the end).
fn tile_grid(m: [usize; 3], t: [usize; 3]) -> (Vec<Vec<usize>>, Vec<[usize; 3]>) {
    let starts: Vec<Vec<usize>> = (0..3).map(|a| starts(m[a], t[a])).collect();
    let mut tiles = vec![];
    for &a in &starts[0] {
        for &b in &starts[1] {
            for &c in &starts[2] {
                tiles.push([a, b, c]);
            }
        }
    }
    (starts, tiles)
}

/// Runs `work` on every tile on `threads` threads (each takes every n-th tile) and hands
/// each result to `sink` on this thread, in the order they finish; the first error
/// stops the threads after their current tile.
fn for_each_tile<T: Send>(
    tiles: &[[usize; 3]],
    threads: usize,
    work: impl Fn([usize; 3]) -> Result<T> + Sync,
    mut sink: impl FnMut([usize; 3], T) -> Result<()>,
) -> Result<()> {
    let threads = threads.clamp(1, tiles.len().max(1));
    let (tx, rx) = std::sync::mpsc::channel::<Result<([usize; 3], T)>>();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| -> Result<()> {
        for tid in 0..threads {
            let (tx, work, stop) = (tx.clone(), &work, &stop);
            scope.spawn(move || {
                for &start in tiles.iter().skip(tid).step_by(threads) {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    let r = work(start).map(|y| (start, y));
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        return;
                    }
                }
            });
        }
        drop(tx);
        for r in rx.iter() {
            let done = r.and_then(|(start, y)| sink(start, y));
            done.inspect_err(|_| stop.store(true, std::sync::atomic::Ordering::Relaxed))?;
        }
        Ok(())
    })
}

/// One tile's input `[1, 1, span...]` at map voxel `[a, b, c]`.
fn tile_input(x: &ArrayView3<f32>, stride: usize, span: [usize; 3], [a, b, c]: [usize; 3]) -> ArrayD<f32> {
    let s = stride;
    let view = x.slice(s![s * a..s * a + span[0], s * b..s * b + span[1], s * c..s * c + span[2]]);
    view.to_owned().into_shape_with_order(IxDyn(&[1, 1, span[0], span[1], span[2]])).expect("same size")
}

/// A tile's map `[K, t...]` from the model's output, checked.
fn tile_map(y: Vec<ArrayD<f32>>, k: usize, t: [usize; 3], at: [usize; 3]) -> Result<Array4<f32>> {
    let y = y.into_iter().next().ok_or_else(|| Error::Invalid("the model has no output".into()))?;
    let want = [1, k, t[0], t[1], t[2]];
    if y.shape() != want {
        return Err(Error::WrongShape { got: y.shape().to_vec(), expected: want.to_vec() });
    }
    if y.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite { what: format!("the map of the tile at map voxel {at:?}") });
    }
    Ok(y.index_axis_move(Axis(0), 0).into_dimensionality().expect("4-D"))
}

/// The maps of a model whose values depend on their receptive field alone, or of any
/// model run whole (`tile` 0).
fn tiled_maps(
    model: &OnnxModel,
    geo: &MapGeometry,
    x: ArrayView3<f32>,
    tile: usize,
    threads: usize,
    opts: &BackendOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<Array4<f32>> {
    let n = [x.shape()[0], x.shape()[1], x.shape()[2]];
    let m = n.map(|v| geo.map_len(v));
    if m.contains(&0) {
        return Err(Error::Invalid(format!("the volume {n:?} is smaller than the receptive field {}", geo.receptive_field)));
    }
    let whole = tile == 0 || m.iter().all(|&v| v <= tile);
    let t = if whole { m } else { m.map(|v| v.min(tile)) };
    let (s, rf) = (geo.stride, geo.receptive_field);
    let span = t.map(|v| s * (v - 1) + rf);
    if let Some(f) = geo.fixed_input {
        if f != span {
            return Err(Error::Invalid(format!(
                "the model's input is fixed at {f:?}; these tiles need {span:?} (export it without --window)"
            )));
        }
    }
    let net = backend::create(model, &[1, 1, span[0], span[1], span[2]], opts)?;
    let k = geo.outputs.len();
    let (_, tiles) = tile_grid(m, t);
    let total = tiles.len();
    let threads = if net.parallel_runs() { threads } else { 1 };
    let mut done = 0;
    map_pass(
        [k, m[0], m[1], m[2]],
        t,
        &tiles,
        threads,
        |at| net.run(tile_input(&x, s, span, at)),
        || {
            done += 1;
            progress(done, total);
        },
    )
}

/// The maps `[K, m...]` from every tile's run (its map of `t` voxels per side at its
/// start), on `threads` threads; `tick` after each tile.
fn map_pass(
    dims: [usize; 4],
    t: [usize; 3],
    tiles: &[[usize; 3]],
    threads: usize,
    run: impl Fn([usize; 3]) -> Result<Vec<ArrayD<f32>>> + Sync,
    mut tick: impl FnMut(),
) -> Result<Array4<f32>> {
    let mut maps = Array4::<f32>::zeros(dims);
    for_each_tile(
        tiles,
        threads,
        |at| tile_map(run(at)?, dims[0], t, at),
        |[a, b, c], y| {
            maps.slice_mut(s![.., a..a + t[0], b..b + t[1], c..c + t[2]]).assign(&y);
            tick();
            Ok(())
        },
    )?;
    Ok(maps)
}

/// The maps of an instance-norm model over tiles of `tile` map voxels, bit for bit its
/// whole-volume maps in bounded memory ([`edgemed_engine::norms`]): a pass over the
/// tiles per norm, each run up to that norm with the statistics of the ones before it
/// and summing the activations it owns, then a pass for the maps. Tiles are
/// `s t + rf - 1` voxels wide (one stride more than their maps need) so that together
/// they hold every activation of the volume, including those that reach no map value
/// but count in a norm's statistics. The work is about (norms + 1) / 2 times one pass.
fn streamed_maps(
    model: &OnnxModel,
    geo: &MapGeometry,
    x: ArrayView3<f32>,
    tile: usize,
    threads: usize,
    opts: &BackendOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<Array4<f32>> {
    use edgemed_engine::norms::{owned_box, site_strides, NormPass, NormSums, PassResult};
    let (s, rf, k) = (geo.stride, geo.receptive_field, geo.outputs.len());
    let n = [x.shape()[0], x.shape()[1], x.shape()[2]];
    let m = n.map(|v| (v + 1 - rf) / s);
    let t = m.map(|v| v.min(tile));
    let span = t.map(|v| s * v + rf - 1);
    if geo.fixed_input.is_some() {
        return Err(Error::Invalid(
            "an instance-norm model in tiles needs a free input size (export it without --window), or run it whole (--tile 0)".into(),
        ));
    }
    let net = backend::create(model, &[1, 1, span[0], span[1], span[2]], opts)?;
    let engine = net.engine().ok_or_else(|| {
        Error::Invalid(format!(
            "tiles of an instance-norm model are streamed by the INT8 engine, not {}: quantize the model (edgemed quantize) or run it whole (--tile 0)",
            net.name()
        ))
    })?;
    let sites = engine.norm_sites();
    let wider = edgemed_engine::Engine::for_input(model, &[1, 1, span[0] + s, span[1] + s, span[2] + s])?.norm_sites();
    let strides = site_strides(&sites, &wider, s).map_err(Error::Invalid)?;
    // Each norm's input over the whole volume, to check that the tiles' boxes partition it.
    let volume_sites = edgemed_engine::Engine::for_input(model, &[1, 1, n[0], n[1], n[2]])?.norm_sites();
    let (starts, tiles) = tile_grid(m, t);
    let voxel_starts: Vec<Vec<usize>> = starts.iter().map(|v| v.iter().map(|a| a * s).collect()).collect();
    let index = |at: [usize; 3]| [0, 1, 2].map(|a| starts[a].binary_search(&at[a]).expect("a tile's start"));
    let total = tiles.len() * (sites.len() + 1);
    let mut done = 0;
    let mut given: Vec<NormSums> = Vec::with_capacity(sites.len());
    for (j, site) in sites.iter().enumerate() {
        let mut sum: Option<NormSums> = None;
        for_each_tile(
            &tiles,
            threads,
            |at| {
                let region = owned_box(&voxel_starts, &index(at), &strides[j], &site.spatial).map_err(Error::Invalid)?;
                let xt = tile_input(&x, s, span, at);
                match engine.run_pass(xt.as_slice().expect("standard layout"), NormPass { given: &given, collect: Some(&region) })? {
                    PassResult::Sums(sums) => Ok(sums),
                    PassResult::Outputs(_) => Err(Error::Invalid(format!("instance norm {} was not reached", site.name))),
                }
            },
            |_, sums| {
                match &mut sum {
                    None => sum = Some(sums),
                    Some(acc) => acc.merge(&sums).map_err(Error::Invalid)?,
                }
                done += 1;
                progress(done, total);
                Ok(())
            },
        )?;
        let sum = sum.expect("at least one tile");
        let want: usize = volume_sites.get(j).map_or(0, |v| v.spatial.iter().product());
        if sum.count() != want as u64 {
            return Err(Error::Invalid(format!(
                "instance norm {}: the tiles hold {} of its {want} activations per channel over the volume {n:?}; this model cannot be streamed (run it whole: --tile 0)",
                site.name,
                sum.count()
            )));
        }
        given.push(sum);
    }
    let last = |at| {
        let xt = tile_input(&x, s, span, at);
        Ok(engine.run_pass(xt.as_slice().expect("standard layout"), NormPass { given: &given, collect: None })?.outputs())
    };
    map_pass([k, m[0], m[1], m[2]], t, &tiles, threads, last, || {
        done += 1;
        progress(done, total);
    })
}

/// The subject's prediction: the maps' means (the model's pooled output).
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub age: Option<f64>,
    /// The two sex logits and the probability of class 1 (`sex_1`).
    pub sex_logits: Option<[f64; 2]>,
    pub sex_prob: Option<f64>,
}

pub fn predict(geo: &MapGeometry, maps: &Array4<f32>) -> Prediction {
    let mean = |c: usize| {
        let v = maps.index_axis(Axis(0), c);
        v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64
    };
    let age = geo.channel("age").map(mean);
    let sex_logits = geo.channel("sex_0").zip(geo.channel("sex_1")).map(|(a, b)| [mean(a), mean(b)]);
    let sex_prob = sex_logits.map(|[l0, l1]| 1.0 / (1.0 + (l0 - l1).exp()));
    Prediction { age, sex_logits, sex_prob }
}

/// The maps written per subject: `age` (years per location) and `sex` (the local
/// logit of class 1 over class 0, whose mean is the subject's logit difference),
/// NaN where the voxel at a map voxel's centre is outside the mask.
pub fn named_maps(geo: &MapGeometry, maps: &Array4<f32>, mask: &Array3<bool>) -> Vec<(&'static str, Array3<f32>)> {
    let (s, c0) = (geo.stride, (geo.receptive_field - 1) / 2);
    let masked = |mut a: Array3<f32>| {
        for ((i, j, k), v) in a.indexed_iter_mut() {
            if !mask[[s * i + c0, s * j + c0, s * k + c0]] {
                *v = f32::NAN;
            }
        }
        a
    };
    let mut out = vec![];
    if let Some(c) = geo.channel("age") {
        out.push(("age", masked(maps.index_axis(Axis(0), c).to_owned())));
    }
    if let (Some(a), Some(b)) = (geo.channel("sex_0"), geo.channel("sex_1")) {
        out.push(("sex", masked(&maps.index_axis(Axis(0), b) - &maps.index_axis(Axis(0), a))));
    }
    out
}

/// The maps' header: voxel i at the centre of its receptive field in the prepared
/// (1 mm) grid, `stride` mm apart, same scanner space as `grid`.
pub fn map_header(grid: &NiftiHeader, geo: &MapGeometry, dims: [usize; 3]) -> NiftiHeader {
    let c = geo.first_centre();
    let mut h = regridded_header(grid, [c; 3], [geo.stride as f64; 3], dims);
    h.datatype = 16;
    h.bitpix = 32;
    h.scl_slope = 1.0;
    h.scl_inter = 0.0;
    h
}

/// Three mid-plane slices (sagittal, coronal, axial) of the anatomy in grey with `map`
/// (one value per map voxel, NaN: none) blended over it, side by side, 2 pixels per
/// voxel, superior / anterior up. Returns the image and the map's colour range.
pub fn overlay(anatomy: ArrayView3<f32>, mask: &Array3<bool>, geo: &MapGeometry, map: &Array3<f32>) -> (image::RgbImage, (f32, f32)) {
    let n = [anatomy.shape()[0], anatomy.shape()[1], anatomy.shape()[2]];
    let (lo_a, hi_a) =
        anatomy.iter().zip(mask.iter()).filter(|(_, &m)| m).fold((f32::MAX, f32::MIN), |(l, h), (&v, _)| (l.min(v), h.max(v)));
    let (lo_m, hi_m) = map.iter().filter(|v| v.is_finite()).fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    let grey = |v: f32| (((v - lo_a) / (hi_a - lo_a).max(1e-12)).clamp(0.0, 1.0) * 255.0) as u8;
    let (s, c0) = (geo.stride as f64, geo.first_centre());
    let map_at = |p: [usize; 3]| -> f32 {
        let idx = [0, 1, 2].map(|d| ((p[d] as f64 - c0) / s).round());
        if (0..3).any(|d| idx[d] < 0.0 || idx[d] as usize >= map.shape()[d]) || !mask[p] {
            return f32::NAN;
        }
        map[[idx[0] as usize, idx[1] as usize, idx[2] as usize]]
    };
    // Each panel: (columns axis, rows axis) and the fixed axis at its middle.
    let panels = [(1, 2, 0), (0, 2, 1), (0, 1, 2)];
    let scale = 2u32;
    let width: usize = panels.iter().map(|&(c, _, _)| n[c]).sum();
    let height = panels.iter().map(|&(_, r, _)| n[r]).max().unwrap_or(0);
    let mut img = image::RgbImage::new(width as u32 * scale, height as u32 * scale);
    let mut x0 = 0usize;
    for (ca, ra, fa) in panels {
        for col in 0..n[ca] {
            for row in 0..n[ra] {
                let mut p = [0usize; 3];
                p[fa] = n[fa] / 2;
                p[ca] = col;
                p[ra] = n[ra] - 1 - row;
                // Outside the brain the whitened input is 0: show it black, not mid-grey.
                let g = if mask[p] { grey(anatomy[p]) as f32 } else { 0.0 };
                let v = map_at(p);
                let rgb = if v.is_finite() {
                    let c = crate::tasks::heatmap::colour((v - lo_m) / (hi_m - lo_m).max(1e-12));
                    c.map(|c| (0.5 * g + 0.5 * c as f32) as u8)
                } else {
                    [g as u8; 3]
                };
                for dy in 0..scale {
                    for dx in 0..scale {
                        img.put_pixel((x0 + col) as u32 * scale + dx, row as u32 * scale + dy, image::Rgb(rgb));
                    }
                }
            }
        }
        x0 += n[ca];
    }
    (img, (lo_m, hi_m))
}

/// How far one model's maps are from another's (an INT8 model's from its FP32 one),
/// over the map voxels inside the mask, per head.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Agreement {
    pub head: String,
    pub max_abs_diff: f32,
    pub rms_diff: f32,
    /// Pearson correlation of the two maps.
    pub correlation: f32,
    /// Difference of the subject's predictions (map means over every voxel).
    pub prediction_diff: f32,
}

pub fn agreement(geo: &MapGeometry, maps: &Array4<f32>, reference: &Array4<f32>, mask: &Array3<bool>) -> Vec<Agreement> {
    let a = named_maps(geo, maps, mask);
    let b = named_maps(geo, reference, mask);
    let full = |m: &Array4<f32>, name: &str| -> f32 {
        let mean = |c: usize| m.index_axis(Axis(0), c).mean().unwrap_or(0.0);
        match name {
            "age" => geo.channel("age").map_or(0.0, mean),
            _ => geo.channel("sex_1").zip(geo.channel("sex_0")).map_or(0.0, |(p, q)| mean(p) - mean(q)),
        }
    };
    a.iter()
        .zip(&b)
        .map(|((name, x), (_, y))| {
            let pairs: Vec<(f64, f64)> =
                x.iter().zip(y.iter()).filter(|(u, _)| u.is_finite()).map(|(&u, &v)| (u as f64, v as f64)).collect();
            let n = pairs.len().max(1) as f64;
            let (mx, my) = (pairs.iter().map(|p| p.0).sum::<f64>() / n, pairs.iter().map(|p| p.1).sum::<f64>() / n);
            let (mut sxy, mut sxx, mut syy, mut max, mut sq) = (0.0, 0.0, 0.0, 0f64, 0.0);
            for (u, v) in &pairs {
                sxy += (u - mx) * (v - my);
                sxx += (u - mx) * (u - mx);
                syy += (v - my) * (v - my);
                max = max.max((u - v).abs());
                sq += (u - v) * (u - v);
            }
            Agreement {
                head: name.to_string(),
                max_abs_diff: max as f32,
                rms_diff: (sq / n).sqrt() as f32,
                correlation: (sxy / (sxx * syy).sqrt().max(1e-30)) as f32,
                prediction_diff: full(maps, name) - full(reference, name),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn tile_starts_cover_and_end_flush() {
        assert_eq!(super::starts(10, 4), vec![0, 4, 6]);
        assert_eq!(super::starts(3, 4), vec![0]);
    }
}
