//! The aging twin's 3-D GLOW (models crate export, run through the runtime)
//! against the independent float64 numpy implementation of
//! scripts/make_glow_fixtures.py: encoder latents and log-determinant, the
//! temporal model, the analytic decoder on a perturbed latent, and the round trip
//! G^-1(G(x)) = x in FP32.

use edgemed_models::glow3d::{self, Config};
use edgemed_models::weights::Weights;
use edgemed_runtime::backend::{Backend, TractBackend};
use edgemed_runtime::formats::tensors::read_npy;
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::ndarray::ArrayD;
use edgemed_tests::fixture;
use prost::Message;

fn twin() -> (Config, glow3d::Twin) {
    let w = Weights::load(&fixture("glow/glow.safetensors")).unwrap();
    let cfg = Config { grid: [16, 16, 16], ..Config::default() }.with_weights_metadata(&w.metadata, "glow.safetensors").unwrap();
    let t = glow3d::build(&cfg, Some((&w, "glow.safetensors")), 0).unwrap();
    assert_eq!(t.weights.tensors.len(), w.tensors.len());
    (cfg, t)
}

fn backend(m: &edgemed_onnx::pb::ModelProto, name: &str, shape: &[usize]) -> TractBackend {
    TractBackend::new(&OnnxModel::from_bytes(name, &m.encode_to_vec()).unwrap(), shape).unwrap()
}

fn max_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter().zip(b.iter()).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn read_f64(name: &str) -> Vec<f64> {
    // numpy .npy float64, little endian, 1-D: header then data.
    let bytes = std::fs::read(fixture(name)).unwrap();
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert!(String::from_utf8_lossy(&bytes[10..10 + header_len]).contains("'<f8'"));
    bytes[10 + header_len..].chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect()
}

#[test]
fn encoder_matches_numpy_latents_and_log_determinant() {
    let (cfg, t) = twin();
    let x = read_npy(&fixture("glow/input.npy")).unwrap();
    let out = backend(&t.encoder, "encoder.onnx", &[2, 1, 16, 16, 16]).run(x).unwrap();
    let err = max_diff(&out[0], &read_npy(&fixture("glow/latent.npy")).unwrap());
    assert_eq!(out[0].shape(), &[2, cfg.latent_len()]);
    let logdet = read_f64("glow/logdet.npy");
    let rel: f64 = out[1].iter().zip(&logdet).map(|(a, b)| ((*a as f64 - b) / b).abs()).fold(0.0, f64::max);
    println!(
        "encoder vs numpy: latent max |diff| {err:.2e}; logdet {:?} vs {logdet:?}, max relative diff {rel:.2e}",
        out[1].as_slice().unwrap()
    );
    assert!(err < 1e-4, "{err}");
    assert!(rel < 1e-5, "{rel}");
}

#[test]
fn temporal_model_matches_numpy() {
    let (_, t) = twin();
    let z = read_npy(&fixture("glow/temporal_in.npy")).unwrap();
    let out = backend(&t.temporal, "temporal.onnx", &[2, 4096]).run(z).unwrap().remove(0);
    let err = max_diff(&out, &read_npy(&fixture("glow/temporal_out.npy")).unwrap());
    println!("temporal vs numpy: max |diff| {err:.2e}");
    assert!(err < 1e-5, "{err}");
}

#[test]
fn decoder_matches_numpy_on_a_perturbed_latent() {
    let (_, t) = twin();
    let z = read_npy(&fixture("glow/temporal_out.npy")).unwrap().mapv(|v| v * glow3d::LATENT_SCALE - glow3d::LATENT_OFFSET);
    let out = backend(&t.decoder, "decoder.onnx", &[2, 4096]).run(z).unwrap().remove(0);
    let err = max_diff(&out, &read_npy(&fixture("glow/decoded.npy")).unwrap());
    println!("decoder vs numpy: max |diff| {err:.2e}");
    assert!(err < 1e-4, "{err}");
}

#[test]
fn decoder_inverts_encoder_in_fp32() {
    let (_, t) = twin();
    let x = read_npy(&fixture("glow/input.npy")).unwrap();
    let z = backend(&t.encoder, "encoder.onnx", &[2, 1, 16, 16, 16]).run(x.clone()).unwrap().remove(0);
    let back = backend(&t.decoder, "decoder.onnx", &[2, 4096]).run(z).unwrap().remove(0);
    let err = max_diff(&back, &x);
    println!("max |G^-1(G(x)) - x| = {err:.2e}");
    assert!(err <= 1e-4, "{err}");
}

