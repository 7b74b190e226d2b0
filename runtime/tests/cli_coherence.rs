//! edgemed-run as one coherent tool: earlier results are never overwritten without
//! --force, every result file records what made it (and --resume refuses another
//! model's file), every command that prints results can print them for a program,
//! and the smaller things a new user trips over (labels, info on 3-D models, broken
//! pipes, doubled error text, gzipped .nii).

use std::path::Path;
use std::process::Output;

use edgemed_runtime::formats::{image_out, volume};
use edgemed_tests::{assert_clean_failure, fixture, repo_root, scratch_dir};

fn run(args: &[&str]) -> Output {
    edgemed_tests::command(env!("CARGO_BIN_EXE_edgemed-run")).args(args).current_dir(repo_root()).output().expect("runs edgemed-run")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The SHA-256 the converter recorded for a bundled file in its manifest (an
/// independent record of the file's hash).
fn manifest_sha256(file: &str) -> String {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("models/bundled/edgemed-manifest.json")).unwrap()).unwrap();
    let entries = m["models"].as_array().or(m.as_array()).expect("a list of models");
    entries.iter().find(|e| e["file"] == file).expect("listed")["sha256"].as_str().unwrap().to_string()
}

#[test]
fn existing_outputs_are_kept_unless_force() {
    let dir = scratch_dir("coherence-force");
    let out = dir.join("r.csv");
    std::fs::write(&out, "an earlier result\n").unwrap();
    let o = run(&["classify", "examples/data/pcam", "-o", s(&out)]);
    assert_clean_failure(&o, "already exists; pass --force");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "an earlier result\n");
    // (10 patches: CI runs this under an emulator.)
    let o = run(&["classify", "examples/data/pcam/patch_00*.png", "-o", s(&out), "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 11);

    // An interrupted run's partial file is neither restarted nor continued silently.
    let out2 = dir.join("r2.jsonl");
    std::fs::write(dir.join("r2.jsonl.partial"), "").unwrap();
    assert_clean_failure(&run(&["classify", "examples/data/pcam", "-o", s(&out2)]), "pass --resume to continue it, or --force");

    // The volume commands and heatmap likewise, checked before any work.
    let unet = fixture("unet/unet3d.onnx");
    let seg = dir.join("seg.nii.gz");
    std::fs::write(&seg, b"x").unwrap();
    let o = run(&["segment", s(&fixture("unet/volume.nii.gz")), "-o", s(&seg), "-m", s(&unet)]);
    assert_clean_failure(&o, "already exists");
    assert_eq!(std::fs::read(&seg).unwrap(), b"x");
    let region = dir.join("region.png");
    image::RgbImage::new(120, 120).save(&region).unwrap();
    std::fs::write(dir.join("map.json"), b"{}").unwrap();
    assert_clean_failure(&run(&["heatmap", s(&region), "-o", s(&dir.join("map.png"))]), "map.json: already exists");
    let host = dir.join("host");
    let model = fixture("eqmnv2_c4.onnx");
    let input = fixture("eqmnv2_c4.input.f32");
    assert!(run(&["run", s(&model), "--input", s(&input), "--output-dir", s(&host)]).status.success());
    assert_clean_failure(&run(&["run", "-m", s(&model), "--input", s(&input), "--output-dir", s(&host)]), "already exists");
    assert!(run(&["run", "-m", s(&model), "--input", s(&input), "--output-dir", s(&host), "--force"]).status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn results_record_what_made_them_and_resume_refuses_another_model() {
    let dir = scratch_dir("coherence-provenance");
    let fp32 = "models/bundled/pcam-c4-demo.onnx";
    // 20 patches: CI runs this under an emulator, where tract's FP32 model takes about
    // 80 ms a patch.
    let patches = "examples/data/pcam/patch_0[01]*.png";
    let out = dir.join("r.jsonl");
    let o = run(&["--backend", "tract", "classify", patches, "-m", fp32, "-o", s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 20);
    let sha = manifest_sha256("pcam-c4-demo.onnx");
    for r in &rows {
        assert_eq!(r["model"], "pcam-c4-demo.onnx");
        assert_eq!(r["model_sha256"], sha.as_str());
        assert_eq!(r["backend"], "tract (cpu)");
        assert_eq!(r["edgemed"], env!("CARGO_PKG_VERSION"));
        assert!(r["settings"].as_str().unwrap().contains("crop=95"), "{r}");
        let t = r["time"].as_str().unwrap();
        assert!(t.len() == 20 && t.ends_with('Z') && t.as_bytes()[10] == b'T', "RFC 3339 UTC: {t}");
    }

    // Interrupted after 8 rows; resuming with the INT8 model (or another backend) would
    // mix two models' answers in one file: refused, and the file is left as it was.
    let text = std::fs::read_to_string(&out).unwrap();
    let partial = dir.join("r.jsonl.partial");
    let cut: String = text.lines().take(8).map(|l| format!("{l}\n")).collect();
    std::fs::write(&partial, &cut).unwrap();
    std::fs::remove_file(&out).unwrap();
    let o = run(&["classify", patches, "-o", s(&out), "--resume"]);
    assert_clean_failure(&o, "resuming would mix two runs' answers");
    assert!(stderr(&o).contains("pcam-c4-demo.onnx") && stderr(&o).contains("pcam-c4-demo-int8"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&partial).unwrap(), cut);
    let o = run(&["--backend", "tract", "classify", patches, "-m", fp32, "-o", s(&out), "--resume"]);
    assert!(o.status.success() && stderr(&o).contains("8 of 20"), "{}", stderr(&o));

    // CSV: the same record in named columns; a table in a file says it on its first line.
    let csv = dir.join("r.csv");
    assert!(run(&["classify", patches, "-o", s(&csv)]).status.success());
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().next().unwrap(), "file,probability,class,error,model,model_version,model_sha256,backend,settings,edgemed,time");
    let int8_sha = manifest_sha256("pcam-c4-demo-int8.onnx");
    assert!(text.lines().nth(1).unwrap().contains(&format!(",{int8_sha},edgemed-int8 (cpu),")), "{text}");
    let table = dir.join("r.txt");
    assert!(run(&["classify", patches, "-o", s(&table)]).status.success());
    let first = std::fs::read_to_string(&table).unwrap().lines().next().unwrap().to_string();
    assert!(first.starts_with("# <bundled pcam-c4-demo-int8>") && first.contains(&int8_sha), "{first}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn volumes_and_maps_record_what_made_them_and_summaries_are_json() {
    let dir = scratch_dir("coherence-volumes");
    let unet = fixture("unet/unet3d.onnx");
    let seg = dir.join("seg.nii.gz");
    let o = run(&["segment", s(&fixture("unet/volume.nii.gz")), "-o", s(&seg), "-m", s(&unet), "--format", "json", "--threads", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object on stdout");
    assert_eq!(summary["volume"]["shape"], serde_json::json!([45, 38, 28]));
    assert!(summary["classes"].as_array().is_some_and(|c| !c.is_empty()), "{summary}");
    let made_by = volume::read_provenance(&seg).unwrap().expect("a record in the NIfTI extension");
    assert_eq!(made_by.model, "unet3d.onnx");
    assert_eq!(summary["made_by"]["model_sha256"], made_by.model_sha256.as_str());
    let sha = edgemed_runtime::formats::provenance::sha256_hex(&std::fs::read(&unet).unwrap());
    assert_eq!(made_by.model_sha256, sha);
    // The short form in the 80-byte description, for viewers that show only that.
    let header = nifti::NiftiHeader::from_file(&seg).unwrap();
    let descrip = String::from_utf8_lossy(&header.descrip);
    assert!(descrip.starts_with(&format!("edgemed {} unet3d.onnx sha256:{}", env!("CARGO_PKG_VERSION"), &sha[..12])), "{descrip}");

    let up = dir.join("up.nii");
    let o =
        run(&["upsample", s(&fixture("unet/volume.nii.gz")), "-o", s(&up), "-m", s(&fixture("espcn/espcn3d_p8.onnx")), "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["upsampled"]["shape"], serde_json::json!([90, 76, 56]));
    assert_eq!(volume::read_provenance(&up).unwrap().unwrap().model, "espcn3d_p8.onnx");

    // heatmap: the overlay carries the record, the summary goes beside the map as JSON.
    let region = dir.join("region.png");
    image::RgbImage::from_fn(150, 130, |x, y| image::Rgb([(x * 2) as u8, (y * 2) as u8, 128])).save(&region).unwrap();
    let map = dir.join("map.png");
    let o = run(&["heatmap", s(&region), "-o", s(&map), "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let printed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("map.json")).unwrap()).unwrap();
    assert_eq!(printed, saved);
    let npy: edgemed_runtime::ndarray::Array2<f32> = ndarray_npy::read_npy(dir.join("map.npy")).unwrap();
    assert_eq!(
        [saved["map"]["rows"].as_u64().unwrap() as usize, saved["map"]["cols"].as_u64().unwrap() as usize],
        [npy.nrows(), npy.ncols()]
    );
    let record = image_out::png_record(&std::fs::read(&map).unwrap()).unwrap().expect("a record in the PNG");
    assert_eq!(serde_json::to_value(&record).unwrap(), saved["made_by"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn labels_give_accuracy_sensitivity_specificity_and_auc() {
    let o = run(&["classify", "examples/data/pcam", "--format", "json", "--labels", "examples/data/pcam/labels.csv"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The same scores computed here from the rows and the labels, pair by pair for the AUC.
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let labels = std::fs::read_to_string(repo_root().join("examples/data/pcam/labels.csv")).unwrap();
    let truth: std::collections::HashMap<&str, bool> =
        labels.lines().skip(1).map(|l| l.split_once(',').unwrap()).map(|(f, y)| (f, y.trim() == "1")).collect();
    // (probability, called positive, is positive)
    type Scored = (f64, bool, bool);
    let scored: Vec<Scored> = rows
        .iter()
        .map(|r| {
            let file = Path::new(r["file"].as_str().unwrap()).file_name().unwrap().to_str().unwrap().to_string();
            (r["probability"].as_f64().unwrap(), r["class_index"] == 1, truth[file.as_str()])
        })
        .collect();
    let pos: Vec<&Scored> = scored.iter().filter(|s| s.2).collect();
    let neg: Vec<&Scored> = scored.iter().filter(|s| !s.2).collect();
    let acc = scored.iter().filter(|s| s.1 == s.2).count() as f64 / scored.len() as f64;
    let sens = pos.iter().filter(|s| s.1).count() as f64 / pos.len() as f64;
    let spec = neg.iter().filter(|s| !s.1).count() as f64 / neg.len() as f64;
    let mut wins = 0.0;
    for p in &pos {
        for n in &neg {
            wins += if p.0 > n.0 {
                1.0
            } else if p.0 == n.0 {
                0.5
            } else {
                0.0
            };
        }
    }
    let auc = wins / (pos.len() * neg.len()) as f64;
    let e = stderr(&o);
    let expected = format!("accuracy {acc:.4}  sensitivity {sens:.4}  specificity {spec:.4}  AUC {auc:.4}");
    assert!(e.contains(&expected), "expected {expected:?} in\n{e}");
    assert!(e.contains(&format!("scored 100 patches against examples/data/pcam/labels.csv ({} metastatic)", pos.len())), "{e}");
    // A labels file that names no class the model knows is one clear line.
    let dir = scratch_dir("coherence-labels");
    let bad = dir.join("labels.csv");
    std::fs::write(&bad, "file,label\npatch_000.png,tumour\n").unwrap();
    assert_clean_failure(
        &run(&["classify", "examples/data/pcam", "--labels", s(&bad)]),
        "neither a class index nor one of normal, metastatic",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_rows_are_machine_readable_and_count_macs_of_float_models() {
    let fp32 = "models/bundled/pcam-c4-demo.onnx";
    let o = run(&["--backend", "tract", "bench", "-m", fp32, "--iters", "2", "--warmup", "0", "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let row: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(row["backend"], "tract");
    assert_eq!(row["batch"], 1);
    assert!(row["mmac"].as_f64().is_some_and(|m| m > 1.0), "a float model's MACs are counted: {row}");
    assert!(row["peak_rss_mib"].as_f64().is_some_and(|m| m > 1.0), "{row}");
    // The same convolutions counted on the INT8 version (integer ops) as on the float one.
    let o = run(&["bench", "-m", "models/bundled/pcam-c4-demo-int8.onnx", "--iters", "1", "--warmup", "0", "--format", "json"]);
    let int8: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    assert!((int8["mmac"].as_f64().unwrap() - row["mmac"].as_f64().unwrap()).abs() < 1e-3, "{int8} vs {row}");
    let o = run(&["--backend", "tract", "bench", fp32, "--iters", "2", "--warmup", "0", "--format", "csv"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("model,backend,device,batch,p50_ms"));
    assert_eq!(lines.next().unwrap().split(',').count(), 13);
    assert_clean_failure(&run(&["bench", fp32, "--iters", "0"]), "--iters");
    // --shape gives the sizes after the batch (for dynamic models), checked against the model's rank.
    let o = run(&["--backend", "tract", "bench", fp32, "--iters", "1", "--warmup", "0", "--shape", "3,95,95", "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_clean_failure(&run(&["bench", fp32, "--shape", "3,95"]), "give 3 sizes after the batch");
}

#[test]
fn info_describes_each_kind_of_model_and_prints_json() {
    let o = run(&["info", "-m", s(&fixture("unet/unet3d.onnx"))]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("3-D segmentation network (segment)") && text.contains("sliding window"), "{text}");
    assert!(!text.contains("metastatic") && !text.contains("patch 96x96"), "no PCam pipeline for a 3-D model:\n{text}");
    let o = run(&["info", s(&fixture("espcn/espcn3d_p8.onnx")), "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["kind"], "3-D upsampling patch model (upsample)");
    let o = run(&["info"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("2-D patch classifier") && text.contains("metastatic"), "{text}");
}

#[test]
fn small_things_a_user_trips_over() {
    // A broken pipe ends quietly.
    let bin = env!("CARGO_BIN_EXE_edgemed-run");
    // Under an emulator (scripts/test-arm.sh) the binary runs through it, as edgemed_tests::command does.
    let runner = std::env::var("EDGEMED_RUNNER").unwrap_or_default();
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{runner} '{bin}' classify examples/data/pcam | head -1"))
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    // A folder where a file is expected: one reason, said once.
    let o = run(&["info", "examples"]);
    assert_clean_failure(&o, "examples: Is a directory");
    assert_eq!(stderr(&o).matches("Is a directory").count(), 1, "{}", stderr(&o));
    // A file that is not a volume: a reason a person reads, not a debug dump.
    let dir = scratch_dir("coherence-gz");
    let junk = dir.join("junk.nii");
    std::fs::write(&junk, b"not a volume").unwrap();
    let o = run(&["segment", s(&junk), "-o", s(&dir.join("seg.nii")), "-m", s(&fixture("unet/unet3d.onnx"))]);
    assert_clean_failure(&o, "junk.nii: not a usable volume: not a NIfTI-1 file: the file ends too early");
    assert!(!stderr(&o).contains("Io(") && !stderr(&o).contains("kind:"), "{}", stderr(&o));
    // A gzipped volume named .nii is read by its content.
    let misnamed = dir.join("volume.nii");
    std::fs::copy(fixture("unet/volume.nii.gz"), &misnamed).unwrap();
    let v = volume::Volume::read(&misnamed, 0).unwrap();
    assert_eq!(v.shape(), volume::Volume::read(&fixture("unet/volume.nii.gz"), 0).unwrap().shape());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn models_with_two_inputs_run_and_bench() {
    use edgemed_onnx::builder::{save, GraphBuilder, D};
    use edgemed_runtime::formats::tensors;
    use edgemed_runtime::ndarray::ArrayD;
    // y = relu(a) + 2 b, with a and b of [batch, 3, 4, 4].
    let dir = scratch_dir("coherence-two-inputs");
    let mut g = GraphBuilder::new("two_inputs");
    let dims = [D::Sym("batch"), D::N(3), D::N(4), D::N(4)];
    g.input_f32("a", &dims);
    g.input_f32("b", &dims);
    let two = g.init_f32("two", &[1], &[2.0]);
    g.node("Relu", "r", &["a"], vec![]);
    g.node("Mul", "t", &["b", &two], vec![]);
    g.node("Add", "y", &["r", "t"], vec![]);
    g.output_f32("y", &dims);
    let model = dir.join("two.onnx");
    save(&g.into_model("test", &[]), &model).unwrap();
    let a: Vec<f32> = (0..96).map(|i| (i as f32 - 40.0) / 7.0).collect();
    let b: Vec<f32> = (0..96).map(|i| (i % 11) as f32 * 0.25).collect();
    let (pa, pb) = (dir.join("a.npy"), dir.join("b.npy"));
    tensors::write_npy(&pa, &ArrayD::from_shape_vec(vec![2, 3, 4, 4], a.clone()).unwrap()).unwrap();
    tensors::write_npy(&pb, &ArrayD::from_shape_vec(vec![2, 3, 4, 4], b.clone()).unwrap()).unwrap();
    let expected: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x.max(0.0) + 2.0 * y).collect();
    let mut backends = vec!["tract"];
    if edgemed_tests::ort_library().is_some() {
        backends.push("ort");
    }
    for backend in backends {
        let out = dir.join(format!("out-{backend}"));
        let o = run(&["--backend", backend, "run", s(&model), "-i", s(&pa), "-i", s(&pb), "--output-dir", s(&out)]);
        assert!(o.status.success(), "{backend}: {}", stderr(&o));
        let y = tensors::read_npy(&out.join("y.npy")).unwrap();
        assert_eq!(y.shape(), &[2, 3, 4, 4]);
        assert_eq!(y.iter().copied().collect::<Vec<f32>>(), expected, "{backend}");
        let o = run(&["--backend", backend, "bench", s(&model), "--iters", "2", "--warmup", "0", "--batch", "1,2", "--format", "json"]);
        assert!(o.status.success(), "{backend}: {}", stderr(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 2);
    }
    // One input for two, and the INT8 engine (one input only): one clear line each.
    assert_clean_failure(&run(&["run", s(&model), "-i", s(&pa), "--output-dir", s(&dir.join("x"))]), "the model takes 2 inputs (a, b)");
    let o = run(&["--backend", "int8", "run", s(&model), "-i", s(&pa), "-i", s(&pb), "--output-dir", s(&dir.join("y"))]);
    assert_clean_failure(&o, "runs models with one");
    let _ = std::fs::remove_dir_all(&dir);
}
