//! Criterion benchmark of one 95x95 patch through each engine, one thread: tract FP32,
//! tract QDQ, ONNX Runtime FP32 and INT8 (when `ORT_DYLIB_PATH` names its library) and
//! edgemed's INT8 engine, on the committed equivariant MobileNetV2 fixtures. Models made
//! by `scripts/make_bench_models.py` (224x224 MobileNetV2, 3-D U-Net window) are added
//! when they are in `target/bench-models/`.
//!
//!     ORT_DYLIB_PATH=.../libonnxruntime.so cargo bench -p edgemed-runtime --bench int8
//!
//! `edgemed-run bench FP32 --quantized INT8 --backend tract,ort,int8` prints the same
//! comparison as one table with ratios; this is the statistically careful version.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use edgemed_runtime::backend::{self, BackendKind, BackendOptions};
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::ndarray::{ArrayD, IxDyn};

/// (label, FP32 model, INT8 QDQ model)
fn cases() -> Vec<(&'static str, PathBuf, PathBuf)> {
    let fixtures = edgemed_tests::repo_root().join("tests/fixtures");
    let mut v = vec![("eqmnv2_c4 95x95", fixtures.join("eqmnv2_c4.onnx"), fixtures.join("eqmnv2_c4_qdq.onnx"))];
    let made = edgemed_tests::repo_root().join("target/bench-models");
    for (label, fp32, int8) in
        [("mobilenet_v2 224x224", "mnv2_224.onnx", "mnv2_224_qdq.onnx"), ("unet3d 32^3 window", "unet3d.onnx", "unet3d_qdq.onnx")]
    {
        if made.join(fp32).exists() && made.join(int8).exists() {
            v.push((label, made.join(fp32), made.join(int8)));
        }
    }
    v
}

fn engines(c: &mut Criterion) {
    let ort = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    for (label, fp32, int8) in cases() {
        let mut group = c.benchmark_group(label);
        group.sample_size(30).measurement_time(std::time::Duration::from_secs(3));
        let mut rows = vec![("tract FP32", &fp32, BackendKind::Tract), ("tract QDQ", &int8, BackendKind::Tract)];
        if ort.is_some() {
            rows.push(("ONNX Runtime FP32", &fp32, BackendKind::Ort));
            rows.push(("ONNX Runtime INT8", &int8, BackendKind::Ort));
        }
        rows.push(("edgemed INT8", &int8, BackendKind::Int8));
        for (name, path, kind) in rows {
            let model = OnnxModel::load(path).expect("benchmark model");
            let shape: Vec<usize> =
                std::iter::once(1).chain(edgemed_runtime::bench::item_shape(&model).expect("fixed input shape")).collect();
            let opts = BackendOptions { kind, ort_library: ort.clone(), intra_threads: 1, ..Default::default() };
            let b = backend::create(&model, &shape, &opts).expect("backend");
            let n = shape.iter().product();
            let x = ArrayD::from_shape_vec(IxDyn(&shape), edgemed_runtime::bench::bench_input(n)).expect("input");
            group.bench_function(format!("{name} ({})", b.name()), |bench| bench.iter(|| b.run(x.clone()).expect("run")));
        }
        group.finish();
    }
}

criterion_group!(benches, engines);
criterion_main!(benches);
