#!/usr/bin/env bash
# edgemed's INT8 engine against ONNX Runtime (its Python API, CPU provider) on the same
# QDQ files: one thread each, batch 1, p50 ms, the two alternating model by model for
# 3 rounds (take the median of the rounds: shared machines are noisy).
#   scripts/bench-zoo-vs-ort.sh [MODELS_DIR (default target/zoo-int8)] [ITERS (200)] [EDGEMED_RUN]
# The QDQ files come from scripts/zoo_report.py (target/zoo-int8/). Needs python3 with
# onnxruntime (.venv has it). Pins the two to different cores when taskset exists.
set -u
cd "$(dirname "$0")/.."
dir=${1:-target/zoo-int8}
iters=${2:-200}
bin=${3:-target/release/edgemed-run}
py=${PYTHON:-.venv/bin/python}
[[ -x "$py" ]] || py=python3
pin() { if command -v taskset >/dev/null && [[ $(nproc) -gt 2 ]]; then taskset -c "$1" "${@:2}"; else "${@:2}"; fi; }
"$py" -c "import onnxruntime; print('onnxruntime', onnxruntime.__version__)"
for round in 1 2 3; do
  for m in "$dir"/*.onnx; do
    e=$(pin 2 "$bin" --backend int8 bench "$m" --threads 1 --iters "$iters" --warmup 20 2>/dev/null |
        awk '/edgemed-int8/ {for (i = 1; i <= NF; i++) if ($i == "1") {print $(i + 1); exit}}')
    o=$(pin 4 "$py" scripts/ort_latency.py "$m" "$iters" 2>/dev/null)
    echo "round $round $(basename "$m" .onnx) edgemed $e ort $o"
  done
done
