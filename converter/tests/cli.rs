//! The `edgemed` CLI on bad input: one clear line, non-zero exit, no output file.

use std::process::{Command, Output};

use edgemed_tests::{fixture, repo_root, scratch_dir};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgemed")).args(args).current_dir(repo_root()).output().unwrap()
}

#[test]
fn non_onnx_input_is_refused_and_nothing_written() {
    let d = scratch_dir("conv-junk");
    let junk = d.join("junk.onnx");
    std::fs::write(&junk, "definitely not protobuf \u{1}\u{2}").unwrap();
    let out = d.join("out.onnx");
    let o = run(&["quantize", junk.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("junk.onnx: not a valid ONNX model"), "{err}");
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1, "no temporary file left");
}

#[test]
fn quantize_inspect_verify_round_trip() {
    let d = scratch_dir("conv-ok");
    let out = d.join("c4_int8.onnx");
    let o = run(&["quantize", fixture("eqmnv2_c4.onnx").to_str().unwrap(), "-o", out.to_str().unwrap(), "--per-channel"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["verify", fixture("eqmnv2_c4.onnx").to_str().unwrap(), out.to_str().unwrap(), "--random", "4", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // Rotation error: FP32 at float precision; INT8 under tract's float simulation of QDQ
    // at the level of a few flipped rounding steps (exactly 0 with integer kernels, see tests/dfq.rs).
    assert!(v["sqnr_db"][0].as_f64().unwrap() > 15.0, "{v}");
    assert!(v["rotation_error"][0].as_f64().unwrap() <= 1e-4 && v["rotation_error"][1].as_f64().unwrap() <= 1e-2, "{v}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("random inputs, not data"), "noise inputs are said to be noise");
    // Thresholds: verify as a gate.
    let gate = |extra: &[&str]| {
        let mut args =
            vec!["verify".to_string(), fixture("eqmnv2_c4.onnx").to_str().unwrap().to_string(), out.to_str().unwrap().to_string()];
        args.extend(["--random", "4"].iter().chain(extra).map(|s| s.to_string()));
        Command::new(env!("CARGO_BIN_EXE_edgemed")).args(&args).current_dir(repo_root()).output().unwrap()
    };
    assert!(gate(&["--min-sqnr", "10", "--min-top1", "0.5"]).status.success());
    let o = gate(&["--min-sqnr", "200"]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("is below --min-sqnr 200"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = gate(&["--min-top1", "1.5"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("is below --min-top1 1.5"));
    let o = run(&["inspect", fixture("eqmnv2_c4.onnx").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && text.contains("blocks.3.dw.conv") && text.contains("after CLE"), "{text}");
    let fp16 = d.join("c4_fp16.onnx");
    let o = run(&["quantize", fixture("eqmnv2_c4.onnx").to_str().unwrap(), "-o", fp16.to_str().unwrap(), "--fp16"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["verify", fixture("eqmnv2_c4.onnx").to_str().unwrap(), fp16.to_str().unwrap(), "--random", "2", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["sqnr_db"][0].as_f64().unwrap() > 40.0, "{v}");
    // Float16 inputs and outputs too: the runtime converts at the boundary.
    let fp16_io = d.join("c4_fp16_io.onnx");
    let o = run(&["quantize", fixture("eqmnv2_c4.onnx").to_str().unwrap(), "-o", fp16_io.to_str().unwrap(), "--fp16", "--fp16-io"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = edgemed_runtime::model::OnnxModel::load(&fp16_io).unwrap();
    assert_eq!((m.inputs[0].elem_type.as_str(), m.outputs[0].elem_type.as_str()), ("float16", "float16"));
    let o = run(&["verify", fixture("eqmnv2_c4.onnx").to_str().unwrap(), fp16_io.to_str().unwrap(), "--random", "2", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["sqnr_db"][0].as_f64().unwrap() > 40.0, "{v}");
    let o = run(&["quantize", fixture("eqmnv2_c4.onnx").to_str().unwrap(), "-o", fp16_io.to_str().unwrap(), "--fp16-io"]);
    assert!(!o.status.success(), "--fp16-io without --fp16 must be refused");

    // Every model written is recorded, with the hash of the bytes on disk and its inputs.
    use edgemed_runtime::formats::manifest::{sha256_hex, Manifest, MANIFEST_FILE};
    let manifest = Manifest::load(&d.join(MANIFEST_FILE)).unwrap();
    let files: Vec<&str> = manifest.models.iter().map(|m| m.file.as_str()).collect();
    assert_eq!(files, ["c4_fp16.onnx", "c4_fp16_io.onnx", "c4_int8.onnx"]);
    for entry in &manifest.models {
        let path = d.join(&entry.file);
        assert_eq!(entry.sha256, sha256_hex(&std::fs::read(&path).unwrap()), "{}", entry.file);
        assert_eq!(entry.inputs, edgemed_runtime::model::OnnxModel::load(&path).unwrap().inputs);
    }
    // `edgemed manifest` records models made elsewhere.
    let copy = d.join("from_elsewhere.onnx");
    std::fs::copy(fixture("eqmnv2_c4.onnx"), &copy).unwrap();
    let o = run(&["manifest", copy.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let manifest = Manifest::load(&d.join(MANIFEST_FILE)).unwrap();
    assert_eq!(manifest.entry("from_elsewhere.onnx").unwrap().sha256, sha256_hex(&std::fs::read(&copy).unwrap()));
    assert_eq!(manifest.models.len(), 4);
}

#[test]
fn unsupported_patterns_stay_fp32_and_are_listed() {
    use edgemed_onnx::builder::{Attr, GraphBuilder, D};
    use prost::Message;
    // No batch norm, and a Sigmoid between two convs: no statistics reach the second
    // conv's input without --calibrate, so it stays FP32 and is listed.
    let d = scratch_dir("conv-partial");
    let mut g = GraphBuilder::new("sigmoid-between-convs");
    g.input_f32("x", &[D::N(1), D::N(3), D::N(8), D::N(8)]);
    let w: Vec<f32> = (0..4 * 3 * 9).map(|i| ((i * 37 % 17) as f32 - 8.0) / 20.0).collect();
    g.init_f32("w1", &[4, 3, 3, 3], &w[..4 * 3 * 9]);
    g.init_f32("w2", &[2, 4, 1, 1], &w[..8]);
    g.node("Conv", "c1", &["x", "w1"], vec![Attr::Ints("pads", vec![1; 4])]);
    g.node("Sigmoid", "s", &["c1"], vec![]);
    g.node("Conv", "c2", &["s", "w2"], vec![]);
    g.output_f32("c2", &[D::N(1), D::N(2), D::N(8), D::N(8)]);
    let model = d.join("sigmoid.onnx");
    std::fs::write(&model, g.into_model("cli-test", &[]).encode_to_vec()).unwrap();
    let out = d.join("sigmoid_int8.onnx");
    let o = run(&["quantize", model.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("left in FP32") && err.contains("use --calibrate"), "{err}");

    // MONAI's U-Net has no batch norm, but its instance norms say each activation's
    // mean and deviation: it quantizes whole without calibration data.
    let out = d.join("unet3d_int8.onnx");
    let unet = repo_root().join("tests/fixtures/zoo/unet3d.onnx");
    let o = run(&["quantize", unet.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && !err.contains("left in FP32") && err.contains("instance norms' parameters"), "{err}");
}

#[test]
fn export_unet_from_a_monai_state_dict() {
    let d = scratch_dir("conv-unet");
    let out = d.join("unet3d.onnx");
    let weights = fixture("unet/unet3d.safetensors");
    let o = run(&["export", "unet", "--weights", weights.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("3-D U-Net, channels [8, 16, 32], 35455 parameters, input sizes multiple of 4"), "{err}");
    let m = edgemed_runtime::model::OnnxModel::load(&out).unwrap();
    assert_eq!(m.inputs[0].dims.as_ref().unwrap().len(), 5);
    // Settings that disagree with the file: one line naming the tensor, no file.
    let bad = d.join("bad.onnx");
    let ctor = r#"{"spatial_dims":3,"in_channels":1,"out_channels":3,"channels":[8,16,32],"strides":[2,2],"num_res_units":2,"norm":"instance","act":"prelu"}"#;
    let o = run(&["export", "unet", "--weights", weights.to_str().unwrap(), "--constructor", ctor, "-o", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("missing tensor \"model.0.conv.unit1.conv.weight\"") && err.lines().count() == 1, "{err}");
    let o = run(&[
        "export",
        "unet",
        "--seed",
        "1",
        "--constructor",
        r#"{"spatial_dims":3,"in_channels":1,"out_channels":2,"channels":[4,8],"strides":[2],"norm":"group"}"#,
        "-o",
        bad.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("norm \"group\" is not supported"), "{err}");
    assert!(!bad.exists());
}

#[test]
fn quantize_a_twin_decoder_calibrated_on_latents() {
    let d = scratch_dir("conv-twin");
    let latents = d.join("latents.npy");
    let z = edgemed_runtime::ndarray::ArrayD::from_shape_fn(vec![3, 512], |i| ((i[0] * 31 + i[1] * 7) % 19) as f32 / 19.0 - 0.5);
    edgemed_runtime::formats::tensors::write_npy(&latents, &z).unwrap();
    let out = d.join("decoder_int8.onnx");
    let decoder = fixture("twin_tiny/decoder.onnx");
    let o = run(&["quantize", decoder.to_str().unwrap(), "--calibrate", latents.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("activations quantized"), "{err}");
    assert_eq!(edgemed_runtime::model::OnnxModel::load(&out).unwrap().precision(), "INT8 (QDQ)");
    // Latents of another twin (4096 values) do not fit: one line, no file.
    let bad = d.join("bad.onnx");
    let o = run(&[
        "quantize",
        decoder.to_str().unwrap(),
        "--calibrate",
        fixture("glow/latent.npy").to_str().unwrap(),
        "-o",
        bad.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("does not fit the model input"), "{err}");
    assert!(!bad.exists());
}

#[test]
fn quantize_never_overwrites_its_input_and_checks_its_calibration() {
    let d = scratch_dir("conv-safety");
    let model = d.join("m.onnx");
    std::fs::copy(fixture("eqmnv2_c4.onnx"), &model).unwrap();
    let before = std::fs::read(&model).unwrap();
    let clean = |o: &Output, needle: &str| {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(needle) && !err.contains("panicked"), "{needle}: {err}");
    };
    // -o naming the input (also through another spelling of the path), for INT8 and FP16.
    let same = d.join(".").join("m.onnx");
    for extra in [&[][..], &["--fp16"][..]] {
        let mut args = vec!["quantize", model.to_str().unwrap(), "-o", same.to_str().unwrap()];
        args.extend_from_slice(extra);
        clean(&run(&args), "the output is the input model");
    }
    assert_eq!(std::fs::read(&model).unwrap(), before, "the input is untouched");
    // A calibration tensor with a NaN, a percentile out of range, a percentile without data.
    let npy = d.join("nan.npy");
    let mut x = vec![0.5f32; 3 * 95 * 95];
    x[7] = f32::NAN;
    edgemed_runtime::formats::tensors::write_npy(&npy, &edgemed_runtime::ndarray::ArrayD::from_shape_vec(vec![1, 3, 95, 95], x).unwrap())
        .unwrap();
    let out = d.join("q.onnx");
    let (m, o, n) = (model.to_str().unwrap(), out.to_str().unwrap(), npy.to_str().unwrap());
    clean(&run(&["quantize", m, "-o", o, "--calibrate", n]), "calibration inputs must be finite numbers");
    clean(&run(&["quantize", m, "-o", o, "--calibrate", n, "--percentile", "150"]), "--percentile 150");
    clean(&run(&["quantize", m, "-o", o, "--percentile", "99.9"]), "--calibrate");
    assert!(!out.exists());
}

#[cfg(unix)]
#[test]
fn inspect_into_a_closed_pipe_ends_quietly() {
    use std::process::Stdio;
    // `edgemed inspect m.onnx | head -1`: the reader goes away after one line.
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgemed"))
        .args(["inspect", fixture("eqmnv2_c4.onnx").to_str().unwrap()])
        .current_dir(repo_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
}

/// Stderr of a run that must fail cleanly, naming `needle` in one line.
fn refused(o: &Output, needle: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success() && err.contains(needle) && !err.contains("panicked"), "{needle}: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

#[test]
fn quantize_checks_its_output_first_and_replaces_only_with_force() {
    let d = scratch_dir("conv-force");
    let (model, out) = (fixture("eqmnv2_c4.onnx"), d.join("q.onnx"));
    let (m, o) = (model.to_str().unwrap(), out.to_str().unwrap());
    // An earlier result is kept unless --force says otherwise.
    std::fs::write(&out, b"earlier").unwrap();
    refused(&run(&["quantize", m, "-o", o]), "q.onnx: already exists; pass --force");
    assert_eq!(std::fs::read(&out).unwrap(), b"earlier");
    let r = run(&["quantize", m, "-o", o, "--force"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(edgemed_runtime::model::OnnxModel::load(&out).unwrap().precision(), "INT8 (QDQ)");
    // The output is checked before the model is read: a missing folder is named, not the junk input.
    let junk = d.join("junk.onnx");
    std::fs::write(&junk, "not a model").unwrap();
    let err = refused(&run(&["quantize", junk.to_str().unwrap(), "-o", d.join("missing/q.onnx").to_str().unwrap()]), "does not exist");
    assert!(!err.contains("not a valid ONNX model"), "{err}");
    // The calibration inputs are inputs too; and the manifest's name is not the converter's to take.
    let npy = d.join("x.npy");
    std::fs::write(&npy, b"calibration").unwrap();
    refused(&run(&["quantize", m, "-o", npy.to_str().unwrap(), "--calibrate", npy.to_str().unwrap()]), "one of the inputs");
    refused(&run(&["quantize", m, "-o", d.join("edgemed-manifest.json").to_str().unwrap()]), "is the model manifest");
    assert_eq!(std::fs::read(&npy).unwrap(), b"calibration");
}

#[test]
fn exports_check_their_outputs_first_and_replace_only_with_force() {
    let d = scratch_dir("conv-export-force");
    let out = d.join("c4.onnx");
    let o = out.to_str().unwrap();
    let seeded = |extra: &[&str]| {
        let mut args = vec!["export", "eq-mobilenet-v2", "--seed", "2", "--width", "0.25", "-o", o];
        args.extend_from_slice(extra);
        run(&args)
    };
    assert!(seeded(&[]).status.success());
    let first = std::fs::read(&out).unwrap();
    refused(&seeded(&[]), "c4.onnx: already exists; pass --force");
    let r = seeded(&["--force"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), first, "the same seed writes the same model");
    // Checked before the weights are read: the existing output is named, not the missing weights.
    let err = refused(&run(&["export", "eq-mobilenet-v2", "--weights", "missing.safetensors", "-o", o]), "already exists");
    assert!(!err.contains("missing.safetensors"), "{err}");
    refused(&seeded(&["--force", "--save-weights", o]), "same file");
    let weights = fixture("espcn/espcn.safetensors");
    let w = weights.to_str().unwrap();
    refused(
        &run(&["export", "espcn3d", "--weights", w, "--save-weights", w, "-o", d.join("e.onnx").to_str().unwrap()]),
        "one of the inputs",
    );
    refused(&run(&["export", "unet", "--seed", "1", "-o", o]), "already exists");
    // The local-map rewrite: never over its input, nor an earlier result without --force.
    refused(&run(&["export", "--local-map", o, "-o", o, "--force"]), "one of the inputs");
    let map = d.join("map.onnx");
    std::fs::write(&map, b"earlier").unwrap();
    refused(&run(&["export", "--local-map", o, "-o", map.to_str().unwrap()]), "already exists");
    assert_eq!(std::fs::read(&map).unwrap(), b"earlier");
    let r = run(&["export", "--local-map", o, "-o", map.to_str().unwrap(), "--force"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

#[test]
fn aging_twin_export_writes_into_its_folder_once_unless_forced() {
    let d = scratch_dir("conv-twin-export");
    let dir = d.join("twin");
    let dir_arg = format!("{}/", dir.display());
    let twin = |extra: &[&str]| {
        let mut args = vec!["export", "aging-twin", "--seed", "3", "--grid", "8", "--levels", "2", "--steps", "1", "--width", "4"];
        args.extend_from_slice(&["--temporal-widths", "4,4", "--temporal-depths", "1,1", "-o", &dir_arg]);
        args.extend_from_slice(extra);
        run(&args)
    };
    let o = twin(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("twin/{encoder,decoder,temporal}.onnx") && !err.contains("//"), "{err}");
    refused(&twin(&[]), "encoder.onnx: already exists; pass --force");
    assert!(twin(&["--force"]).status.success());
    // A file is not a folder; a folder whose parent is missing is named before any work.
    std::fs::write(d.join("file"), b"x").unwrap();
    refused(&run(&["export", "aging-twin", "--seed", "1", "--output-dir", d.join("file").to_str().unwrap()]), "is a file");
    refused(&run(&["export", "aging-twin", "--seed", "1", "--output-dir", d.join("a/b").to_str().unwrap()]), "does not exist");
    // Weights saved into a folder the export makes.
    let new = d.join("new");
    let w = new.join("w.safetensors");
    let o = run(&[
        "export",
        "aging-twin",
        "--seed",
        "3",
        "--grid",
        "8",
        "--levels",
        "2",
        "--steps",
        "1",
        "--width",
        "4",
        "--temporal-widths",
        "4,4",
        "--temporal-depths",
        "1,1",
        "--save-weights",
        w.to_str().unwrap(),
        "--output-dir",
        new.to_str().unwrap(),
    ]);
    assert!(o.status.success() && w.exists() && new.join("temporal.onnx").exists(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn exports_need_weights_or_a_seed_and_refuse_contradicting_flags() {
    let d = scratch_dir("conv-export-source");
    let out = d.join("m.onnx");
    let o = out.to_str().unwrap();
    for arch in ["eq-mobilenet-v2", "unet", "espcn3d"] {
        refused(&run(&["export", arch, "-o", o]), &format!("export {arch} needs --weights FILE (trained weights) or --seed N"));
    }
    refused(&run(&["export", "aging-twin", "-o", o]), "export aging-twin needs --weights FILE");
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0, "nothing written");
    // The weights file's metadata says C4, width 0.5: a flag saying otherwise is refused, naming both.
    let bundled = repo_root().join("models/bundled/pcam-c4-demo.safetensors");
    let b = bundled.to_str().unwrap();
    let err = refused(&run(&["export", "eq-mobilenet-v2", "--weights", b, "--group-order", "8", "-o", o]), "--group-order 8");
    assert!(err.contains("group_order = 4"), "{err}");
    let err = refused(&run(&["export", "eq-mobilenet-v2", "--weights", b, "--width", "1", "-o", o]), "--width 1.0");
    assert!(err.contains("width = 0.5"), "{err}");
    let glow = fixture("glow/glow.safetensors");
    let err = refused(&run(&["export", "aging-twin", "--weights", glow.to_str().unwrap(), "--steps", "4", "-o", o]), "--steps 4");
    assert!(err.contains("steps = 2"), "{err}");
    assert!(!out.exists());
    // Flags that agree with the file are fine.
    let r = run(&["export", "eq-mobilenet-v2", "--weights", b, "--group-order", "4", "--width", "0.5", "-o", o]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

#[test]
fn export_alone_lists_every_architecture() {
    let o = run(&["export"]);
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(!o.status.success(), "{text}");
    for arch in ["eq-mobilenet-v2", "unet", "aging-twin", "espcn3d", "bagnet3d", "--local-map"] {
        assert!(text.contains(arch), "{arch} not listed: {text}");
    }
    let o = run(&["export", "-o", "x.onnx"]);
    refused(&o, "export needs an architecture (eq-mobilenet-v2, unet, aging-twin, espcn3d, bagnet3d) or --local-map");
}

#[test]
fn verbose_flags_log_without_timestamps() {
    let d = scratch_dir("conv-verbose");
    let m = fixture("eqmnv2_c4.onnx");
    let quantize = |flag: Option<&str>, out: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_edgemed"));
        c.env_remove("RUST_LOG").current_dir(repo_root());
        if let Some(f) = flag {
            c.arg(f);
        }
        c.args(["quantize", m.to_str().unwrap(), "-o", d.join(out).to_str().unwrap()]).output().unwrap()
    };
    let quiet = String::from_utf8_lossy(&quantize(None, "a.onnx").stderr).into_owned();
    assert!(!quiet.contains("INFO"), "warnings only by default: {quiet}");
    let o = quantize(Some("-v"), "b.onnx");
    let info = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{info}");
    let line = info.lines().find(|l| l.contains("recorded")).unwrap_or_else(|| panic!("-v logs at info: {info}"));
    assert!(line.starts_with("[INFO ") && !line.contains("Z "), "no timestamp: {line}");
    // -vv after the subcommand too (the flag is global).
    let o = Command::new(env!("CARGO_BIN_EXE_edgemed"))
        .env_remove("RUST_LOG")
        .args(["quantize", m.to_str().unwrap(), "-o", d.join("c.onnx").to_str().unwrap(), "-vv"])
        .output()
        .unwrap();
    let debug = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && debug.contains("[INFO "), "{debug}");
}

#[test]
fn inspect_and_verify_print_a_table_or_json() {
    let m = fixture("eqmnv2_c4.onnx");
    let m = m.to_str().unwrap();
    let json = |o: Output| -> serde_json::Value {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
    };
    // inspect: one object per table row, with the table's fields, and the model's totals.
    let table = run(&["inspect", m, "--format", "table"]);
    let rows = String::from_utf8_lossy(&table.stdout).lines().count() - 1;
    let v = json(run(&["inspect", m, "--format", "json"]));
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), rows);
    let dw = layers.iter().find(|l| l["layer"] == "blocks.3.dw.conv").unwrap();
    assert_eq!(dw["op"], "dw");
    assert!(dw["weight_shape"].is_array() && dw["bn_folded"]["max_over_min"].as_f64().unwrap() >= 1.0, "{dw}");
    assert!(dw["after_cle"]["median"].as_f64().unwrap() > 0.0, "{dw}");
    assert_eq!((v["field_size"].as_u64(), v["batch_norms_folded"].as_u64()), (Some(4), Some(52)));
    assert!(v["cle"]["triplets"].as_u64().unwrap() > 0 && v["model"].as_str().unwrap().ends_with("eqmnv2_c4.onnx"));
    assert_eq!(json(run(&["inspect", m, "--json"])), v, "--json is --format json");
    // verify: images through -i (repeatable; --inputs the old spelling), table or JSON.
    let q = fixture("eqmnv2_c4_qdq.onnx");
    let q = q.to_str().unwrap();
    let (a, b) = ("examples/data/pcam/patch_000.png", "examples/data/pcam/patch_001.png");
    let v = json(run(&["verify", m, q, "-i", a, "--input", b, "--format", "json"]));
    assert_eq!((v["inputs"].as_u64(), v["top1_compared"].as_u64()), (Some(2), Some(2)), "{v}");
    assert_eq!(json(run(&["verify", m, q, "--inputs", "examples/data/pcam", "--json"]))["inputs"], 100);
    let o = run(&["verify", m, q, "-i", a, "-i", b]);
    let text = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && text.contains("top-1 agreement  ") && text.contains("% (") && text.contains(" of 2)"), "{text}");
    assert!(!err.contains("random inputs") && !err.contains("model runs"), "no progress when stderr is not a terminal: {err}");
}

#[test]
fn an_edited_model_is_refused_until_edgemed_manifest_records_it_again() {
    use edgemed_onnx::pb;
    use edgemed_runtime::formats::manifest::{load_checked, IntegrityPolicy};
    use prost::Message;
    let d = scratch_dir("conv-reedit");
    let model = d.join("m.onnx");
    let o = run(&["quantize", fixture("eqmnv2_c4.onnx").to_str().unwrap(), "-o", model.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The README's recipe: merge a property into those the model has.
    let mut m = pb::ModelProto::decode(std::fs::read(&model).unwrap().as_slice()).unwrap();
    let kept = m.metadata_props.len();
    m.metadata_props.retain(|p| p.key != "edgemed.class_names");
    m.metadata_props.push(pb::StringStringEntryProto { key: "edgemed.class_names".into(), value: "benign,tumour".into() });
    std::fs::write(&model, m.encode_to_vec()).unwrap();
    let err = load_checked(&model, &IntegrityPolicy::default()).err().expect("the edited model is refused").to_string();
    assert!(err.contains("refused by the model manifest") && err.contains(&format!("`edgemed manifest {}`", model.display())), "{err}");
    let o = run(&["manifest", model.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = load_checked(&model, &IntegrityPolicy::default()).unwrap();
    assert_eq!(m.metadata.class_names, ["benign", "tumour"]);
    assert_eq!(m.proto.metadata_props.len(), kept, "the other properties kept");
}
