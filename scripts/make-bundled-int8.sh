#!/usr/bin/env bash
# Makes the bundled INT8 model from the bundled FP32 one with the converter's default
# data-free recipe (batch norm folded, cross-layer equalization with C4 fields, high-bias
# absorption, bias correction, per-tensor weights, activation ranges of least expected
# error): models/bundled/pcam-c4-demo-int8.onnx, recorded in the manifest beside it.
# `edgemed-run` embeds the result; tests/tests/bundled_model.rs checks it is what
# this command gives today.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release -q -p edgemed-converter -- quantize models/bundled/pcam-c4-demo.onnx --force -o models/bundled/pcam-c4-demo-int8.onnx
