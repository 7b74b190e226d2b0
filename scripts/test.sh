#!/usr/bin/env bash
# The test command of the README: installs what the tests need (ONNX Runtime's
# library for the ort backend), then builds the workspace and runs every test suite.
# Fixtures (ONNX Runtime reference outputs) are committed; scripts/make-fixtures.sh
# regenerates them with the Python peers, which the tests themselves never need.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust (https://rustup.rs) first" >&2
    exit 1
fi

# The ONNX Runtime backend's tests load the CPU library from the onnxruntime pip wheel.
if [[ "${EDGEMED_SKIP_ORT:-0}" == 1 ]]; then
    echo "EDGEMED_SKIP_ORT=1: not testing the ONNX Runtime backend" >&2
elif [[ -z "${ORT_DYLIB_PATH:-}" ]]; then
    if ! ORT_DYLIB_PATH="$(scripts/setup-ort.sh)"; then
        echo "could not fetch the onnxruntime wheel; set ORT_DYLIB_PATH, or run with EDGEMED_SKIP_ORT=1 to skip those tests" >&2
        exit 1
    fi
    export ORT_DYLIB_PATH
fi

# Release mode: the tests run real networks, and the README's main command shares these artefacts.
exec cargo test --release --workspace "$@"
