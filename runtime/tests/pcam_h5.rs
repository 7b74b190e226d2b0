//! PCam HDF5 input (feature `pcam-h5`). The fixture tests/fixtures/pcam_tiny_x.h5
//! holds examples/data/pcam/patch_000..003.png in PCam's layout (uint8
//! [N, 96, 96, 3], gzip, one patch per chunk), so its results must equal the PNGs'.
#![cfg(feature = "pcam-h5")]

use std::path::{Path, PathBuf};

use edgemed_runtime::formats::patch::{expand_inputs, PatchSource};
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::tasks::classify::{Classifier, ClassifierOptions};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

#[test]
fn h5_patches_classify_like_their_pngs() {
    let model = OnnxModel::from_bytes("bundled", edgemed_runtime::BUNDLED_MODEL).unwrap();
    let clf = Classifier::new(&model, &ClassifierOptions { batch: 3, ..Default::default() }).unwrap();
    let h5 = expand_inputs(&[root().join("tests/fixtures/pcam_tiny_x.h5")]).unwrap();
    assert_eq!(h5.len(), 4);
    assert!(matches!(&h5[3], PatchSource::H5 { index: 3, .. }));
    let pngs: Vec<PatchSource> = (0..4).map(|i| PatchSource::File(root().join(format!("examples/data/pcam/patch_{i:03}.png")))).collect();
    let mut a = Vec::new();
    let mut b = Vec::new();
    clf.classify(&h5, |r| a.push(r.outcome.unwrap().probability)).unwrap();
    clf.classify(&pngs, |r| b.push(r.outcome.unwrap().probability)).unwrap();
    assert_eq!(a, b);
}

#[test]
fn a_file_that_is_not_hdf5_is_refused() {
    let p = std::env::temp_dir().join(format!("edgemed-not-{}.h5", std::process::id()));
    std::fs::write(&p, b"plain text").unwrap();
    let err = expand_inputs(std::slice::from_ref(&p)).unwrap_err().to_string();
    std::fs::remove_file(&p).unwrap();
    assert!(err.contains("not a PCam HDF5 file"), "{err}");
}

/// libhdf5 1.10 segfaulted on this fuzzed file (a corrupted gzip chunk); the pure-Rust
/// reader must report it as a bad patch, and still read the file's shape.
#[test]
fn a_corrupted_chunk_is_an_error_not_a_crash() {
    let p = root().join("fuzz/regressions/pcam_h5/crash-173af81ce9c4f14286e0584c0c8d1d566ba59ed0");
    assert_eq!(edgemed_runtime::formats::pcam_h5::patch_count(&p).unwrap(), 4);
    let err = edgemed_runtime::formats::pcam_h5::read_patch(&p, 0).unwrap_err().to_string();
    assert!(err.contains("not a PCam HDF5 file") && err.contains("patch 0") && err.contains("decompression"), "{err}");
    let err = edgemed_runtime::formats::pcam_h5::read_patch(&root().join("tests/fixtures/pcam_tiny_x.h5"), 4).unwrap_err().to_string();
    assert!(err.contains("out of range"), "{err}");
}
