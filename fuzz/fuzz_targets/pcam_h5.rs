//! PCam HDF5 files (feature pcam-h5): the bytes are written to a file, since the reader
//! opens files as the CLI does, then opened, counted and the first patches read.
#![no_main]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    common::keep_caught_panics_caught();
    let path = std::env::temp_dir().join(format!("edgemed-fuzz-{}.h5", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(n) = edgemed_runtime::formats::pcam_h5::patch_count(&path) {
        for i in 0..n.min(2) {
            let _ = edgemed_runtime::formats::pcam_h5::read_patch(&path, i);
        }
    }
});
