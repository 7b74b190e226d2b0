//! `edgemed-run brain-age` as a user runs it: the MNI152 template (the 3 mm copy in
//! tests/fixtures/bagnet3d, resampled to 1 mm by the command) and a small seeded
//! 3-D BagNet-9 local-map model (scripts/make-fixtures.sh): the maps, the overlay and the
//! summaries are written, say what made them, and are not overwritten without --force.

use edgemed_runtime::formats::{image_out, volume};
use edgemed_tests::{assert_clean_failure, fixture, repo_root, scratch_dir};

fn run(args: &[&str]) -> std::process::Output {
    edgemed_tests::command(env!("CARGO_BIN_EXE_edgemed-run")).args(args).current_dir(repo_root()).output().expect("runs edgemed-run")
}

#[test]
fn brain_age_writes_maps_overlay_and_summaries_that_say_what_made_them() {
    let dir = scratch_dir("brain-age-cli");
    let out = dir.join("subject");
    let (t1, model) = (fixture("bagnet3d/mni152_t1_3mm.nii.gz"), fixture("bagnet3d/b9_running.map.onnx"));
    let args =
        ["brain-age", t1.to_str().unwrap(), "-m", model.to_str().unwrap(), "--output-dir", out.to_str().unwrap(), "--format", "json"];
    let o = run(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(summary["receptive_field"], 9);
    assert!(summary["age"].as_f64().is_some_and(f64::is_finite), "{summary}");
    assert!(summary["sex_prob_1"].as_f64().is_some_and(|p| (0.0..=1.0).contains(&p)), "{summary}");
    assert_eq!(summary["grid_1mm"], serde_json::json!([195, 231, 189]));
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(saved, summary);
    let sha = edgemed_runtime::formats::provenance::sha256_hex(&std::fs::read(&model).unwrap());
    assert_eq!(summary["made_by"]["model_sha256"], sha.as_str());
    for map in ["age_map.nii.gz", "sex_map.nii.gz"] {
        let v = volume::Volume::read(&out.join(map), 0);
        // NaN outside the mask: the reader refuses non-finite voxels, so read the record and the header only.
        assert!(v.is_err(), "{map}: NaN outside the brain");
        assert_eq!(volume::read_provenance(&out.join(map)).unwrap().unwrap().model_sha256, sha, "{map}");
    }
    let png = std::fs::read(out.join("overlay.png")).unwrap();
    assert_eq!(image_out::png_record(&png).unwrap().unwrap().model_sha256, sha);
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    assert!(csv.lines().next().unwrap().ends_with("model,model_version,model_sha256,backend,settings,edgemed,time"), "{csv}");
    // A second run keeps the first one's files unless --force.
    let before = std::fs::read(out.join("summary.json")).unwrap();
    assert_clean_failure(&run(&args), "already exists; pass --force");
    assert_eq!(std::fs::read(out.join("summary.json")).unwrap(), before);
    let forced: Vec<&str> = args.iter().copied().chain(["--force"]).collect();
    assert!(run(&forced).status.success());
    let _ = std::fs::remove_dir_all(&dir);
}
