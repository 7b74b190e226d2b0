//! `edgemed-run brain-age`'s work (runtime `tasks::brain_age`) with 3-D BagNet maps:
//! tiled maps equal the whole-volume maps bit for bit (FP32 on tract, INT8 on the
//! engine, one and two threads); the MNI152 template (3 mm copy, resampled to 1 mm)
//! end to end: shapes, the maps' affine, the mask, finiteness; and bad input (a 4-D
//! series, a non-brain mask, a model without a 3-D map head, anisotropic voxels
//! without resampling) refused with one line.

use edgemed_converter::graph::Graph;
use edgemed_models::bagnet3d::{self, Config, Norm};
use edgemed_runtime::backend::{BackendKind, BackendOptions};
use edgemed_runtime::formats::volume::{affine, Volume};
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::ndarray::{Array3, Array4, ArrayD, IxDyn};
use edgemed_runtime::tasks::brain_age::{self, MapGeometry};
use edgemed_tests::{fixture, scratch_dir};
use prost::Message;

fn map_model(cfg: &Config, int8: bool) -> OnnxModel {
    let (model, _) = bagnet3d::build_onnx(cfg, None, 21).unwrap();
    let mut g = Graph::from_bytes(&model.encode_to_vec()).unwrap();
    if int8 {
        let calibration: Vec<ArrayD<f32>> =
            (0..2).map(|k| blob(&[41, 41, 41], k).into_shape_with_order(IxDyn(&[1, 1, 41, 41, 41])).unwrap()).collect();
        let opts = edgemed_converter::dfq::Options { calibration, ..Default::default() };
        edgemed_converter::dfq::run(&mut g, &opts).unwrap();
    }
    edgemed_converter::local_map::to_local_map(&mut g).unwrap();
    OnnxModel::from_bytes("map.onnx", &g.to_bytes()).unwrap()
}

/// A smooth blob with texture, zero outside an ellipsoid (a stand-in brain, whitened-ish).
fn blob(shape: &[usize], seed: u64) -> Array3<f32> {
    let s = [shape[shape.len() - 3], shape[shape.len() - 2], shape[shape.len() - 1]];
    Array3::from_shape_fn((s[0], s[1], s[2]), |(i, j, k)| {
        let r = [i, j, k].iter().zip(s).map(|(&p, n)| ((p as f32 + 0.5) / n as f32 - 0.5) * 2.0).map(|u| u * u).sum::<f32>();
        if r > 0.9 {
            0.0
        } else {
            ((i * 7 + j * 13 + k * 3 + seed as usize * 5) % 17) as f32 / 8.0 - 1.0 + (j as f32 * 0.2).sin()
        }
    })
}

fn maps(model: &OnnxModel, geo: &MapGeometry, x: &Array3<f32>, tile: usize, threads: usize, kind: BackendKind) -> Array4<f32> {
    let opts = BackendOptions { kind, memory_budget: 0, ..Default::default() };
    brain_age::local_maps(model, geo, x.view(), tile, threads, &opts, |_, _| {}).unwrap()
}

