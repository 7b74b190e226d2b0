//! MONAI U-Net export (models crate): the graph built from MONAI's own state_dict
//! (safetensors, MONAI's names) reproduces torch's eval output for the 3-D
//! (instance norm, PReLU, one residual unit) and 2-D (batch norm with trained
//! statistics, ReLU, two residual units) fixtures of scripts/make_unet_fixtures.py.

use edgemed_models::unet::{self, Config};
use edgemed_models::weights::Weights;
use edgemed_runtime::backend::{Backend, TractBackend};
use edgemed_runtime::formats::tensors::read_npy;
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::ndarray::ArrayD;
use edgemed_tests::fixture;
use prost::Message;

fn export(name: &str, window: &[usize]) -> OnnxModel {
    let path = fixture(&format!("unet/{name}.safetensors"));
    let w = Weights::load(&path).unwrap();
    let mut cfg = Config::from_constructor_json(&w.metadata["constructor"]).unwrap();
    cfg.window = Some(window.to_vec());
    let (m, used) = unet::build_onnx(&cfg, Some((&w, name)), 0).unwrap();
    assert_eq!(used.tensors.len(), w.tensors.len(), "every tensor of the state_dict is used");
    OnnxModel::from_bytes(format!("{name}.onnx"), &m.encode_to_vec()).unwrap()
}

fn max_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter().zip(b.iter()).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn unet3d_from_monai_state_dict_matches_torch() {
    let m = export("unet3d", &[32, 32, 32]);
    let x = read_npy(&fixture("unet/unet3d_window_input.npy")).unwrap();
    let out = TractBackend::new(&m, &[1, 1, 32, 32, 32]).unwrap().run(x).unwrap().remove(0);
    let expected = read_npy(&fixture("unet/unet3d_window_torch_output.npy")).unwrap();
    let err = max_diff(&out, &expected);
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    println!("3-D U-Net export vs torch: max |diff| {err:.2e} (outputs up to {scale:.2})");
    assert!(err < 1e-4, "{err}");
}

#[test]
fn unet2d_with_batch_norm_statistics_matches_torch() {
    let m = export("unet2d", &[48, 40]);
    let x = read_npy(&fixture("unet/unet2d_input.npy")).unwrap();
    let out = TractBackend::new(&m, &[1, 1, 48, 40]).unwrap().run(x).unwrap().remove(0);
    let err = max_diff(&out, &read_npy(&fixture("unet/unet2d_torch_output.npy")).unwrap());
    println!("2-D U-Net export vs torch: max |diff| {err:.2e}");
    assert!(err < 1e-4, "{err}");
}

#[test]
fn mismatched_settings_name_the_tensor() {
    let w = Weights::load(&fixture("unet/unet3d.safetensors")).unwrap();
    let mut cfg = Config::from_constructor_json(&w.metadata["constructor"]).unwrap();
    cfg.channels = vec![8, 16, 64];
    let e = unet::build_onnx(&cfg, Some((&w, "unet3d.safetensors")), 0).unwrap_err().to_string();
    assert!(e.contains("unet3d.safetensors: tensor \"model.1.submodule.1.submodule.conv.unit0.conv.weight\" has shape [32, 16, 3, 3, 3], expected [64, 16, 3, 3, 3]"), "{e}");
    cfg.channels = vec![8, 16];
    cfg.strides = vec![2];
    let e = unet::build_onnx(&cfg, Some((&w, "unet3d.safetensors")), 0).unwrap_err().to_string();
    assert!(e.contains("missing tensor \"model.1.submodule.conv.unit0.conv.weight\""), "{e}");
}
