#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for a set time with cargo fuzz and
# prints executions and crashes per target. Inputs that crashed are left in
# fuzz/artifacts/<target>/; once fixed, copy them to fuzz/regressions/<target>/, which
# tests/tests/fuzz_regressions.rs replays on every test run.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     # default 120 s, every target
#
# Needs cargo-fuzz (installed here if missing) and a C++ compiler for libFuzzer. The
# sanitizer is off (-s none): the code is safe Rust, and what is looked for is panics,
# aborts, hangs and runaway memory; RUSTC_BOOTSTRAP lets a stable toolchain take the
# flags cargo fuzz passes.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-120}
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(onnx_model converter_passes patch_decode pcam_h5 nifti_volume)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1

# Seeds: small inputs of each kind (fuzz/seeds from fuzz/make_seeds.py, sample patches,
# the PCam HDF5 fixture); the corpus folders grow during runs and are not committed.
seed() { # TARGET FILES...
    local dir=fuzz/corpus/$1
    shift
    mkdir -p "$dir"
    cp -n "$@" "$dir/" 2>/dev/null || true
}
seed onnx_model fuzz/seeds/*.onnx fuzz/regressions/onnx_model/* 2>/dev/null
seed converter_passes fuzz/seeds/*.onnx fuzz/regressions/converter_passes/* 2>/dev/null
seed patch_decode examples/data/pcam/patch_00[0-4].png fuzz/regressions/patch_decode/* 2>/dev/null
seed pcam_h5 tests/fixtures/pcam_tiny_x.h5 fuzz/regressions/pcam_h5/* 2>/dev/null
seed nifti_volume tests/fixtures/unet/label.nii.gz fuzz/seeds/*.nii fuzz/regressions/nifti_volume/* 2>/dev/null

report=()
for t in "${targets[@]}"; do
    features=()
    if [[ $t == pcam_h5 ]]; then features=(--features pcam-h5); fi
    log=fuzz/$t.log
    echo "=== $t: ${secs} s" >&2
    set +e
    (cd fuzz && cargo fuzz run -s none --release "${features[@]}" "$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=20 -max_len=262144 -print_final_stats=1) > "$log" 2>&1
    rc=$?
    set -e
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    crashes=$( (find "fuzz/artifacts/$t" -type f 2>/dev/null || true) | wc -l)
    report+=("$(printf '%-18s %12s executions  %3s crash/timeout/oom inputs  exit %s' "$t" "${runs:-?}" "$crashes" "$rc")")
done
printf '%s\n' "${report[@]}"
