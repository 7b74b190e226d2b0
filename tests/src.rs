//! Shared helpers for edgemed's cross-crate integration tests (see `tests/`):
//! fixture paths and raw little-endian float32 tensors.

use std::path::PathBuf;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the repo root").to_path_buf()
}

pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests").join("fixtures").join(name)
}

/// Reads a raw little-endian float32 file (what scripts/make_fixtures.py writes).
pub fn read_f32(path: &std::path::Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(bytes.len() % 4, 0, "{}: not a float32 file", path.display());
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// An empty scratch directory for one test (named after it and the process).
pub fn scratch_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edgemed-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
    d
}

/// The ONNX Runtime library for the ort backend's tests: `ORT_DYLIB_PATH` (which
/// scripts/test.sh sets), else where scripts/setup-ort.sh puts it. `None` only when
/// the run says `EDGEMED_SKIP_ORT=1`; without a library the tests fail, so they
/// cannot pass by quietly not running.
pub fn ort_library() -> Option<PathBuf> {
    if std::env::var("EDGEMED_SKIP_ORT").is_ok_and(|v| v == "1") {
        eprintln!("EDGEMED_SKIP_ORT=1: ONNX Runtime backend test skipped");
        return None;
    }
    let fetched = repo_root().join("target/onnxruntime/libonnxruntime.so.1.31.1");
    match std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        Some(p) => Some(PathBuf::from(p)),
        None if fetched.is_file() => Some(fetched),
        None => panic!(
            "ORT_DYLIB_PATH is not set: run scripts/test.sh, or export ORT_DYLIB_PATH=$(scripts/setup-ort.sh), or EDGEMED_SKIP_ORT=1"
        ),
    }
}

/// Whether ONNX Runtime's optimised INT8 kernels lose bits on this CPU. Without VNNI
/// (x86-64 with AVX2 only, or AVX-512 without VNNI: AMD Zen 2 and 3, Intel before Ice
/// Lake) its u8 x s8 products go through `vpmaddubsw`, whose int16 pair sums saturate
/// (the U8S8 saturation its quantisation guide documents, with `reduce_range` as the
/// remedy): its fused run of a QDQ model is then not the graph's values. Measured on an
/// AMD EPYC (Zen 3, family 25 model 1): the C4 QDQ fixture 36 output steps from the
/// committed output ONNX Runtime gave on a VNNI CPU, while its unoptimised run (the
/// QDQ graph op by op, no integer kernels) gave that output exactly.
pub fn ort_int8_saturates() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        !(std::is_x86_feature_detected!("avx512vnni") || std::is_x86_feature_detected!("avxvnni"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A command for a binary the tests built (`env!("CARGO_BIN_EXE_...")`). When the tests
/// run under an emulator (scripts/test-arm.sh: `EDGEMED_RUNNER="qemu-aarch64-static"`),
/// the binary is for that emulator's architecture too, and runs through it.
pub fn command(bin: &str) -> std::process::Command {
    match std::env::var("EDGEMED_RUNNER").ok().filter(|r| !r.trim().is_empty()) {
        Some(runner) => {
            let mut words = runner.split_whitespace();
            let mut c = std::process::Command::new(words.next().expect("not empty"));
            c.args(words).arg(bin);
            c
        }
        None => std::process::Command::new(bin),
    }
}

/// A command that should fail cleanly: non-zero exit, no panic, stderr naming `needle`.
pub fn assert_clean_failure(o: &std::process::Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure, got success; stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(err.contains(needle), "stderr does not mention {needle:?}: {err}");
}