#[test]
fn seeded_twin_round_trips_and_reloads_from_its_weights() {
    let cfg = Config { grid: [16, 16, 16], steps: 2, width: 8, ..Config::default() };
    let t = glow3d::build(&cfg, None, 9).unwrap();
    let again = glow3d::build(&cfg, Some((&t.weights, "seeded")), 0).unwrap();
    assert_eq!(again.encoder, t.encoder, "a seeded twin saved as weights exports the same models");
    let x = ArrayD::from_shape_fn(vec![1, 1, 16, 16, 16], |i| ((i[2] * 7 + i[3] * 3 + i[4]) % 11) as f32 / 11.0 - 0.5);
    let z = backend(&t.encoder, "e.onnx", &[1, 1, 16, 16, 16]).run(x.clone()).unwrap().remove(0);
    let back = backend(&t.decoder, "d.onnx", &[1, cfg.latent_len()]).run(z).unwrap().remove(0);
    let err = max_diff(&back, &x);
    assert!(err <= 1e-4, "{err}");
}

/// The runtime's aging pipeline (edgemed_runtime::aging, what `edgemed-run age` runs)
/// for one year, against numpy: normalised latent, P, and G^-1 of the result.
#[test]
fn runtime_aging_pipeline_matches_numpy_for_one_year() {
    use edgemed_runtime::tasks::aging::{Twin, TwinModels};
    let (cfg, t) = twin();
    let dir = edgemed_tests::scratch_dir("glow-twin");
    for (name, m) in [("encoder", &t.encoder), ("decoder", &t.decoder), ("temporal", &t.temporal)] {
        std::fs::write(dir.join(format!("{name}.onnx")), m.encode_to_vec()).unwrap();
    }
    let models = TwinModels::load(&dir, |p| OnnxModel::load(p)).unwrap();
    let twin = Twin::new(&models, &Default::default()).unwrap();
    // Volume units: the models map v -> v / 255 - 0.5.
    let to_volume = |x: f32| (x - cfg.intensity_offset) / cfg.intensity_scale;
    let x = read_npy(&fixture("glow/input.npy")).unwrap();
    let temporal_in = read_npy(&fixture("glow/temporal_in.npy")).unwrap();
    let temporal_out = read_npy(&fixture("glow/temporal_out.npy")).unwrap();
    let decoded = read_npy(&fixture("glow/decoded.npy")).unwrap();
    for n in 0..2 {
        let v = x.index_axis(edgemed_runtime::ndarray::Axis(0), n).index_axis(edgemed_runtime::ndarray::Axis(0), 0).mapv(to_volume);
        let v = v.into_dimensionality::<edgemed_runtime::ndarray::Ix3>().unwrap();
        let (mut zn, _) = twin.encode(&v).unwrap();
        twin.normalise(&mut zn);
        let row = |a: &ArrayD<f32>| a.index_axis(edgemed_runtime::ndarray::Axis(0), n).iter().copied().collect::<Vec<f32>>();
        let diff = |a: &[f32], b: &[f32]| a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        let e_norm = diff(&zn, &row(&temporal_in));
        let next = twin.step(&zn).unwrap();
        let e_step = diff(&next, &row(&temporal_out));
        // From numpy's P output, so the decoder is checked on its own.
        let aged = twin.decode(&row(&temporal_out)).unwrap();
        let e_dec = diff(aged.as_slice().unwrap(), &row(&decoded).iter().map(|&x| to_volume(x)).collect::<Vec<_>>());
        println!("item {n}: normalised latent {e_norm:.1e}, one year {e_step:.1e}, aged volume {e_dec:.1e} (volume units, range 0..255)");
        assert!(e_norm < 1e-5 && e_step < 1e-5, "{e_norm} {e_step}");
        assert!(e_dec < 255.0 * 1e-4, "{e_dec}");
    }
}

/// tests/fixtures/twin_tiny, used by the runtime's CLI tests, is this export:
/// `edgemed export aging-twin --seed 3 --grid 8 --levels 2 --steps 1 --width 4
/// --temporal-widths 4,4 --temporal-depths 1,1 --output-dir tests/fixtures/twin_tiny --force`.
#[test]
fn committed_tiny_twin_is_a_fresh_export() {
    let cfg = Config {
        grid: [8, 8, 8],
        levels: 2,
        steps: 1,
        width: 4,
        temporal_widths: vec![4, 4],
        temporal_depths: vec![1, 1],
        ..Config::default()
    };
    let t = glow3d::build(&cfg, None, 3).unwrap();
    for (name, m) in [("encoder", &t.encoder), ("decoder", &t.decoder), ("temporal", &t.temporal)] {
        let committed = std::fs::read(fixture(&format!("twin_tiny/{name}.onnx"))).unwrap();
        assert!(committed == m.encode_to_vec(), "twin_tiny/{name}.onnx differs from a fresh export: rerun the command above");
    }
}

