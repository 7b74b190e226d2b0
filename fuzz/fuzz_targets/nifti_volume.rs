//! NIfTI volumes: the bytes are written to a file (the nifti crate reads files, and
//! picks gzip from the name, so both a .nii and a .nii.gz name are tried), read under a
//! 64 MiB budget, then windowed, cropped and resampled as the volume pipelines do.
#![no_main]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    common::keep_caught_panics_caught();
    for name in ["fuzz.nii", "fuzz.nii.gz"] {
        let path = std::env::temp_dir().join(format!("edgemed-fuzz-{}-{name}", std::process::id()));
        if std::fs::write(&path, data).is_err() {
            return;
        }
        if let Ok(mut v) = edgemed_runtime::formats::volume::Volume::read(&path, 64 << 20) {
            let _ = v.affine();
            edgemed_runtime::formats::volume::ct_window(&mut v.data);
            let c = edgemed_runtime::formats::volume::centre_of_gravity(v.data.view());
            let _ = edgemed_runtime::formats::volume::crop_around(v.data.view(), c, [4, 4, 4], 0.0);
            let _ = edgemed_runtime::formats::volume::resample_trilinear(v.data.view(), [3, 5, 2]);
        }
    }
});
