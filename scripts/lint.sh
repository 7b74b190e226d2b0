#!/usr/bin/env bash
# CI's lint leg: rustfmt, clippy on every crate and target with warnings as errors, and
# the engine-only device binary (edgemed-run without tract, targets/rpi4-engine.toml's
# features) built and linted on the host.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo clippy --release -p edgemed-runtime --no-default-features --features cli,pcam-h5 --lib --bins -- -D warnings
