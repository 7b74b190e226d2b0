//! `edgemed-run age` as a user meets it: a NIfTI volume in, the aged volume of every
//! year out on the twin's grid, placed in the input's scanner space, the tracked band
//! per year on stdout; one clear line for a missing or mixed-up twin, zero years, a
//! bad band, a bad output name, NaN voxels, and no file written then. The twin is
//! tests/fixtures/twin_tiny (see tests/tests/glow.rs for how it is made and checked;
//! the numbers of the pipeline are checked against numpy there).

use std::path::Path;
use std::process::Output;

use edgemed_runtime::formats::volume::{self, Volume};
use edgemed_runtime::ndarray::{Array, IxDyn};
use edgemed_tests::{assert_clean_failure, fixture, repo_root, scratch_dir};

fn run(args: &[&str]) -> Output {
    edgemed_tests::command(env!("CARGO_BIN_EXE_edgemed-run")).args(args).current_dir(repo_root()).output().expect("runs edgemed-run")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn age_writes_every_year_on_the_grid_in_scanner_space() {
    let dir = scratch_dir("age-ok");
    let out = dir.join("aged.nii.gz");
    let input = fixture("unet/volume.nii.gz");
    let twin = fixture("twin_tiny");
    let args = [
        "age",
        s(&input),
        "-o",
        s(&out),
        "-m",
        s(&twin),
        "--years",
        "3",
        "--every-year",
        "--crop-box",
        "40,32,24",
        "--track",
        "organ:0.5:1.5",
    ];
    let o = run(&args);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for line in ["year      organ mL     change", "0 ", "1 ", "2 ", "3 ", "wrote        "] {
        assert!(text.lines().any(|l| l.starts_with(line)), "no line starting {line:?} in\n{text}");
    }
    let src = Volume::read(&input, 0).unwrap();
    for name in ["aged_year1.nii.gz", "aged_year2.nii.gz", "aged.nii.gz"] {
        let v = Volume::read(&dir.join(name), 0).unwrap();
        assert_eq!(v.shape(), [8, 8, 8], "{name}");
        // The grid spans the 40x32x24 crop: 5x4x3 input voxels per grid voxel.
        let (a, b) = (v.affine(), src.affine());
        for (d, step) in [5.0, 4.0, 3.0].iter().enumerate() {
            assert!((a[d][d] - b[d][d] * step).abs() < 1e-4, "{name}: axis {d}: {a:?} vs {b:?}");
        }
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3, "three years, no temporary file left");
    // The volumes say what made them.
    let made_by = volume::read_provenance(&out).unwrap().expect("a provenance record");
    assert!(made_by.settings.contains("years=3") && made_by.model_sha256.len() == 64, "{made_by:?}");
    // An existing output is kept unless --force.
    let first = Volume::read(&out, 0).unwrap();
    let before = std::fs::read(&out).unwrap();
    let o = run(&args);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--force"));
    assert_eq!(std::fs::read(&out).unwrap(), before);
    // Same input, same twin: the same voxels, header and record (but for the time it ran).
    let forced: Vec<&str> = args.iter().copied().chain(["--force"]).collect();
    assert!(run(&forced).status.success());
    let again = Volume::read(&out, 0).unwrap();
    assert_eq!(again.data, first.data);
    assert_eq!(again.affine(), first.affine());
    let mut rerun = volume::read_provenance(&out).unwrap().unwrap();
    rerun.time = made_by.time.clone();
    assert_eq!(rerun, made_by);
}

#[test]
fn bad_requests_are_one_clear_line_and_write_nothing() {
    let dir = scratch_dir("age-bad");
    let out = dir.join("aged.nii.gz");
    let input = fixture("unet/volume.nii.gz");
    let twin = fixture("twin_tiny");
    let age = |input: &Path, out: &Path, twin: &Path, extra: &[&str]| {
        let mut args = vec!["age", s(input), "-o", s(out), "-m", s(twin)];
        args.extend_from_slice(extra);
        run(&args)
    };
    assert_clean_failure(&age(&input, &out, &dir.join("nowhere"), &["--years", "1"]), "expected the aging twin's directory");
    assert_clean_failure(&age(&input, &out, &twin, &["--years", "0"]), "--years must be at least 1");
    assert_clean_failure(&age(&input, &out, &twin, &["--years", "1", "--track", "csf:95:80"]), "expected NAME:LO:HI");
    assert_clean_failure(&age(&input, &dir.join("aged.png"), &twin, &["--years", "1"]), ".nii or .nii.gz");
    assert_clean_failure(&age(&input, &out, &twin, &["--years", "1", "--crop-box", "4,4"]), "--crop-box takes one size or three");
    // The old spelling still works (a hidden alias).
    assert_clean_failure(&age(&input, &out, &twin, &["--years", "1", "--crop", "4,4"]), "--crop-box takes one size or three");

    // A twin whose decoder is some other model.
    let mixed = dir.join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    for f in ["encoder.onnx", "temporal.onnx"] {
        std::fs::copy(twin.join(f), mixed.join(f)).unwrap();
    }
    std::fs::copy(fixture("unet/unet3d.onnx"), mixed.join("decoder.onnx")).unwrap();
    assert_clean_failure(&age(&input, &out, &mixed, &["--years", "1"]), "not the decoder of an aging twin");
    std::fs::copy(twin.join("encoder.onnx"), mixed.join("decoder.onnx")).unwrap();
    assert_clean_failure(&age(&input, &out, &mixed, &["--years", "1"]), "expected glow3d_decoder");

    let mut data = vec![0.5f32; 10 * 9 * 8];
    data[3] = f32::NAN;
    let nan = dir.join("nan.nii");
    nifti::writer::WriterOptions::new(&nan).write_nifti(&Array::from_shape_vec(IxDyn(&[10, 9, 8]), data).unwrap()).unwrap();
    assert_clean_failure(&age(&nan, &out, &twin, &["--years", "1"]), "NaN");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 2, "only the mixed twin and the NaN volume: {left:?}");
}
