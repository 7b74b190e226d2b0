#!/usr/bin/env bash
# Regenerates tests/fixtures: exports seeded reference models with the edgemed
# converter, then records ONNX Runtime's outputs on them (scripts/make_fixtures.py).
# Needs the Python peers: scripts/setup-python.sh [--torch].
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
out=tests/fixtures
mkdir -p "$out"
cargo build --release -q -p edgemed-converter
edgemed=target/release/edgemed
# Small widths keep each fixture well under a megabyte.
$edgemed export eq-mobilenet-v2 --seed 1 --group-order 1 --width 0.25 --force -o $out/eqmnv2_c1.onnx
$edgemed export eq-mobilenet-v2 --seed 2 --group-order 4 --width 0.25 --force -o $out/eqmnv2_c4.onnx
$edgemed export eq-mobilenet-v2 --seed 3 --group-order 8 --width 0.25 --force -o $out/eqmnv2_c8.onnx
$edgemed export eq-mobilenet-v2 --seed 4 --group-order 12 --width 0.25 --force -o $out/eqmnv2_c12.onnx
$edgemed export eq-mobilenet-v2 --seed 2 --group-order 4 --width 0.25 --fold-bn --force -o $out/eqmnv2_c4_folded.onnx
# A small seeded 3-D BagNet-9 local-map model (stored statistics, so tiles are exact) for
# the brain-age CLI test (runtime/tests/brain_age_cli.rs).
$edgemed export bagnet3d --seed 21 --receptive-field 9 --width 4 --heads both --norm running --force -o "$out/bagnet3d/b9_running.onnx"
$edgemed export --local-map "$out/bagnet3d/b9_running.onnx" --force -o "$out/bagnet3d/b9_running.map.onnx"
rm "$out/bagnet3d/b9_running.onnx"
"$PY" - "$out/bagnet3d/edgemed-manifest.json" <<'PYEOF'  # keep the manifest to the file kept
import json, sys
m = json.load(open(sys.argv[1]))
m["models"] = [e for e in m["models"] if e["file"] != "b9_running.onnx"]
open(sys.argv[1], "w").write(json.dumps(m, indent=2) + "\n")
PYEOF
"$PY" scripts/make_fixtures.py "$out"
