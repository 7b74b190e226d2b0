//! edgemed-run as a user meets it: the README's main command, output formats,
//! and every kind of bad input named in the foundation issue (one-line error
//! naming the file, non-zero exit, no panic, good patches still classified).

use std::path::{Path, PathBuf};
use std::process::Output;

use edgemed_onnx::pb;
use edgemed_runtime::model::Dim;
use edgemed_tests::{assert_clean_failure, repo_root, scratch_dir};
use prost::Message;

fn samples() -> PathBuf {
    repo_root().join("examples/data/pcam")
}

fn run(args: &[&str]) -> Output {
    edgemed_tests::command(env!("CARGO_BIN_EXE_edgemed-run")).args(args).current_dir(repo_root()).output().expect("runs edgemed-run")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn first_sample() -> PathBuf {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(samples()).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "png")).collect();
    files.sort();
    files.remove(0)
}

#[test]
fn classifies_the_samples_with_no_flags_and_beats_chance() {
    let o = run(&["classify", "examples/data/pcam", "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let labels = std::fs::read_to_string(samples().join("labels.csv")).unwrap();
    let truth: std::collections::HashMap<String, u64> = labels
        .lines()
        .skip(1)
        .map(|l| {
            let (f, y) = l.split_once(',').unwrap();
            (f.to_string(), y.trim().parse().unwrap())
        })
        .collect();
    assert_eq!(rows.len(), truth.len(), "every labelled sample is classified");
    let correct = rows
        .iter()
        .filter(|r| {
            let file = Path::new(r["file"].as_str().unwrap()).file_name().unwrap().to_str().unwrap().to_string();
            let p = r["probability"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&p));
            (p >= 0.5) as u64 == truth[&file]
        })
        .count();
    let acc = correct as f64 / rows.len() as f64;
    println!("bundled model accuracy on the sample patches: {acc:.3}");
    assert!(acc >= 0.85, "bundled model accuracy on the samples is {acc}");
}

#[test]
fn csv_and_table_agree_and_output_file_is_written() {
    let dir = scratch_dir("cli-formats");
    let out = dir.join("r.csv");
    // 20 patches (batches of 7, 7 and 6; 16 and 4 below): formats and batching need no
    // more, and CI runs this under an emulator, where each patch costs 50 ms.
    let patches = "examples/data/pcam/patch_0[01]*.png";
    let o = run(&["classify", patches, "--format", "csv", "--batch", "7", "--threads", "2", "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "results go to the file");
    let csv = std::fs::read_to_string(&out).unwrap();
    let t = run(&["classify", patches, "--batch", "16"]);
    let table = String::from_utf8(t.stdout).unwrap();
    assert_eq!(csv.lines().count(), table.lines().count());
    // Batch size and threads must not change the answers.
    for (c, t) in csv.lines().skip(1).zip(table.lines().skip(1)) {
        let p_csv: f64 = c.split(',').nth(1).unwrap().parse().unwrap();
        let p_tab: f64 = t.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!((p_csv - p_tab).abs() < 1e-4, "{c} vs {t}");
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left behind");
    // Without --format, the output's extension names it: .csv writes the same csv, .json json.
    let inferred = dir.join("again.csv");
    assert!(run(&["classify", patches, "-o", inferred.to_str().unwrap()]).status.success());
    // The same rows but for the time each run started (the last column).
    let untimed = |text: &str| text.lines().map(|l| l.rsplit_once(',').unwrap().0.to_string()).collect::<Vec<_>>();
    assert_eq!(untimed(&std::fs::read_to_string(&inferred).unwrap()), untimed(&csv));
    let json = dir.join("r.json");
    assert!(run(&["classify", patches, "-o", json.to_str().unwrap()]).status.success());
    let rows: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(rows.as_array().map(|r| r.len()), Some(20));
}

#[test]
fn missing_file_is_reported_and_the_rest_classified() {
    let good = first_sample();
    let o = run(&["classify", good.to_str().unwrap(), "no/such/patch.png"]);
    assert_clean_failure(&o, "no/such/patch.png: no such file");
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.contains(good.file_name().unwrap().to_str().unwrap()) && out.lines().nth(1).unwrap().contains('.'), "{out}");
}

#[test]
fn non_image_and_truncated_images_fail_alone() {
    let dir = scratch_dir("cli-badimg");
    std::fs::write(dir.join("notes.png"), "this is not a png").unwrap();
    let bytes = std::fs::read(first_sample()).unwrap();
    std::fs::write(dir.join("cut.png"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::copy(first_sample(), dir.join("good.png")).unwrap();
    let o = run(&["classify", dir.to_str().unwrap(), "--format", "csv"]);
    assert_clean_failure(&o, "notes.png: not a readable image");
    assert!(stderr(&o).contains("cut.png: not a readable image"), "{}", stderr(&o));
    assert!(stderr(&o).contains("classified 1 of 3 patches") && stderr(&o).contains("; 2 failed"), "{}", stderr(&o));
}

#[test]
fn wrong_patch_size_is_refused_unless_resize() {
    let dir = scratch_dir("cli-size");
    let big = dir.join("big.png");
    image::RgbImage::from_pixel(120, 80, image::Rgb([200, 120, 180])).save(&big).unwrap();
    let o = run(&["classify", big.to_str().unwrap()]);
    assert_clean_failure(&o, "big.png: patch is 120x80, expected 96x96 or the model's input size 95x95 (pass --resize");
    let o = run(&["classify", big.to_str().unwrap(), "--resize"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn corrupt_and_truncated_models_are_refused() {
    let dir = scratch_dir("cli-models");
    let junk = dir.join("junk.onnx");
    std::fs::write(&junk, b"\x08\x07garbage that is not protobuf \xff\xff\xff").unwrap();
    let o = run(&["classify", "--model", junk.to_str().unwrap(), "examples/data/pcam"]);
    assert_clean_failure(&o, "junk.onnx: not a valid ONNX model");
    assert_eq!(o.status.code(), Some(2));

    let good = std::fs::read(repo_root().join("models/bundled/pcam-c4-demo.onnx")).unwrap();
    let cut = dir.join("cut.onnx");
    std::fs::write(&cut, &good[..good.len() * 2 / 3]).unwrap();
    let o = run(&["info", cut.to_str().unwrap()]);
    assert_clean_failure(&o, "cut.onnx: not a valid ONNX model");

    let o = run(&["classify", "--model", "missing.onnx", "examples/data/pcam"]);
    assert_clean_failure(&o, "missing.onnx: no such file");
}

/// A float tensor declaration; a negative dimension is the symbolic batch.
fn value_info(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
    let dims: Vec<Dim> = dims.iter().map(|&d| if d < 0 { Dim::Symbolic("batch".into()) } else { Dim::Fixed(d as usize) }).collect();
    edgemed_runtime::model::float_value_info(name, &dims)
}

/// An opset-13 model from nodes, initializers and the declared input `x` and output `y`.
fn tiny_model(node: Vec<pb::NodeProto>, initializer: Vec<pb::TensorProto>, x: &[i64], y: &[i64]) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 13 }],
        graph: Some(pb::GraphProto {
            node,
            initializer,
            input: vec![value_info("x", x)],
            output: vec![value_info("y", y)],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn model_without_an_image_input_is_refused() {
    // A valid ONNX model whose input is a [1, 10] vector.
    let relu = pb::NodeProto { input: vec!["x".into()], output: vec!["y".into()], op_type: "Relu".into(), ..Default::default() };
    let model = tiny_model(vec![relu], vec![], &[1, 10], &[1, 10]);
    let dir = scratch_dir("cli-vector");
    let path = dir.join("vector.onnx");
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    let o = run(&["classify", "--model", path.to_str().unwrap(), "examples/data/pcam"]);
    assert_clean_failure(&o, "vector.onnx: model input is not an image tensor");
    // `info` still describes it.
    let o = run(&["info", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("Relu x1"));
}

#[test]
fn empty_directory_and_unmatched_glob_are_errors() {
    let dir = scratch_dir("cli-empty");
    let o = run(&["classify", dir.to_str().unwrap()]);
    assert_clean_failure(&o, "no .png/.jpg/.tif files");
    let o = run(&["classify", "examples/data/pcam/*.jpeg"]);
    assert_clean_failure(&o, "no files match");
}

#[test]
fn glob_selects_patches() {
    let o = run(&["classify", "examples/data/pcam/patch_00*.png", "--format", "csv"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 11, "header + patch_000..patch_009");
}

#[test]
fn info_and_bench_describe_the_bundled_model() {
    let o = run(&["info", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["metadata"]["group_order"], 4);
    // The bundled model is the INT8 one, run by the engine by default.
    assert_eq!(v["precision"], "INT8 (QDQ)");
    let backend = v["backend"].as_str().unwrap();
    assert!(backend.starts_with("auto -> int8 (a QDQ model): edgemed INT8 engine") && backend.contains("integer ops"), "{backend}");
    assert!(v["parameters"].as_u64().unwrap() > 10_000);
    // The FP32 file beside it runs in tract.
    let o = run(&["info", "--json", "models/bundled/pcam-c4-demo.onnx"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["precision"], "FP32");
    assert_eq!(v["backend"], "auto -> tract (a float model): tract (CPU)");
    let o = run(&["bench", "--iters", "3", "--warmup", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("p50 ms") && out.contains("edgemed-int8"), "{out}");
    // The main command says what ran.
    let o = run(&["classify", "examples/data/pcam"]);
    assert!(stderr(&o).contains("with <bundled pcam-c4-demo-int8> (INT8 (QDQ)) on edgemed-int8 (cpu)"), "{}", stderr(&o));
}

#[test]
fn jpeg_and_tiff_patches_are_read() {
    let dir = scratch_dir("cli-formats-img");
    let img = image::open(first_sample()).unwrap();
    img.save(dir.join("a.tif")).unwrap();
    img.save(dir.join("b.jpg")).unwrap();
    let o = run(&["classify", dir.to_str().unwrap(), "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rows.len(), 2);
    // TIFF is lossless: same answer as the PNG; JPEG close to it.
    let png = run(&["classify", first_sample().to_str().unwrap(), "--format", "json"]);
    let p: Vec<serde_json::Value> = serde_json::from_slice(&png.stdout).unwrap();
    let (pa, pt, pj) =
        (p[0]["probability"].as_f64().unwrap(), rows[0]["probability"].as_f64().unwrap(), rows[1]["probability"].as_f64().unwrap());
    assert_eq!(pa, pt);
    assert!((pa - pj).abs() < 0.2, "png {pa} vs jpeg {pj}");
}

#[test]
fn model_whose_output_ignores_the_batch_is_refused() {
    // Image input with a symbolic batch, but one logit for the whole batch: [B,3,95,95] -> [1, 1].
    let mean = pb::NodeProto {
        input: vec!["x".into()],
        output: vec!["m".into()],
        op_type: "ReduceMean".into(),
        attribute: vec![pb::AttributeProto {
            name: "axes".into(),
            r#type: pb::attribute_proto::AttributeType::Ints as i32,
            ints: vec![0, 1, 2, 3],
            ..Default::default()
        }],
        ..Default::default()
    };
    let reshape = pb::NodeProto {
        input: vec!["m".into(), "shape".into()],
        output: vec!["y".into()],
        op_type: "Reshape".into(),
        ..Default::default()
    };
    let shape = pb::TensorProto {
        name: "shape".into(),
        dims: vec![2],
        data_type: pb::tensor_proto::DataType::Int64 as i32,
        int64_data: vec![1, 1],
        ..Default::default()
    };
    let model = tiny_model(vec![mean, reshape], vec![shape], &[-1, 3, 95, 95], &[1, 1]);
    let path = scratch_dir("cli-pooled").join("pooled.onnx");
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    let o = run(&["classify", "--model", path.to_str().unwrap(), "--batch", "2", "examples/data/pcam"]);
    assert_clean_failure(&o, "the model output has shape [1, 1], expected [2, classes]");
}

#[test]
fn bench_refuses_an_empty_batch() {
    let o = run(&["bench", "--batch", "0", "--iters", "1"]);
    assert_clean_failure(&o, "batch size must be at least 1");
}

// --- backends and devices --------------------------------------------------

fn run_env(args: &[&str], env: &[(&str, Option<&str>)]) -> Output {
    let mut c = edgemed_tests::command(env!("CARGO_BIN_EXE_edgemed-run"));
    c.args(args).current_dir(repo_root());
    for (k, v) in env {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.output().expect("runs edgemed-run")
}

fn probabilities(o: &Output) -> Vec<f64> {
    assert!(o.status.success(), "{}", stderr(o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array().unwrap().iter().map(|r| r["probability"].as_f64().unwrap()).collect()
}

#[test]
fn ort_backend_classifies_like_tract() {
    let Some(lib) = edgemed_tests::ort_library() else { return };
    let lib = lib.to_string_lossy().into_owned();
    // The FP32 model: the same float arithmetic in both (INT8 runs differ by rounding flips).
    let fp32 = "models/bundled/pcam-c4-demo.onnx";
    let tract = probabilities(&run(&["--backend", "tract", "classify", "-m", fp32, "examples/data/pcam", "-f", "json"]));
    let ort = probabilities(&run(&[
        "--backend",
        "ort",
        "--ort-lib",
        &lib,
        "--device",
        "cpu",
        "classify",
        "-m",
        fp32,
        "examples/data/pcam",
        "-f",
        "json",
    ]));
    assert_eq!(tract.len(), 100);
    let worst = tract.iter().zip(&ort).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
    assert!(worst < 1e-4, "max probability difference {worst}");
    // Both backends in one benchmark, one row per backend and batch size, with the ratio.
    let o = run(&["--backend", "tract,ort", "--ort-lib", &lib, "bench", "--batch", "1,2", "--iters", "2", "--warmup", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.lines().filter(|l| l.contains("/ tract @ cpu")).count(), 2, "{out}");
    assert_eq!(out.lines().filter(|l| l.contains("/ ort @ cpu")).count(), 2, "{out}");
    assert!(out.contains("speed-up"), "{out}");
    // Classify takes one backend.
    assert_clean_failure(&run(&["--backend", "tract,ort", "classify", "examples/data/pcam"]), "one --backend");
}

#[test]
fn cuda_on_a_host_without_it_falls_back_loudly_or_fails_when_strict() {
    // tract never has CUDA; ONNX Runtime's CPU wheel neither (a GPU host's CUDA build is
    // exercised by tests/tests/ort_backend.rs).
    for backend in ["tract", "int8", "auto"] {
        let o = run(&["--backend", backend, "--device", "cuda", "classify", &first_sample().to_string_lossy()]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains("CPU only"), "{backend}: {}", stderr(&o));
    }
    assert_clean_failure(
        &run(&["--device", "cuda:0", "--strict-device", "classify", "examples/data/pcam"]),
        "device cuda:0 is not available",
    );
    assert_clean_failure(&run(&["--device", "tpu", "classify", "examples/data/pcam"]), "unknown device");
    assert_clean_failure(&run(&["--backend", "tvm", "classify", "examples/data/pcam"]), "unknown backend");
}

#[test]
fn missing_or_wrong_onnxruntime_library_is_one_clear_line() {
    let no_env = [("ORT_DYLIB_PATH", None)];
    let o = run_env(&["--backend", "ort", "classify", "examples/data/pcam"], &no_env);
    assert_clean_failure(&o, "ONNX Runtime 1.31 library not found");
    assert!(stderr(&o).contains("pip install onnxruntime"), "{}", stderr(&o));
    assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
    let o = run_env(&["--backend", "ort", "--ort-lib", "/nonexistent/onnxruntime", "classify", "examples/data/pcam"], &no_env);
    assert_clean_failure(&o, "--ort-lib /nonexistent/onnxruntime: no such file or directory");
    // A file that is not a shared library (and, through the variable, a folder without one).
    let o = run_env(&["--backend", "ort", "--ort-lib", "Cargo.toml", "classify", "examples/data/pcam"], &no_env);
    assert_clean_failure(&o, "loading ONNX Runtime");
    let o = run_env(&["--backend", "ort", "classify", "examples/data/pcam"], &[("ORT_DYLIB_PATH", Some("examples"))]);
    assert_clean_failure(&o, "ORT_DYLIB_PATH examples holds no ONNX Runtime library");
}

#[test]
fn cli_writes_overlay_and_map_and_refuses_bad_requests() {
    let d = scratch_dir("heatmap-cli");
    let img_path = d.join("region.png");
    let mut region = image::RgbImage::new(288, 288);
    for k in 0..9u32 {
        let p = edgemed_runtime::formats::patch::read_rgb(&samples().join(format!("patch_{:03}.png", k * 11))).unwrap();
        image::imageops::replace(&mut region, &p, (k % 3 * 96) as i64, (k / 3 * 96) as i64);
    }
    region.save(&img_path).unwrap();
    let out = d.join("map.png");
    let bin = env!("CARGO_BIN_EXE_edgemed-run");
    let o = edgemed_tests::command(bin)
        .args(["heatmap", img_path.to_str().unwrap(), "-o", out.to_str().unwrap(), "--stride", "48"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("at p >= 0.5") && text.contains("patch classifier"), "{text}");
    let overlay = edgemed_runtime::formats::patch::read_rgb(&out).unwrap();
    assert_eq!(overlay.dimensions(), (288, 288));
    let map: edgemed_runtime::ndarray::Array2<f32> = ndarray_npy::read_npy(d.join("map.npy")).unwrap();
    assert_eq!(map.shape(), &[5, 5]); // (288 - 95) / 48 + 1
    assert!(map.iter().all(|p| (0.0..=1.0).contains(p)));
    // Too small an image, a missing image, and nothing left half-written.
    image::RgbImage::new(64, 64).save(d.join("small.png")).unwrap();
    let o = edgemed_tests::command(bin)
        .args(["heatmap", d.join("small.png").to_str().unwrap(), "-o", d.join("s.png").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("smaller than the model's 95x95 input"));
    let o = edgemed_tests::command(bin)
        .args(["heatmap", d.join("none.png").to_str().unwrap(), "-o", d.join("n.png").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no such file"));
    assert!(!d.join("s.png").exists() && !d.join("n.png").exists());
}

// --- run: one tensor in, outputs written or checked ----------------------------

#[test]
fn run_writes_outputs_and_checks_them_against_another_machines() {
    use edgemed_runtime::formats::tensors;
    let dir = scratch_dir("cli-run");
    let model = edgemed_tests::fixture("eqmnv2_c4.onnx");
    let input = edgemed_tests::fixture("eqmnv2_c4.input.f32");
    let (model_s, input_s) = (model.to_str().unwrap(), input.to_str().unwrap());
    let host = dir.join("host");
    let o = run(&["run", model_s, "--input", input_s, "--output-dir", host.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let name = &edgemed_runtime::model::OnnxModel::load(&model).unwrap().outputs[0].name;
    let ours = tensors::read_npy(&tensors::output_file(&host, name)).unwrap();

    // ONNX Runtime's output for the same input, as another machine would have written it.
    let ort = dir.join("ort");
    std::fs::create_dir_all(&ort).unwrap();
    let reference = edgemed_tests::read_f32(&edgemed_tests::fixture("eqmnv2_c4.ort.f32"));
    let reference = edgemed_runtime::ndarray::ArrayD::from_shape_vec(ours.shape(), reference).unwrap();
    tensors::write_npy(&tensors::output_file(&ort, name), &reference).unwrap();
    let o = run(&["run", model_s, "--input", input_s, "--expect", ort.to_str().unwrap(), "--tolerance", "1e-4"]);
    assert!(o.status.success(), "{}{}", stderr(&o), String::from_utf8_lossy(&o.stdout));

    // Identical bits against itself; one ulp off in one element is caught and located.
    let o = run(&["run", model_s, "--input", input_s, "--expect", host.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let mut off = ours.clone();
    let last = off.len() - 1;
    let v = off.as_slice_mut().unwrap();
    v[last] = f32::from_bits(v[last].to_bits() + 1);
    tensors::write_npy(&tensors::output_file(&host, name), &off).unwrap();
    let o = run(&["run", model_s, "--input", input_s, "--expect", host.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("DIFFERS") && stdout.contains(&format!("1 of {} elements differ", ours.len())), "{stdout}");
    assert!(stdout.contains(&format!("(element {last})")), "{stdout}");

    // Bad requests: nothing to do, a raw file of the wrong size, NaN input, no reference.
    assert_clean_failure(&run(&["run", model_s, "--input", input_s]), "nothing to do");
    let short = dir.join("short.f32");
    std::fs::write(&short, [0u8; 12]).unwrap();
    assert_clean_failure(
        &run(&["run", model_s, "--input", short.to_str().unwrap(), "--output-dir", dir.join("bad").to_str().unwrap()]),
        "3 float32 values do not fill",
    );
    let mut x = edgemed_tests::read_f32(&input);
    x[7] = f32::NAN;
    let nan = dir.join("nan.f32");
    std::fs::write(&nan, x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    assert_clean_failure(
        &run(&["run", model_s, "--input", nan.to_str().unwrap(), "--output-dir", dir.join("bad").to_str().unwrap()]),
        "NaN",
    );
    assert_clean_failure(&run(&["run", model_s, "--input", input_s, "--expect", dir.join("none").to_str().unwrap()]), "no such file");
    let _ = std::fs::remove_dir_all(&dir);
}

// --- reliability: manifests, memory budget, streamed results --------------------

/// A copy of the bundled model (and the samples' first patch) in a scratch folder.
fn model_copy(dir: &Path) -> PathBuf {
    let m = dir.join("pcam.onnx");
    std::fs::copy(repo_root().join("models/bundled/pcam-c4-demo.onnx"), &m).unwrap();
    m
}

#[test]
fn manifests_refuse_tampered_and_unlisted_models() {
    let dir = scratch_dir("cli-manifest");
    let m = model_copy(&dir);
    let (ms, patch) = (m.to_str().unwrap(), first_sample());
    let patch = patch.to_str().unwrap();
    // No manifest: runs, unless one is required.
    assert!(run(&["classify", patch, "-m", ms]).status.success());
    assert_clean_failure(&run(&["--require-manifest", "classify", patch, "-m", ms]), "--require-manifest");
    // The converter's manifest command records it; then it runs even when required.
    let bytes = std::fs::read(&m).unwrap();
    let model = edgemed_runtime::model::OnnxModel::from_bytes(&m, &bytes).unwrap();
    edgemed_runtime::formats::manifest::Manifest::record(&m, &bytes, &model).unwrap();
    let o = run(&["--require-manifest", "classify", patch, "-m", ms]);
    assert!(o.status.success(), "{}", stderr(&o));
    // One flipped byte in a weight: refused, naming the hash, whatever the flags.
    let mut tampered = bytes.clone();
    let at = tampered.len() - 100;
    tampered[at] ^= 1;
    std::fs::write(&m, &tampered).unwrap();
    assert_clean_failure(&run(&["classify", patch, "-m", ms]), "does not match the manifest");
    assert_clean_failure(&run(&["run", ms, "--input", "x.f32", "--output-dir", "y"]), "SHA-256");
    // A model the manifest does not list: warned about, or refused when required.
    let other = dir.join("other.onnx");
    std::fs::write(&other, &bytes).unwrap();
    let o = run(&["classify", patch, "-m", other.to_str().unwrap()]);
    assert!(o.status.success() && stderr(&o).contains("not listed"), "{}", stderr(&o));
    assert_clean_failure(&run(&["--require-manifest", "classify", patch, "-m", other.to_str().unwrap()]), "not listed");
    // A manifest named explicitly, and one that is not a manifest.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"models\": \"no\"}").unwrap();
    assert_clean_failure(&run(&["--manifest", bad.to_str().unwrap(), "classify", patch, "-m", ms]), "not a model manifest");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn memory_budget_refuses_before_allocating() {
    let dir = scratch_dir("cli-budget");
    let patch = first_sample();
    let patch = patch.to_str().unwrap();
    // The bundled model needs a few MiB at batch 1; 1 MiB is too little.
    assert_clean_failure(&run(&["--memory-budget", "1M", "classify", patch]), "over the memory budget of 1.0 MiB");
    assert!(run(&["--memory-budget", "64M", "classify", patch]).status.success());
    // A batch whose activations would not fit: refused before running, naming the input.
    assert_clean_failure(
        // (tract's: the INT8 engine runs a batch item by item in buffers of one item.)
        &run(&["--memory-budget", "256M", "--backend", "tract", "bench", "--batch", "1024", "--iters", "1"]),
        "activations at input [1024, 3, 95, 95]",
    );
    assert_clean_failure(&run(&["--memory-budget", "lots", "classify", patch]), "memory size");

    // Declared sizes that are absurd: an initializer claiming 2^40 floats (with no data),
    // and a graph whose Tile output would take 32 GiB from a small input.
    let huge = pb::TensorProto { name: "w".into(), dims: vec![1 << 20, 1 << 20], data_type: 1, ..Default::default() };
    let node = |op: &str, i: &[&str], o: &str| pb::NodeProto {
        op_type: op.into(),
        input: i.iter().map(|s| s.to_string()).collect(),
        output: vec![o.into()],
        ..Default::default()
    };
    let forged = tiny_model(vec![node("Add", &["x", "w"], "y")], vec![huge], &[1, 3, 96, 96], &[1, 3, 96, 96]);
    let path = dir.join("forged.onnx");
    std::fs::write(&path, forged.encode_to_vec()).unwrap();
    assert_clean_failure(&run(&["classify", patch, "-m", path.to_str().unwrap()]), "the weights: 4194304.0 MiB needed");
    let reps = pb::TensorProto { name: "r".into(), dims: vec![4], data_type: 7, int64_data: vec![1, 1, 300, 300], ..Default::default() };
    let tile = tiny_model(vec![node("Tile", &["x", "r"], "y")], vec![reps], &[1, 3, 96, 96], &[1, 3, 28800, 28800]);
    let path = dir.join("tile.onnx");
    std::fs::write(&path, tile.encode_to_vec()).unwrap();
    assert_clean_failure(&run(&["classify", patch, "-m", path.to_str().unwrap()]), "over the memory budget");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Minimal PNG with only a header claiming `side` x `side` pixels (a decompression bomb's shape).
fn png_header_only(side: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(side.to_be_bytes());
    ihdr.extend(side.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc32(&ihdr).to_be_bytes());
    png
}

#[test]
fn decompression_bombs_are_refused_from_the_header() {
    let dir = scratch_dir("cli-bomb");
    let bomb = dir.join("bomb.png");
    std::fs::write(&bomb, png_header_only(100_000)).unwrap();
    let o = run(&["classify", bomb.to_str().unwrap()]);
    assert_clean_failure(&o, "bomb.png: not a readable image");
    assert!(stderr(&o).to_lowercase().contains("limit"), "{}", stderr(&o));
    let o = run(&["heatmap", bomb.to_str().unwrap(), "-o", dir.join("m.png").to_str().unwrap()]);
    assert_clean_failure(&o, "bomb.png: not a readable image");
    let _ = std::fs::remove_dir_all(&dir);
}

fn rows_of(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn results_stream_as_they_come_and_resume_skips_what_is_done() {
    let dir = scratch_dir("cli-resume");
    let out = dir.join("out.jsonl");
    let partial = dir.join("out.jsonl.partial");
    // 40 patches (CI runs this under an emulator, 50 ms a patch).
    let patches = "examples/data/pcam/patch_0[0-3]*.png";
    let o = run(&["classify", patches, "--format", "jsonl", "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let full = rows_of(&out);
    assert_eq!(full.len(), 40);
    assert!(!partial.exists());

    // An interrupted run: 15 rows, a torn one, then the rest with --resume.
    let text = std::fs::read_to_string(&out).unwrap();
    let mut cut: String = text.lines().take(15).map(|l| format!("{l}\n")).collect();
    cut.push_str(&text.lines().nth(15).unwrap()[..20]);
    std::fs::write(&partial, cut).unwrap();
    std::fs::remove_file(&out).unwrap();
    let o = run(&["classify", patches, "--format", "jsonl", "-o", out.to_str().unwrap(), "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("15 of 40 patches already classified"), "{}", stderr(&o));
    assert!(stderr(&o).contains("classified 25 of 25"), "{}", stderr(&o));
    let mut resumed = rows_of(&out);
    assert!(!partial.exists());
    let key = |v: &serde_json::Value| v["file"].as_str().unwrap().to_string();
    resumed.sort_by_key(key);
    let mut expected = full.clone();
    expected.sort_by_key(key);
    // The same rows but for the time each run started.
    let untimed =
        |rows: &mut Vec<serde_json::Value>| rows.iter_mut().for_each(|r| assert!(r.as_object_mut().unwrap().remove("time").is_some()));
    untimed(&mut resumed);
    untimed(&mut expected);
    assert_eq!(resumed, expected, "each patch once, with the same result");

    // Killed mid-run: what was done is in the partial file, and --resume completes it.
    for sub in ["a", "b"] {
        let d = dir.join("many").join(sub);
        std::fs::create_dir_all(&d).unwrap();
        for f in std::fs::read_dir(samples()).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, d.join(f.file_name().unwrap())).unwrap();
        }
    }
    let many = dir.join("many");
    let out = dir.join("many.csv");
    let partial = dir.join("many.csv.partial");
    let args = ["classify", many.to_str().unwrap(), "--format", "csv", "-o", out.to_str().unwrap(), "--threads", "1"];
    let mut child = edgemed_tests::command(env!("CARGO_BIN_EXE_edgemed-run")).args(args).current_dir(repo_root()).spawn().unwrap();
    let lines = |p: &Path| std::fs::read_to_string(p).map(|t| t.lines().count()).unwrap_or(0);
    let start = std::time::Instant::now();
    while lines(&partial) < 20 && child.try_wait().unwrap().is_none() && start.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let kept = lines(&partial);
    assert!(!out.exists() && (20..201).contains(&kept), "the killed run left {kept} lines");
    let o = run(&["classify", many.to_str().unwrap(), "--format", "csv", "-o", out.to_str().unwrap(), "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).unwrap();
    let mut files: Vec<&str> = text.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(files.len(), 200, "every patch exactly once");
    files.sort();
    files.dedup();
    assert_eq!(files.len(), 200);

    // Refused: --resume without a streamed output file, or from a file that is not ours.
    assert_clean_failure(&run(&["classify", "examples/data/pcam", "--resume"]), "--resume needs --output");
    std::fs::write(&out, "not, results\n").unwrap();
    std::fs::remove_file(&partial).ok();
    assert_clean_failure(
        &run(&["classify", "examples/data/pcam", "--format", "jsonl", "-o", out.to_str().unwrap(), "--resume"]),
        "cannot resume",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_compares_fp32_and_int8_and_profiles_the_engine() {
    let fx = repo_root().join("tests/fixtures");
    let (fp32, qdq) = (fx.join("eqmnv2_c4.onnx"), fx.join("eqmnv2_c4_qdq.onnx"));
    let args = [
        "--backend",
        "tract,int8",
        "bench",
        fp32.to_str().unwrap(),
        "--quantized",
        qdq.to_str().unwrap(),
        "--iters",
        "2",
        "--warmup",
        "1",
        "--profile",
    ];
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    // tract on both models, the engine on the INT8 one only; MACs from the engine's plan.
    for row in
        ["eqmnv2_c4.onnx FP32 / tract", "eqmnv2_c4_qdq.onnx INT8 / tract", "eqmnv2_c4_qdq.onnx INT8 / edgemed-int8", "GMAC/s", "6.01"]
    {
        assert!(out.contains(row), "{row} missing from\n{out}");
    }
    assert!(!out.contains("FP32 / edgemed-int8"), "{out}");
    // The profile: one line per step of the plan: the input's quantisation, the convs,
    // the head (mask, group pooling, average pooling, the classifier) in integers too.
    for step in
        ["quantize 3 at 95x95", "multiply (2 factors) 320 at 5x5", "max of 4 80 at 5x5", "global average pool 80", "pointwise 80 -> 2"]
    {
        assert!(out.contains(step), "{step} missing from\n{out}");
    }
    assert!(out.matches("conv 3x3/").count() >= 10 && out.contains(", 0 float ops,"), "{out}");

    // --profile needs the engine; a missing --quantized model is named.
    assert_clean_failure(&run(&["bench", fp32.to_str().unwrap(), "--iters", "1", "--profile"]), "give a QDQ model");
    assert_clean_failure(
        &run(&["--backend", "tract", "bench", qdq.to_str().unwrap(), "--iters", "1", "--profile"]),
        "int8 or auto backend",
    );
    let missing = fx.join("no-such-int8.onnx");
    let o = run(&["bench", fp32.to_str().unwrap(), "--quantized", missing.to_str().unwrap(), "--iters", "1"]);
    assert_clean_failure(&o, "no-such-int8.onnx");

    // Volume models too (a 3-D U-Net window); a --quantized model of another shape is refused.
    let unet = fx.join("unet/unet3d.onnx");
    let o = run(&["bench", unet.to_str().unwrap(), "--iters", "1", "--warmup", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("unet3d.onnx / tract"), "{}", String::from_utf8_lossy(&o.stdout));
    assert_clean_failure(
        &run(&["bench", unet.to_str().unwrap(), "--quantized", qdq.to_str().unwrap(), "--iters", "1"]),
        "same input shape",
    );
    // Spatial sizes left symbolic: nothing to time them at.
    let relu = pb::NodeProto { input: vec!["x".into()], output: vec!["y".into()], op_type: "Relu".into(), ..Default::default() };
    let path = scratch_dir("cli-bench-symbolic").join("symbolic.onnx");
    std::fs::write(&path, tiny_model(vec![relu], vec![], &[-1, 3, -1, -1], &[-1, 3, -1, -1]).encode_to_vec()).unwrap();
    assert_clean_failure(&run(&["bench", path.to_str().unwrap(), "--iters", "1"]), "bench needs every size after the batch fixed");
}

// --- outputs: checked before any work, never over an input -----------------------

#[test]
fn an_output_naming_an_input_or_an_unwritable_place_is_refused_before_any_work() {
    let dir = scratch_dir("cli-outputs");
    let patch = dir.join("patch.png");
    std::fs::copy(first_sample(), &patch).unwrap();
    let before = std::fs::read(&patch).unwrap();
    let p = patch.to_str().unwrap();
    // classify -o one of the patches (spelled another way), heatmap -o its own image.
    let again = dir.join(".").join("patch.png");
    assert_clean_failure(
        &run(&["classify", dir.to_str().unwrap(), "--format", "csv", "-o", again.to_str().unwrap()]),
        "the output is one of the inputs",
    );
    assert_clean_failure(&run(&["heatmap", p, "-o", p]), "the output is one of the inputs");
    assert_eq!(std::fs::read(&patch).unwrap(), before, "the input is untouched");
    // The overlay is PNG: another extension is refused rather than holding PNG bytes.
    assert_clean_failure(&run(&["heatmap", p, "-o", dir.join("r.jpg").to_str().unwrap()]), "name it .png");
    // A folder that does not exist, and a folder given as the output: refused at once.
    let missing = dir.join("no-such-folder").join("out.json");
    let o = run(&["classify", "examples/data/pcam", "--format", "json", "-o", missing.to_str().unwrap()]);
    assert_clean_failure(&o, "does not exist");
    assert!(!stderr(&o).contains("classified"), "no patch was classified: {}", stderr(&o));
    assert_clean_failure(&run(&["classify", p, "-o", dir.to_str().unwrap()]), "is a folder");
    // segment and upsample: the output is the input volume.
    let vol = dir.join("v.nii.gz");
    std::fs::copy(repo_root().join("tests/fixtures/unet/volume.nii.gz"), &vol).unwrap();
    let v = vol.to_str().unwrap();
    let unet = repo_root().join("tests/fixtures/unet/unet3d.onnx");
    assert_clean_failure(&run(&["segment", v, "-o", v, "-m", unet.to_str().unwrap()]), "the output is one of the inputs");
    assert_eq!(std::fs::read(&vol).unwrap(), std::fs::read(repo_root().join("tests/fixtures/unet/volume.nii.gz")).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_batch_larger_than_the_patches_is_cut_to_them() {
    // 100,000 would be 10 GiB of padded input; one patch needs a batch of one.
    let o = run(&["classify", first_sample().to_str().unwrap(), "--batch", "100000", "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rows.as_array().map(|r| r.len()), Some(1));
}

#[test]
fn run_checks_the_input_shape_once_before_any_backend() {
    // A 96x96 tensor for a [batch, 3, 95, 95] model: tract used to run it, exit 0.
    let dir = scratch_dir("cli-run-shape");
    let x = dir.join("x96.npy");
    edgemed_runtime::formats::tensors::write_npy(&x, &edgemed_runtime::ndarray::ArrayD::zeros(vec![1, 3, 96, 96])).unwrap();
    for backend in ["tract", "int8", "auto"] {
        let o = run(&[
            "--backend",
            backend,
            "run",
            "models/bundled/pcam-c4-demo.onnx",
            "--input",
            x.to_str().unwrap(),
            "--output-dir",
            dir.join("out").to_str().unwrap(),
        ]);
        assert_clean_failure(&o, "shape [1, 3, 96, 96] does not fit the model's input [batch, 3, 95, 95]");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
