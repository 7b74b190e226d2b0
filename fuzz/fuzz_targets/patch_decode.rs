//! Patch files: format sniffing, PNG/JPEG/TIFF decoding under the size limits, and
//! turning the image into the network's input tensor.
#![no_main]
mod common;

use edgemed_runtime::formats::patch::{decode_rgb, Preprocess};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    common::keep_caught_panics_caught();
    let path = std::path::Path::new("fuzz.png");
    let Ok(img) = decode_rgb(path, data) else { return };
    let pre = Preprocess { patch_size: 96, crop_size: 95, mean: [0.5; 3], std: [0.25; 3], circular_mask: true, resize: true };
    if let Ok(img) = pre.check_size(path, img) {
        let mut out = vec![0f32; 3 * 95 * 95];
        pre.tensorize(&img, &mut out);
    }
});