fn same_bits(a: &Array4<f32>, b: &Array4<f32>) -> bool {
    a.shape() == b.shape() && a.iter().zip(b.iter()).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn tiled_maps_equal_the_whole_volume_bit_for_bit() {
    for (rf, int8) in [(9, false), (33, false), (17, true)] {
        let cfg = Config { receptive_field: rf, width: 4, norm: Norm::Running, ..Config::default() };
        let model = map_model(&cfg, int8);
        let geo = brain_age::geometry(&model).unwrap();
        assert!(geo.local && geo.receptive_field == rf && geo.stride == 8);
        let x = blob(&[rf + 8 * 6 + 3, rf + 8 * 4, rf + 8 * 5 + 7], 1);
        let kind = if int8 { BackendKind::Int8 } else { BackendKind::Tract };
        let whole = maps(&model, &geo, &x, 0, 1, kind);
        assert_eq!(whole.shape(), &[3, 7, 5, 6]);
        for (tile, threads) in [(2, 1), (2, 2), (3, 1), (4, 2)] {
            let tiled = maps(&model, &geo, &x, tile, threads, kind);
            let d = whole.iter().zip(tiled.iter()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            let n = whole.iter().zip(tiled.iter()).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            println!("BagNet-{rf} int8={int8} tile {tile} threads {threads}: max |diff| {d:.2e}, {n} of {} differ", whole.len());
            assert!(
                same_bits(&whole, &tiled),
                "BagNet-{rf} int8={int8}: tiles of {tile} on {threads} threads differ from the whole volume"
            );
        }
    }
}

/// The paper's instance-norm BagNet after INT8 quantization: the INT8 engine streams
/// its norms' statistics over the tiles (a pass per norm, then the maps), so the tiled
/// maps are the whole volume's bit for bit, at 1 and 2 threads, on a volume cropped to
/// whole strides (m = (n + 1 - rf) / 8 map voxels). The FP32 model runs whole on the
/// same crop; tiles of it are refused in one line.
#[test]
fn instance_norm_maps_are_streamed_over_tiles_bit_for_bit() {
    let cfg = Config { receptive_field: 9, width: 4, norm: Norm::Instance, ..Config::default() };
    let (fp32, int8) = (map_model(&cfg, false), map_model(&cfg, true));
    let geo = brain_age::geometry(&int8).unwrap();
    assert!(!geo.local);
    // Remainders of 3, 7 and 0 voxels past whole strides.
    let x = blob(&[9 + 8 * 5 + 3, 9 + 8 * 3 + 7, 9 + 8 * 4], 2);
    let whole = maps(&int8, &geo, &x, 0, 1, BackendKind::Int8);
    assert_eq!(whole.shape(), &[3, 5, 4, 4]);
    for (tile, threads) in [(2, 1), (3, 2), (4, 1)] {
        let tiled = maps(&int8, &geo, &x, tile, threads, BackendKind::Int8);
        let n = whole.iter().zip(tiled.iter()).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        println!("instance-norm BagNet-9 INT8, tiles of {tile} on {threads} threads: {n} of {} differ", whole.len());
        assert!(same_bits(&whole, &tiled), "tiles of {tile} on {threads} threads differ from the whole volume");
    }
    // Under a memory budget that the whole volume's buffers exceed, the whole run is
    // refused before any work and the streamed tiles fit (the command then streams).
    let buffers = |n: usize| edgemed_engine::Engine::for_input(&int8, &[1, 1, n, n, n]).unwrap().buffer_bytes() as u64;
    let (whole_bytes, tile_bytes) = (buffers(8 * 4 + 8), buffers(8 * 2 + 8));
    println!("engine buffers: whole {whole_bytes} B, tile {tile_bytes} B");
    assert!(tile_bytes * 4 < whole_bytes);
    let budget = BackendOptions { kind: BackendKind::Int8, memory_budget: whole_bytes, ..Default::default() };
    let e = brain_age::local_maps(&int8, &geo, x.view(), 0, 1, &budget, |_, _| {}).unwrap_err();
    assert!(matches!(e, edgemed_runtime::Error::OverBudget { .. }), "{e}");
    let tiled = brain_age::local_maps(&int8, &geo, x.view(), 2, 1, &budget, |_, _| {}).unwrap();
    assert!(same_bits(&whole, &tiled));
    // The FP32 model on tract, whole: the same map grid; the INT8 maps follow it.
    let geo32 = brain_age::geometry(&fp32).unwrap();
    let reference = maps(&fp32, &geo32, &x, 0, 1, BackendKind::Tract);
    assert_eq!(reference.shape(), whole.shape());
    let mask = Array3::from_elem(x.dim(), true);
    for a in brain_age::agreement(&geo, &whole, &reference, &mask) {
        println!("{a:?}");
        assert!(a.correlation > 0.5, "{a:?}");
    }
    let fp32_opts = BackendOptions { kind: BackendKind::Tract, ..Default::default() };
    let e = brain_age::local_maps(&fp32, &geo32, x.view(), 2, 1, &fp32_opts, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("INT8 engine") && e.contains("--tile 0") && !e.contains('\n'), "{e}");
    let e = brain_age::local_maps(&int8, &geo, x.view(), 1, 1, &BackendOptions::default(), |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("at least 2"), "{e}");
    // A fixed window cannot be compiled one stride wider: refused before any work.
    let windowed = map_model(&Config { window: Some([24; 3]), ..cfg }, true);
    let e =
        brain_age::local_maps(&windowed, &brain_age::geometry(&windowed).unwrap(), x.view(), 2, 1, &BackendOptions::default(), |_, _| {})
            .unwrap_err()
            .to_string();
    assert!(e.contains("without --window") && !e.contains('\n'), "{e}");
    let small = blob(&[15, 40, 40], 0);
    let e = brain_age::local_maps(&int8, &geo, small.view(), 2, 1, &BackendOptions::default(), |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("smaller than the receptive field"), "{e}");
}

fn mni() -> Volume {
    Volume::read(&fixture("bagnet3d/mni152_t1_3mm.nii.gz"), 0).unwrap()
}

/// Voxel index -> world through a 4x4 affine.
fn world(a: &[[f64; 4]; 4], p: [f64; 3]) -> [f64; 3] {
    [0, 1, 2].map(|r| a[r][0] * p[0] + a[r][1] * p[1] + a[r][2] * p[2] + a[r][3])
}

#[test]
fn mni152_end_to_end() {
    let vol = mni();
    assert_eq!(vol.shape(), [65, 77, 63]);
    let prep = brain_age::prepare(&vol, None, true).unwrap();
    assert_eq!(prep.input.shape(), &[195, 231, 189]);
    assert_eq!(prep.resampled_from, Some([3.0, 3.0, 3.0]));
    let ml = prep.mask_voxels as f64 / 1000.0;
    assert!((1500.0..2500.0).contains(&ml), "{ml} mL");
    // Whitened inside the mask, zero outside.
    let inside: Vec<f64> = prep.input.iter().zip(prep.mask.iter()).filter(|(_, &m)| m).map(|(&v, _)| v as f64).collect();
    let mean = inside.iter().sum::<f64>() / inside.len() as f64;
    let var = inside.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / inside.len() as f64;
    assert!(mean.abs() < 1e-3 && (var - 1.0).abs() < 1e-3, "{mean} {var}");
    assert!(prep.input.iter().zip(prep.mask.iter()).all(|(&v, &m)| m || v == 0.0));
    // The 1 mm grid and the 3 mm input are the same space: 1 mm voxel o is 3 mm index (o + 0.5) / 3 - 0.5.
    let (a3, a1) = (affine(&vol.header), affine(&prep.header));
    let w = world(&a1, [30.0, 40.0, 50.0]);
    let w3 = world(&a3, [30.5 / 3.0 - 0.5, 40.5 / 3.0 - 0.5, 50.5 / 3.0 - 0.5]);
    assert!((0..3).all(|d| (w[d] - w3[d]).abs() < 1e-3), "{w:?} {w3:?}");

    let cfg = Config { receptive_field: 17, width: 4, norm: Norm::Running, ..Config::default() };
    let model = map_model(&cfg, false);
    let geo = brain_age::geometry(&model).unwrap();
    let m = maps(&model, &geo, &prep.input, 8, 2, BackendKind::Tract);
    assert_eq!(m.shape(), &[3, 23, 27, 22]);
    let pred = brain_age::predict(&geo, &m);
    assert!(pred.age.unwrap().is_finite() && (0.0..=1.0).contains(&pred.sex_prob.unwrap()));
    let named = brain_age::named_maps(&geo, &m, &prep.mask);
    assert_eq!(named.iter().map(|(n, _)| *n).collect::<Vec<_>>(), ["age", "sex"]);
    // Map voxel i sits at 1 mm voxel 8 i + 8 (the centre of its 17 voxels); NaN exactly outside the mask.
    let h = brain_age::map_header(&prep.header, &geo, [23, 27, 22]);
    let am = affine(&h);
    for p in [[0usize, 0, 0], [11, 13, 10], [22, 26, 21], [5, 20, 3]] {
        let wm = world(&am, p.map(|v| v as f64));
        let c = p.map(|v| 8 * v + 8);
        let w1 = world(&a1, c.map(|v| v as f64));
        assert!((0..3).all(|d| (wm[d] - w1[d]).abs() < 1e-3), "{p:?}: {wm:?} {w1:?}");
        for (_, map) in &named {
            assert_eq!(map[p].is_nan(), !prep.mask[c], "{p:?}");
        }
    }
    let finite = named[0].1.iter().filter(|v| v.is_finite()).count();
    assert!(finite > 1000 && named[0].1.iter().all(|v| v.is_nan() || v.is_finite()), "{finite}");
    let (png, range) = brain_age::overlay(prep.input.view(), &prep.mask, &geo, &named[0].1);
    assert_eq!((png.width(), png.height()), (2 * (231 + 195 + 195), 2 * 231));
    assert!(range.0 <= range.1);
}

/// A NIfTI-1 file written by hand (float32, little endian) with header dims `dims`.
fn write_nifti_raw(path: &std::path::Path, dims: &[u16]) {
    let mut h = vec![0u8; 352];
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    let mut dim = [1i16; 8];
    dim[0] = dims.len() as i16;
    for (i, d) in dims.iter().enumerate() {
        dim[i + 1] = *d as i16;
    }
    for (i, d) in dim.iter().enumerate() {
        h[40 + 2 * i..42 + 2 * i].copy_from_slice(&d.to_le_bytes());
    }
    h[70..72].copy_from_slice(&16i16.to_le_bytes()); // float32
    h[72..74].copy_from_slice(&32i16.to_le_bytes());
    for i in 0..8 {
        h[76 + 4 * i..80 + 4 * i].copy_from_slice(&1f32.to_le_bytes());
    }
    h[108..112].copy_from_slice(&352f32.to_le_bytes());
    h[344..348].copy_from_slice(b"n+1\0");
    let n: usize = dims.iter().map(|&d| d as usize).product();
    h.extend(std::iter::repeat_n(1f32.to_le_bytes(), n).flatten());
    std::fs::write(path, h).unwrap();
}

#[test]
fn bad_input_is_one_line() {
    let one_line = |e: String, want: &str| assert!(e.contains(want) && !e.contains('\n'), "{e:?} should say {want:?}");
    // A 4-D series.
    let dir = scratch_dir("brain-age-bad");
    let p = dir.join("series.nii");
    write_nifti_raw(&p, &[8, 8, 8, 3]);
    one_line(Volume::read(&p, 0).unwrap_err().to_string(), "a 3-D volume is expected");
    // Anisotropic (here 3 mm) voxels without resampling.
    let vol = mni();
    one_line(brain_age::prepare(&vol, None, false).unwrap_err().to_string(), "1 mm isotropic");
    // Non-brain masks: the whole field of view, and nothing.
    let mut all = vol.clone();
    all.data.fill(1.0);
    one_line(brain_age::prepare(&vol, Some(&all), true).unwrap_err().to_string(), "not a brain mask");
    let mut none = vol.clone();
    none.data.fill(0.0);
    one_line(brain_age::prepare(&vol, Some(&none), true).unwrap_err().to_string(), "empty");
    // A head that was not skull-stripped (no mask given): the non-zero voxels fill the view.
    let mut head = vol.clone();
    head.data.mapv_inplace(|v| v + 10.0);
    one_line(brain_age::prepare(&head, None, true).unwrap_err().to_string(), "not a brain mask");
    // Models without a 3-D map head: the pooled BagNet, and a 2-D classifier's map.
    let cfg = Config { receptive_field: 9, width: 2, norm: Norm::Running, ..Config::default() };
    let pooled = OnnxModel::from_bytes("pooled.onnx", &bagnet3d::build_onnx(&cfg, None, 0).unwrap().0.encode_to_vec()).unwrap();
    one_line(brain_age::geometry(&pooled).unwrap_err().to_string(), "no 3-D local-map head");
    let mut g = Graph::load(&edgemed_tests::repo_root().join("models/bundled/pcam-c4-demo.onnx")).unwrap();
    edgemed_converter::local_map::to_local_map(&mut g).unwrap();
    let map2d = OnnxModel::from_bytes("pcam.map.onnx", &g.to_bytes()).unwrap();
    one_line(brain_age::geometry(&map2d).unwrap_err().to_string(), "receptive_field");
    // A volume smaller than the receptive field.
    let model = map_model(&Config { receptive_field: 33, ..cfg }, false);
    let geo = brain_age::geometry(&model).unwrap();
    let small = Array3::<f32>::zeros((20, 40, 40));
    let e = brain_age::local_maps(&model, &geo, small.view(), 0, 1, &BackendOptions::default(), |_, _| {}).unwrap_err();
    one_line(e.to_string(), "smaller than the receptive field");
}
