#!/usr/bin/env bash
# The test command of the README: builds the workspace and runs every test suite.
# Tests need only Rust: fixtures (ONNX Runtime reference outputs) are committed;
# scripts/make-fixtures.sh regenerates them with the Python peers.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust (https://rustup.rs) first" >&2
    exit 1
fi
# Release mode: the tests run real networks, and the README's main command shares these artefacts.
exec cargo test --release --workspace "$@"
