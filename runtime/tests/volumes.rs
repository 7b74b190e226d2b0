//! `edgemed-run segment` as a user meets it: a NIfTI volume in, a label map with the
//! same affine out (equal to MONAI's argmax + KeepLargestConnectedComponent on MONAI's
//! sliding-window output, fixtures from scripts/make_unet_fixtures.py), and a clear
//! one-line error for every bad volume: not NIfTI, 4-D, NaN voxels, missing, wrong
//! output name. Volumes smaller than the window are padded as MONAI pads them (the
//! fixture's z is 28 for a 32 window).

use std::path::{Path, PathBuf};
use std::process::Output;

use edgemed_runtime::formats::volume::Volume;
use edgemed_runtime::ndarray::{Array, Array3, IxDyn};
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

fn unet() -> PathBuf {
    fixture("unet/unet3d.onnx")
}

fn segment(input: &Path, output: &Path, extra: &[&str]) -> Output {
    let model = unet();
    let mut args = vec!["segment", s(input), "-o", s(output), "-m", s(&model)];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn segments_like_monai_and_keeps_the_affine() {
    let dir = scratch_dir("segment-monai");
    let out = dir.join("seg.nii.gz");
    let o = segment(
        &fixture("unet/volume.nii.gz"),
        &out,
        &["--blend", "gaussian", "--overlap", "0.5", "--label", s(&fixture("unet/label.nii.gz"))],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("Dice"), "{text}");
    let seg = Volume::read(&out, 0).unwrap();
    let input = Volume::read(&fixture("unet/volume.nii.gz"), 0).unwrap();
    assert_eq!(seg.affine(), input.affine());
    assert_eq!(seg.header.datatype, 2, "uint8 label map");
    let expected = edgemed_runtime::formats::tensors::read_npy_u8(&fixture("unet/seg_gaussian_o50_lcc.npy")).unwrap();
    let ours: Vec<u8> = seg.data.iter().map(|&v| v as u8).collect();
    let differ = ours.iter().zip(expected.iter()).filter(|(a, b)| a != b).count();
    assert_eq!(differ, 0, "{differ} voxels differ from MONAI's argmax + KeepLargestConnectedComponent");
    // Written through a temporary file: nothing else is left in the folder.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
}

fn write_volume(path: &Path, shape: &[usize], data: Vec<f32>) {
    let arr = Array::from_shape_vec(IxDyn(shape), data).unwrap();
    nifti::writer::WriterOptions::new(path).write_nifti(&arr).unwrap();
}

#[test]
fn bad_volumes_are_one_clear_line() {
    let dir = scratch_dir("segment-bad");
    let out = dir.join("seg.nii.gz");

    let not_nifti = dir.join("notes.nii.gz");
    std::fs::write(&not_nifti, b"this is not a volume").unwrap();
    assert_clean_failure(&segment(&not_nifti, &out, &[]), "not a NIfTI-1 file");

    let four_d = dir.join("series.nii");
    write_volume(&four_d, &[8, 8, 8, 3], vec![0.0; 8 * 8 * 8 * 3]);
    assert_clean_failure(&segment(&four_d, &out, &[]), "a 3-D volume is expected");

    let mut data = vec![0.5f32; 10 * 9 * 8];
    data[17] = f32::NAN;
    let nan = dir.join("nan.nii");
    write_volume(&nan, &[10, 9, 8], data);
    assert_clean_failure(&segment(&nan, &out, &[]), "NaN");

    assert_clean_failure(&segment(&dir.join("missing.nii.gz"), &out, &[]), "no such file");
    assert_clean_failure(&segment(&fixture("unet/volume.nii.gz"), &dir.join("seg.png"), &[]), ".nii or .nii.gz");
    assert_clean_failure(&segment(&fixture("unet/volume.nii.gz"), &out, &["--roi", "16,16,16"]), "fixed at 32");
    assert_clean_failure(&segment(&fixture("unet/volume.nii.gz"), &out, &["--overlap", "1.0"]), "overlap");
    assert_clean_failure(&segment(&fixture("unet/volume.nii.gz"), &out, &["--blend", "median"]), "blend");
    // A reference label map of another shape, a 2-D image classifier, a window of the wrong rank.
    let small = dir.join("small_label.nii");
    write_volume(&small, &[10, 9, 8], vec![0.0; 10 * 9 * 8]);
    assert_clean_failure(&segment(&fixture("unet/volume.nii.gz"), &out, &["--label", s(&small)]), "label map is [10, 9, 8]");
    let classifier = repo_root().join("models/bundled/pcam-c4-demo.onnx");
    let o = run(&["segment", s(&fixture("unet/volume.nii.gz")), "-o", s(&out), "-m", s(&classifier)]);
    assert_clean_failure(&o, "3 channels");
    assert_clean_failure(&segment(&fixture("unet/volume.nii.gz"), &out, &["--roi", "32,32"]), "--roi has 2 sizes");
    assert!(!out.exists(), "no output after a failure");
}

#[test]
fn a_volume_smaller_than_the_window_is_padded() {
    // 20 x 15 x 9 against a 32^3 window: MONAI pads (6, 6), (8, 9), (11, 12) and crops back.
    let dir = scratch_dir("segment-small");
    let input = dir.join("small.nii");
    write_volume(&input, &[20, 15, 9], (0..20 * 15 * 9).map(|i| ((i % 17) as f32 / 17.0) - 0.5).collect());
    let out = dir.join("seg.nii");
    let o = segment(&input, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let seg = Volume::read(&out, 0).unwrap();
    assert_eq!(seg.shape(), [20, 15, 9]);
    let _: &Array3<f32> = &seg.data;
}

#[test]
fn upsamples_by_the_models_rate_with_a_matching_affine() {
    let dir = scratch_dir("upsample");
    let out = dir.join("hr.nii.gz");
    let model = fixture("espcn/espcn3d_p8.onnx");
    let input = fixture("unet/volume.nii.gz");
    let o = run(&["upsample", s(&input), "-o", s(&out), "-m", s(&model)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lr = Volume::read(&input, 0).unwrap();
    let hr = Volume::read(&out, 0).unwrap();
    assert_eq!(hr.shape(), [90, 76, 56]);
    // Output voxel i' sits at input voxel (i' + 0.5) / 2 - 0.5: same extent, half the spacing.
    let (a, b) = (lr.affine(), hr.affine());
    for r in 0..3 {
        for c in 0..3 {
            assert!((b[r][c] - a[r][c] / 2.0).abs() < 1e-6, "{b:?}");
        }
        let origin = a[r][3] - 0.25 * (a[r][0] + a[r][1] + a[r][2]);
        assert!((b[r][3] - origin).abs() < 1e-4, "{b:?}");
    }
    assert_eq!(hr.spacing(), [0.4, 0.45, 0.75]);
    // A model that is not an upsampling model is refused by name.
    let o = run(&["upsample", s(&input), "-o", s(&out), "-m", s(&unet())]);
    assert_clean_failure(&o, "not an upsampling model");
}
