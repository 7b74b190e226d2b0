//! One inference over several threads: the engine's outputs must be the same bits at
//! 1, 2, 3 and 4 threads on real plans (the repository's QDQ fixtures: an escnn
//! MobileNetV2 with grouped convs, a 3-D U-Net with transposed convs and float
//! normalisations, a 3-D ESPCN, a GLOW decoder, a 2-D U-Net) with every ISA this CPU
//! has, and whichever thread
//! count runs, an engine shared by several callers at once gives each the same bits.

use std::path::{Path, PathBuf};

use edgemed_engine::{kernels::Isa, Engine};
use edgemed_onnx::model::OnnxModel;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name)
}

fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

/// (model, input) of each fixture: the input file when it fits the plan's input, else
/// a deterministic ramp of the right length.
fn cases() -> Vec<(String, OnnxModel, PathBuf)> {
    ["eqmnv2_c4_qdq", "int8/unet3d_qdq", "int8/espcn3d_qdq", "int8/glow_decoder_qdq", "int8/unet2d_qdq"]
        .iter()
        .map(|n| (n.to_string(), OnnxModel::load(fixture(&format!("{n}.onnx"))).unwrap(), fixture(&format!("{n}.input.f32"))))
        .collect()
}

fn input_for(engine: &Engine, file: &Path) -> Vec<f32> {
    let n: usize = engine.plan.input_shape().iter().product();
    let x = read_f32(file);
    if x.len() == n {
        x
    } else {
        (0..n).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect()
    }
}

fn bits(outputs: &[edgemed_engine::ndarray::ArrayD<f32>]) -> Vec<Vec<u32>> {
    outputs.iter().map(|y| y.iter().map(|v| v.to_bits()).collect()).collect()
}

#[test]
fn outputs_are_the_same_bits_at_any_thread_count() {
    for ((name, model, input), isa) in cases().into_iter().flat_map(|c| Isa::available().into_iter().map(move |i| (c.clone(), i))) {
        let name = format!("{name} on {}", isa.name());
        let one = Engine::with_isa(&model, isa).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(one.threads(), 1, "one thread unless asked");
        let x = input_for(&one, &input);
        let want = bits(&one.run_one(&x).unwrap());
        for threads in [2, 3, 4] {
            // The default cut, and every op cut (these fixtures are small: by default
            // their lighter ops run whole).
            for min_part in [None, Some((1, 1))] {
                let mut e = Engine::with_isa(&model, isa).unwrap().with_threads(threads);
                if let Some((macs, bytes)) = min_part {
                    e = e.with_min_part(macs, bytes);
                }
                assert_eq!(e.threads(), threads);
                // Twice: the second run reuses the buffers the first left.
                for run in 0..2 {
                    assert!(
                        bits(&e.run_one(&x).unwrap()) == want,
                        "{name}: {threads} threads (least part {min_part:?}), run {run}, differs from one thread"
                    );
                }
            }
        }
    }
}

#[test]
fn an_engine_with_threads_shared_by_concurrent_callers_gives_each_the_same_bits() {
    let (name, model, input) = cases().into_iter().nth(1).unwrap();
    let e = Engine::new(&model).unwrap().with_threads(3).with_min_part(1, 1);
    let x = input_for(&e, &input);
    let want = bits(&Engine::new(&model).unwrap().run_one(&x).unwrap());
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                for _ in 0..3 {
                    assert!(bits(&e.run_one(&x).unwrap()) == want, "{name}: a concurrent run differs");
                }
            });
        }
    });
}

/// Several items through `run_items` (whole items side by side on the engine's
/// threads): each item's outputs are the bits `run_one` gives it on one thread, in
/// item order, for 1 to 5 items on 1 to 3 threads; an item whose input is not finite
/// makes the whole call an error, whichever thread ran it. `run_batch` joins the
/// same outputs along the first axis, item after item.
#[test]
fn items_side_by_side_give_each_item_its_own_bits() {
    for (name, model, input) in cases() {
        let one = Engine::new(&model).unwrap();
        let x = input_for(&one, &input);
        // Different inputs per item, so a mix-up of items or outputs shows.
        let xs: Vec<Vec<f32>> = (0..5).map(|k| x.iter().enumerate().map(|(i, v)| if i % 7 == k { -v } else { *v }).collect()).collect();
        let want: Vec<_> = xs.iter().map(|x| bits(&one.run_one(x).unwrap())).collect();
        for threads in [1, 2, 3] {
            let e = Engine::new(&model).unwrap().with_threads(threads);
            for n in 1..=5 {
                let items: Vec<&[f32]> = xs[..n].iter().map(|x| x.as_slice()).collect();
                let got = e.run_items(&items).unwrap_or_else(|err| panic!("{name}: {err}"));
                assert_eq!(got.len(), n);
                for (k, outs) in got.iter().enumerate() {
                    assert!(bits(outs) == want[k], "{name}: item {k} of {n} on {threads} threads differs from its run alone");
                }
                // Joined along the batch axis: item k's values are the k-th run of each
                // output, whose first axis holds n times an item's.
                let joined = e.run_batch(&items).unwrap_or_else(|err| panic!("{name}: {err}"));
                assert_eq!(joined.len(), got[0].len(), "{name}: outputs of the batch");
                for (o, y) in joined.iter().enumerate() {
                    let item = got[0][o].shape();
                    assert_eq!(y.shape()[0], n * item[0], "{name}: output {o}'s first axis");
                    assert_eq!(&y.shape()[1..], &item[1..], "{name}: output {o}'s other axes");
                    let flat: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
                    for (k, chunk) in flat.chunks(got[0][o].len()).enumerate() {
                        assert!(
                            chunk == want[k][o].as_slice(),
                            "{name}: item {k}'s share of output {o} in a batch of {n} on {threads} threads"
                        );
                    }
                }
            }
            // No items: an error, not an empty answer.
            assert!(e.run_batch(&[]).is_err(), "{name}: an empty batch");
            let mut bad = xs[..3].to_vec();
            bad[2][0] = f32::NAN;
            let items: Vec<&[f32]> = bad.iter().map(|x| x.as_slice()).collect();
            let err = e.run_items(&items).expect_err("a NaN input is an error");
            assert!(err.to_string().contains("finite") || err.to_string().contains("NaN"), "{name}: {err}");
            // The engine is still whole after the error.
            assert!(bits(&e.run_one(&xs[0]).unwrap()) == want[0], "{name}: after an error");
        }
    }
}
