//! Heatmaps over slide regions (runtime `heatmap`, converter `--local-map`):
//! - each cell of a classifier's map is the classifier's probability for the patch
//!   the grid puts there (checked through the patch-file classification path);
//! - the C4 model's map of a rotated region is the rotated map, for the classifier
//!   and for its local-map rewrite; D4 test-time augmentation gives a conventional
//!   (C1) model the same property.
//!
//! The CLI's heatmap subcommand is tested in runtime/tests/cli.rs.

use edgemed_converter::graph::Graph;
use edgemed_runtime::formats::patch::{read_rgb, PatchSource};
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::tasks::classify::{Classifier, ClassifierOptions};
use edgemed_runtime::tasks::heatmap::{heatmap, Heatmap, HeatmapOptions, Tta};
use edgemed_tests::{fixture, repo_root, scratch_dir};
use image::RgbImage;

fn bundled() -> OnnxModel {
    OnnxModel::load(repo_root().join("models/bundled/pcam-c4-demo.onnx")).unwrap()
}

fn local_map(path: &std::path::Path) -> OnnxModel {
    let mut g = Graph::load(path).unwrap();
    edgemed_converter::local_map::to_local_map(&mut g).unwrap();
    OnnxModel::from_bytes("local_map.onnx", &g.to_bytes()).unwrap()
}

/// A region tiled from sample patches (side x side pixels).
fn region(side: u32) -> RgbImage {
    let mut img = RgbImage::new(side, side);
    let mut k = 0;
    for y in (0..side).step_by(96) {
        for x in (0..side).step_by(96) {
            let p = read_rgb(&repo_root().join(format!("examples/data/pcam/patch_{:03}.png", (k * 7) % 100))).unwrap();
            image::imageops::replace(&mut img, &p, x as i64, y as i64);
            k += 1;
        }
    }
    img
}

fn rot90_img(img: &RgbImage) -> RgbImage {
    // np.rot90: counter-clockwise.
    image::imageops::rotate270(img)
}

fn rot90_map(m: &Heatmap) -> Vec<f32> {
    assert_eq!(m.rows, m.cols);
    let s = m.rows;
    (0..s * s).map(|k| m.probs[(k % s) * s + (s - 1 - k / s)]).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| if x.is_nan() && y.is_nan() { m } else { m.max((x - y).abs()) })
}

#[test]
fn classifier_cells_are_the_classifier_on_the_grid_patches() {
    let img = region(300);
    let model = bundled();
    let map = heatmap(&model, &img, &HeatmapOptions { stride: Some(40), batch: 4, ..Default::default() }).unwrap();
    // (300 - 95) / 40 + 1 = 6 positions per side, margins (300 - 95 - 200) / 2 = 2.
    assert_eq!((map.rows, map.cols, map.cell, map.origin), (6, 6, 40.0, (2.0 + 27.5, 2.0 + 27.5)));
    let d = scratch_dir("heatmap-cells");
    let clf = Classifier::new(&model, &ClassifierOptions::default()).unwrap();
    for (r, c) in [(0, 0), (2, 5), (5, 3)] {
        // The classifier centre-crops 96 -> 95 from offset 0, so the 96 patch at the grid
        // position holds exactly the 95 x 95 input the map used.
        let patch = image::imageops::crop_imm(&img, 2 + c * 40, 2 + r * 40, 96, 96).to_image();
        let path = d.join(format!("p{r}{c}.png"));
        patch.save(&path).unwrap();
        let mut p = None;
        clf.classify(&[PatchSource::File(path)], |res| p = Some(res.outcome.unwrap().probability)).unwrap();
        let cell = map.probs[r as usize * 6 + c as usize];
        assert!((cell - p.unwrap()).abs() < 1e-5, "cell ({r}, {c}): map {cell}, classifier {}", p.unwrap());
    }
    let (lo, _, hi) = map.summary();
    assert!(lo < 0.5 && hi > 0.5, "the region mixes normal and tumour patches: {lo}..{hi}");
    // Threads, batch size and band height do not change the map.
    let other = heatmap(&model, &img, &HeatmapOptions { stride: Some(40), batch: 3, threads: 2, tile: 50, ..Default::default() }).unwrap();
    assert!(max_diff(&map.probs, &other.probs) < 1e-6);
}

#[test]
fn c4_maps_rotate_with_the_image() {
    // Grid margins must be even for the grid to rotate onto itself: 95 + 4 * 32 + 2 * 1 = 225.
    let img = region(225);
    let rotated = rot90_img(&img);
    let opts = HeatmapOptions { stride: Some(32), batch: 5, ..Default::default() };
    let (a, b) = (heatmap(&bundled(), &img, &opts).unwrap(), heatmap(&bundled(), &rotated, &opts).unwrap());
    let err = max_diff(&rot90_map(&a), &b.probs);
    println!("C4 classifier map: max |map(rot90 x) - rot90 map(x)| = {err:.2e}");
    assert!(err < 1e-4, "{err}");
    // The local-map rewrite: non-overlapping 95-pixel tiles, 5 x 5 cells each, corners
    // outside the pooling circle left out.
    let lm = local_map(&repo_root().join("models/bundled/pcam-c4-demo.onnx"));
    let img = region(190);
    let opts = HeatmapOptions { batch: 4, ..Default::default() };
    let (a, b) = (heatmap(&lm, &img, &opts).unwrap(), heatmap(&lm, &rot90_img(&img), &opts).unwrap());
    assert!(a.local_map && a.rows == 10 && a.cell == 19.0);
    assert_eq!(a.probs.iter().filter(|p| p.is_nan()).count(), 4 * 4, "4 masked corner cells per tile");
    let err = max_diff(&rot90_map(&a), &b.probs);
    println!("C4 local map: max |map(rot90 x) - rot90 map(x)| = {err:.2e}");
    assert!(err < 1e-4, "{err}");
    assert!(heatmap(&lm, &img, &HeatmapOptions { stride: Some(32), ..Default::default() }).is_err(), "local maps tile without overlap");
}

#[test]
fn d4_test_time_augmentation_makes_a_conventional_model_rotation_invariant() {
    let c1 = OnnxModel::load(fixture("eqmnv2_c1.onnx")).unwrap();
    let img = region(159); // 95 + 2 * 32, margins 0
    let rotated = rot90_img(&img);
    let plain = HeatmapOptions { stride: Some(32), batch: 3, ..Default::default() };
    let tta = HeatmapOptions { tta: Tta::D4, ..plain.clone() };
    let without = max_diff(&rot90_map(&heatmap(&c1, &img, &plain).unwrap()), &heatmap(&c1, &rotated, &plain).unwrap().probs);
    let with = max_diff(&rot90_map(&heatmap(&c1, &img, &tta).unwrap()), &heatmap(&c1, &rotated, &tta).unwrap().probs);
    println!("C1 model: rotation error of the map {without:.2e} without TTA, {with:.2e} with D4 TTA");
    assert!(without > 1e-3, "the C1 control should not be invariant: {without}");
    assert!(with < 1e-5, "{with}");
}
