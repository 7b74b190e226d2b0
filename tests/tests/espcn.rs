//! 3-D ESPCN (models crate export, runtime upsampling): the pixel shuffle against
//! numpy/MONAI exactly, the export from safetensors against torch, and patch-wise
//! upsampling equal to the whole-volume output (no seams). Fixtures from
//! scripts/make_espcn_fixtures.py.

use edgemed_models::espcn3d::{self, Config};
use edgemed_models::weights::Weights;
use edgemed_onnx::builder::{GraphBuilder, D};
use edgemed_runtime::backend::{Backend, BackendOptions, TractBackend};
use edgemed_runtime::formats::tensors::read_npy;
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::ndarray::{Array3, ArrayD};
use edgemed_runtime::tasks::upsample;
use edgemed_tests::fixture;
use prost::Message;

fn model(m: &edgemed_onnx::pb::ModelProto) -> OnnxModel {
    OnnxModel::from_bytes("espcn.onnx", &m.encode_to_vec()).unwrap()
}

fn max_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter().zip(b.iter()).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn pixel_shuffle_equals_numpy_and_monai_exactly() {
    let x = read_npy(&fixture("espcn/shuffle_input.npy")).unwrap();
    let expected = read_npy(&fixture("espcn/shuffle_output.npy")).unwrap();
    let mut g = GraphBuilder::new("shuffle");
    g.input_f32("x", &[D::N(1), D::N(16), D::N(3), D::N(4), D::N(5)]);
    let y = espcn3d::pixel_shuffle_3d(&mut g, "y", "x", 2, 2, [3, 4, 5]);
    g.output_f32(&y, &[D::N(1), D::N(2), D::N(6), D::N(8), D::N(10)]);
    let m = model(&g.into_model("test", &[]));
    let out = TractBackend::new(&m, &[1, 16, 3, 4, 5]).unwrap().run(x).unwrap().remove(0);
    assert_eq!(out, expected, "a shuffle moves values, it must not change any");
}

#[test]
fn export_from_safetensors_matches_torch() {
    let w = Weights::load(&fixture("espcn/espcn.safetensors")).unwrap();
    let cfg = Config::from_weights_metadata(&w.metadata, [10, 8, 6], "espcn.safetensors").unwrap();
    assert_eq!(cfg.halo(), 2);
    let m = model(&espcn3d::build_onnx(&cfg, &w).unwrap());
    let x = read_npy(&fixture("espcn/espcn_input.npy")).unwrap();
    let out = TractBackend::new(&m, &[1, 1, 14, 12, 10]).unwrap().run(x).unwrap().remove(0);
    let err = max_diff(&out, &read_npy(&fixture("espcn/espcn_torch_output.npy")).unwrap());
    println!("ESPCN export vs torch: max |diff| {err:.2e}");
    assert!(err < 1e-5, "{err}");
}

#[test]
fn patchwise_upsampling_equals_the_whole_volume() {
    let shape = [23, 17, 12];
    let vol = Array3::from_shape_fn(shape, |(i, j, k)| ((i * 31 + j * 17 + k * 7) % 23) as f32 / 23.0 - 0.3);
    let weights = espcn3d::init_weights(&Config::default(), 5).unwrap();
    let run = |patch: [usize; 3], threads: usize| {
        let cfg = Config { patch, ..Config::default() };
        let m = model(&espcn3d::build_onnx(&cfg, &weights).unwrap());
        upsample::upsample(&m, vol.view(), &BackendOptions::default(), threads, |_, _| {}).unwrap().into_dyn()
    };
    let whole = run(shape, 1);
    assert_eq!(whole.shape(), &[46, 34, 24]);
    for patch in [[8, 8, 8], [5, 7, 12], [32, 32, 32]] {
        let one = run(patch, 1);
        let err = max_diff(&one, &whole);
        println!("patch {patch:?}: max |patch-wise - whole| {err:.2e}");
        assert!(err < 1e-5, "patch {patch:?}: {err}");
        // Patches side by side (overlapping last ones included) write the same voxels.
        let side = run(patch, 3);
        assert!(one.iter().zip(side.iter()).all(|(a, b)| a.to_bits() == b.to_bits()), "patch {patch:?}: 3 threads differ");
    }
}

#[test]
fn committed_patch_model_is_the_current_export() {
    // tests/fixtures/espcn/espcn3d_p8.onnx (used by the runtime's CLI tests) is
    // `edgemed export espcn3d --weights tests/fixtures/espcn/espcn.safetensors --patch 8
    // -o tests/fixtures/espcn/espcn3d_p8.onnx --force`.
    let w = Weights::load(&fixture("espcn/espcn.safetensors")).unwrap();
    let cfg = Config::from_weights_metadata(&w.metadata, [8, 8, 8], "espcn.safetensors").unwrap();
    let fresh = espcn3d::build_onnx(&cfg, &w).unwrap();
    let committed = OnnxModel::load(fixture("espcn/espcn3d_p8.onnx")).unwrap();
    assert_eq!(committed.graph(), fresh.graph.as_ref().unwrap(), "rerun the export command above");
}
