//! Replays what the fuzz targets (fuzz/fuzz_targets) do on the inputs kept in
//! fuzz/regressions/<target>/ (inputs that once crashed, kept after the fix: a converter
//! index panic on clip bounds of another channel count, a PCam HDF5 file declaring
//! patches large enough to exhaust memory) and on the
//! fuzzing seeds (fuzz/seeds: models and NIfTI volumes), so a fixed crash stays fixed without cargo fuzz: every
//! input must give a result or an error, never a panic.

use std::path::{Path, PathBuf};

use edgemed_converter::graph::Graph;
use edgemed_runtime::backend::{Backend, TractBackend};
use edgemed_runtime::formats::patch::{decode_rgb, Preprocess};
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::ndarray::{ArrayD, IxDyn};
use edgemed_tests::repo_root;

fn inputs(dirs: &[&str]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(repo_root().join(d)).ok())
        .flatten()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn onnx_model(data: &[u8]) -> bool {
    let Ok(model) = OnnxModel::from_bytes("fuzz.onnx", data) else { return false };
    let Ok((c, h, w)) = model.image_input() else { return false };
    let shape = [1, c, h, w];
    match TractBackend::with_budget(&model, &shape, 64 << 20) {
        Ok(b) => b.run(ArrayD::zeros(IxDyn(&shape))).is_ok(),
        Err(_) => false,
    }
}

fn converter_passes(data: &[u8]) -> bool {
    let Ok(g) = Graph::from_bytes(data) else { return false };
    let Ok(mut q) = Graph::from_bytes(data) else { return false };
    let opts = edgemed_converter::dfq::Options { field_size: edgemed_converter::dfq::field_size_of(&q), ..Default::default() };
    let quantized = edgemed_converter::dfq::run(&mut q, &opts).is_ok() && Graph::from_bytes(&q.to_bytes()).is_ok();
    let Ok(mut h) = Graph::from_bytes(data) else { return false };
    let _ = edgemed_converter::fp16::convert_to_fp16(&mut h, true);
    let mut l = g;
    let _ = edgemed_converter::local_map::to_local_map(&mut l);
    quantized
}

fn patch_decode(data: &[u8]) -> bool {
    let path = Path::new("fuzz.png");
    let Ok(img) = decode_rgb(path, data) else { return false };
    let pre = Preprocess { patch_size: 96, crop_size: 95, mean: [0.5; 3], std: [0.25; 3], circular_mask: true, resize: true };
    let Ok(img) = pre.check_size(path, img) else { return false };
    let mut out = vec![0f32; 3 * 95 * 95];
    pre.tensorize(&img, &mut out);
    true
}

#[test]
fn kept_fuzz_inputs_and_seeds_give_results_or_errors() {
    let is_nifti = |p: &PathBuf| p.extension().is_some_and(|e| e == "nii");
    let onnx: Vec<PathBuf> = inputs(&["fuzz/seeds", "fuzz/regressions/onnx_model"]).into_iter().filter(|p| !is_nifti(p)).collect();
    assert!(onnx.len() >= 3, "the seed models are missing");
    for f in &onnx {
        let ok = onnx_model(&std::fs::read(f).unwrap());
        if f.starts_with(repo_root().join("fuzz/seeds")) {
            assert!(ok, "{}: a seed model must run", f.display());
        }
    }
    for f in inputs(&["fuzz/seeds", "fuzz/regressions/converter_passes"]).into_iter().filter(|p| !is_nifti(p)) {
        let ok = converter_passes(&std::fs::read(&f).unwrap());
        if f.starts_with(repo_root().join("fuzz/seeds")) {
            assert!(ok, "{}: a seed model must quantize", f.display());
        }
    }
    for f in inputs(&["fuzz/regressions/patch_decode"]) {
        patch_decode(&std::fs::read(&f).unwrap());
    }
    assert!(patch_decode(&std::fs::read(repo_root().join("examples/data/pcam/patch_000.png")).unwrap()));
    // NIfTI: the seeds must read; kept inputs must give a volume or an error.
    let nii = edgemed_tests::scratch_dir("fuzz-nifti").join("x.nii");
    let seeds: Vec<PathBuf> = inputs(&["fuzz/seeds"]).into_iter().filter(is_nifti).collect();
    assert!(seeds.len() >= 3, "the NIfTI seeds are missing");
    for f in seeds.iter().chain(&inputs(&["fuzz/regressions/nifti_volume"])) {
        std::fs::copy(f, &nii).unwrap();
        let read = edgemed_runtime::formats::volume::Volume::read(&nii, 64 << 20);
        if let Ok(v) = &read {
            let c = edgemed_runtime::formats::volume::centre_of_gravity(v.data.view());
            let _ = edgemed_runtime::formats::volume::crop_around(v.data.view(), c, [4, 4, 4], 0.0);
            let _ = edgemed_runtime::formats::volume::resample_trilinear(v.data.view(), [3, 5, 2]);
        }
        if f.starts_with(repo_root().join("fuzz/seeds")) {
            assert!(read.is_ok(), "{}: a seed volume must read: {read:?}", f.display());
        }
    }
    // PCam HDF5 (the pcam-h5 feature is on by default).
    let tmp = edgemed_tests::scratch_dir("fuzz-h5").join("x.h5");
    for f in inputs(&["fuzz/regressions/pcam_h5"]) {
        std::fs::copy(&f, &tmp).unwrap();
        if let Ok(n) = edgemed_runtime::formats::pcam_h5::patch_count(&tmp) {
            for i in 0..n.min(2) {
                let _ = edgemed_runtime::formats::pcam_h5::read_patch(&tmp, i);
            }
        }
    }
}
