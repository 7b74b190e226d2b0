//! Sliding-window inference against MONAI 1.6.1 (fixtures from
//! scripts/make_unet_fixtures.py): window placement on 40 cases, the gaussian
//! importance maps, and whole-volume U-Net outputs (MONAI's sliding_window_inference
//! driving ONNX Runtime) within 1e-4.

use edgemed_runtime::backend::{Backend, TractBackend};
use edgemed_runtime::formats::tensors::read_npy;
use edgemed_runtime::formats::volume::Volume;
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::ndarray::{ArrayD, Axis, IxDyn};
use edgemed_runtime::tasks::sliding_window::{Blend, SlidingWindow};
use edgemed_tests::fixture;
use serde_json::Value;

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

fn cases() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("unet/window_cases.json")).unwrap()).unwrap()
}

#[test]
fn window_placement_matches_monai() {
    let cases = cases();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 40);
    for c in cases {
        let roi = usizes(&c["roi_size"]);
        let sw = SlidingWindow::new(roi, c["overlap"].as_f64().unwrap(), Blend::Constant).unwrap();
        let p = sw.plan(&usizes(&c["image_size"])).unwrap();
        let id = &c["id"];
        let pad: Vec<(usize, usize)> = c["pad"].as_array().unwrap().iter().map(|lh| (usizes(lh)[0], usizes(lh)[1])).collect();
        assert_eq!(p.pad, pad, "case {id}: padding");
        assert_eq!(p.padded, usizes(&c["padded_size"]), "case {id}: padded size");
        assert_eq!(p.interval, usizes(&c["scan_interval"]), "case {id}: scan interval");
        let starts: Vec<Vec<usize>> = c["starts"].as_array().unwrap().iter().map(usizes).collect();
        assert_eq!(p.starts, starts, "case {id}: starts");
        assert_eq!(p.num_windows(), c["num_windows"].as_u64().unwrap() as usize, "case {id}: windows");
    }
}

#[test]
fn gaussian_importance_maps_match_monai() {
    let cases = cases();
    for m in cases["importance_maps"].as_array().unwrap() {
        let roi = usizes(&m["roi_size"]);
        let sigma_scale = m["sigma_scale"].as_f64().unwrap() as f32;
        let sw = SlidingWindow::new(roi.clone(), 0.25, Blend::Gaussian { sigma_scale }).unwrap();
        let ours = sw.importance_map();
        assert_eq!(ours.shape(), &usizes(&m["shape"])[..]);
        let theirs: Vec<f32> = m["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let err = ours.iter().zip(&theirs).fold(0f32, |e, (a, b)| e.max((a - b).abs() / b.abs()));
        assert!(err < 1e-5, "roi {roi:?} sigma {sigma_scale}: relative error {err}");
    }
}

#[test]
fn unet_volume_matches_monai_sliding_window_inference() {
    let vol = Volume::read(&fixture("unet/volume.nii.gz"), 0).unwrap();
    assert_eq!(vol.shape(), [45, 38, 28]);
    let a = vol.affine();
    let expected_affine = [[0.8, 0.0, 0.0, -17.6], [0.0, 0.9, 0.0, -16.65], [0.0, 0.0, 1.5, 31.5], [0.0, 0.0, 0.0, 1.0]];
    for (r, e) in a.iter().zip(expected_affine) {
        for (x, y) in r.iter().zip(e) {
            assert!((x - y).abs() < 1e-5, "affine {a:?}");
        }
    }
    let model = OnnxModel::load(fixture("unet/unet3d.onnx")).unwrap();
    let backend = TractBackend::new(&model, &[1, 1, 32, 32, 32]).unwrap();
    let input: ArrayD<f32> = vol.data.clone().insert_axis(Axis(0)).into_dyn();
    for (file, overlap, blend) in [
        ("sw_constant_o25.npy", 0.25, Blend::Constant),
        ("sw_gaussian_o50.npy", 0.5, Blend::Gaussian { sigma_scale: 0.125 }),
        ("sw_gaussian_o25_s03.npy", 0.25, Blend::Gaussian { sigma_scale: 0.3 }),
    ] {
        let sw = SlidingWindow::new(vec![32, 32, 32], overlap, blend).unwrap();
        let ours = sw.run(input.view(), |w| Ok(backend.run(w)?.remove(0))).unwrap();
        let monai = read_npy(&fixture(&format!("unet/{file}"))).unwrap();
        let monai = monai.index_axis(Axis(0), 0).to_owned().into_dyn();
        assert_eq!(ours.shape(), monai.shape());
        let err = ours.iter().zip(monai.iter()).fold(0f32, |e, (a, b)| e.max((a - b).abs()));
        println!("{file}: max |edgemed - MONAI| = {err:.2e}");
        assert!(err <= 1e-4, "{file}: max difference {err}");
    }
}

#[test]
fn slabs_cover_the_volume_once_in_order() {
    // The streaming form hands out every row exactly once, in order, whatever the overlap.
    let x = ArrayD::from_shape_fn(IxDyn(&[1, 50, 9, 7]), |ix| (ix[1] * 7 + ix[2] * 3 + ix[3]) as f32);
    for overlap in [0.0, 0.3, 0.8] {
        let sw = SlidingWindow::new(vec![12, 9, 4], overlap, Blend::Constant).unwrap();
        let mut next = 0;
        sw.run_streaming(
            x.view(),
            Ok,
            |row, slab| {
                assert_eq!(row, next, "overlap {overlap}");
                next += slab.shape()[1];
                assert_eq!(slab.shape()[2..], [9, 7]);
                Ok(())
            },
            |_, _| {},
        )
        .unwrap();
        assert_eq!(next, 50);
    }
}
