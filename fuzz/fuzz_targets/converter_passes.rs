//! The converter on arbitrary bytes: graph parsing, data-free quantization (BN folding,
//! CLE, bias absorption and correction, INT8 QDQ), the FP16 export, the local-map rewrite.
#![no_main]
mod common;

use edgemed_converter::graph::Graph;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    common::keep_caught_panics_caught();
    let Ok(g) = Graph::from_bytes(data) else { return };
    let Ok(mut q) = Graph::from_bytes(data) else { return };
    let opts = edgemed_converter::dfq::Options { field_size: edgemed_converter::dfq::field_size_of(&q), ..Default::default() };
    if edgemed_converter::dfq::run(&mut q, &opts).is_ok() {
        let _ = Graph::from_bytes(&q.to_bytes());
    }
    let Ok(mut h) = Graph::from_bytes(data) else { return };
    let _ = edgemed_converter::fp16::convert_to_fp16(&mut h, true);
    let mut l = g;
    let _ = edgemed_converter::local_map::to_local_map(&mut l);
});