/// Smooth synthetic volumes in model units (a few Gaussian blobs over [-0.5, 0.5]).
fn blobs(n: usize, seed: u64) -> Vec<ArrayD<f32>> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|_| {
            let centres: Vec<[f32; 4]> = (0..4).map(|_| [next() * 16.0, next() * 16.0, next() * 16.0, 2.0 + 4.0 * next()]).collect();
            ArrayD::from_shape_fn(vec![1, 1, 16, 16, 16], |i| {
                let v: f32 = centres
                    .iter()
                    .map(|c| {
                        let d2 = (i[2] as f32 - c[0]).powi(2) + (i[3] as f32 - c[1]).powi(2) + (i[4] as f32 - c[2]).powi(2);
                        (-d2 / (2.0 * c[3] * c[3])).exp()
                    })
                    .sum();
                v.min(1.0) - 0.5
            })
        })
        .collect()
}

/// The INT8 decoder (converter: QDQ, per-tensor weights, activation ranges calibrated
/// on encoder latents of 24 synthetic volumes) against the FP32 decoder, on latents it
/// was not calibrated on: the fixture volumes and their aged latents. The PSNR is
/// over the FP32 output's range.
#[test]
fn int8_decoder_psnr_against_fp32() {
    use edgemed_converter::{dfq, graph::Graph, quantize::Granularity};
    let (_, t) = twin();
    let enc = backend(&t.encoder, "encoder.onnx", &[1, 1, 16, 16, 16]);
    let calibration: Vec<ArrayD<f32>> = blobs(24, 1).into_iter().map(|x| enc.run(x).unwrap().remove(0)).collect();
    let quantized = |granularity| {
        let mut g = Graph::from_bytes(&t.decoder.encode_to_vec()).unwrap();
        let opts = dfq::Options { calibration: calibration.clone(), granularity, ..Default::default() };
        let report = dfq::run(&mut g, &opts).unwrap();
        assert!(report.quant.weights_quantized == 26 && report.quant.left_fp32.is_empty(), "{:?}", report.quant);
        backend(&g.model, "decoder_int8.onnx", &[1, 4096])
    };
    let (int8, int8_pc) = (quantized(Granularity::PerTensor), quantized(Granularity::PerChannel));
    let fp32 = backend(&t.decoder, "decoder.onnx", &[1, 4096]);
    let x = read_npy(&fixture("glow/input.npy")).unwrap();
    let aged = read_npy(&fixture("glow/temporal_out.npy")).unwrap().mapv(|v| v * glow3d::LATENT_SCALE - glow3d::LATENT_OFFSET);
    let mut latents: Vec<ArrayD<f32>> = Vec::new();
    for n in 0..2 {
        let item = x.index_axis(edgemed_runtime::ndarray::Axis(0), n).insert_axis(edgemed_runtime::ndarray::Axis(0)).to_owned();
        latents.push(enc.run(item).unwrap().remove(0));
        latents.push(aged.index_axis(edgemed_runtime::ndarray::Axis(0), n).insert_axis(edgemed_runtime::ndarray::Axis(0)).to_owned());
    }
    let mut worst = f64::INFINITY;
    for (k, z) in latents.into_iter().enumerate() {
        let a = fp32.run(z.clone()).unwrap().remove(0);
        let (lo, hi) = a.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        let psnr = |b: &ArrayD<f32>| {
            let mse = a.iter().zip(b.iter()).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>() / a.len() as f64;
            10.0 * (((hi - lo) as f64).powi(2) / mse).log10()
        };
        let (p, pc) = (psnr(&int8.run(z.clone()).unwrap().remove(0)), psnr(&int8_pc.run(z).unwrap().remove(0)));
        println!("latent {k}: INT8 decoder PSNR against FP32 {p:.1} dB per tensor, {pc:.1} dB per channel (output range {:.2})", hi - lo);
        worst = worst.min(p.min(pc));
    }
    // Measured 31.2 dB worst (per tensor); the margin covers rounding differences between tract versions.
    assert!(worst > 29.0, "worst PSNR {worst:.1} dB");
}
