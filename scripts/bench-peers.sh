#!/usr/bin/env bash
# edgemed's INT8 engine against the INT8 CPU runtimes installable from PyPI, batch 1, at 1 and 2 threads:
#   ONNX Runtime  (onnxruntime, CPU provider)  on the QDQ file `edgemed quantize` writes
#   OpenVINO      (openvino, CPU plugin)       on the same QDQ file
#   LiteRT        (ai-edge-litert, XNNPACK)    on its own full-int8 conversion of the same architecture and
#                                              width (Keras MobileNetV2), where one exists
#   edgemed       target/release/edgemed-run --backend int8 bench MODEL --threads T --format json
# Models: torchvision MobileNetV2 1.0 @224x224 and 0.25 @95x95 (scripts/make_peer_models.py, BN kept so the
# data-free quantizer sees batch-norm statistics), the bundled C4 equivariant MobileNetV2 @95x95
# (models/bundled/pcam-c4-demo-int8.onnx), the 3-D U-Net 32^3 window (tests/fixtures/zoo/unet3d.onnx,
# quantized with --calibrate on its fixture window and three flips/turns of it: it has no batch norms).
# A second table times edgemed, ONNX Runtime and OpenVINO on ONNX Runtime's own quantize_static QDQ files of
# the same FP32 models (per-channel; ReLU6 stays a Clip that ONNX Runtime fuses; make_peer_models.py --ort-qdq).
# Each peer measurement runs in its own process (scripts/peer_latency.py: 20 warm-up runs, median of ITERS);
# edgemed's is the p50 of its bench JSON. ROUNDS rounds, alternating runtimes within each; a cell is the
# median of its rounds. A peer that fails to install, convert or run gets "n/a (reason)".
#
#   scripts/bench-peers.sh [--iters N (200)] [--rounds R (3)] [--threads "1 2"] [--out DIR (target/peers)]
#                          [--venvs DIR (target/peers-venv)] [--no-setup] [--rebuild-models]
# Writes DIR/peers.md (the table, also printed), DIR/peers.json (cells + every raw measurement),
# DIR/raw.jsonl, DIR/models/ (the files timed), DIR/logs/. Venvs: VENVS/ov (openvino, onnxruntime, numpy),
# VENVS/litert (ai-edge-litert, numpy), VENVS/tf (tensorflow, tf_keras: only to convert, about 2.2 GB);
# reused when they import. The FP32 MobileNetV2 export needs torch + torchvision in .venv
# (scripts/setup-python.sh). Python is never needed by cargo test.
set -u
cd "$(dirname "$0")/.."
iters=200 rounds=3 threads="1 2" out=target/peers venvs=target/peers-venv setup=1 rebuild=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --iters) iters=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --venvs) venvs=$2; shift 2 ;;
    --no-setup) setup=0; shift ;;
    --rebuild-models) rebuild=1; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out/models" "$out/logs"
md=$out/models logs=$out/logs
raw=$out/raw.jsonl; : > "$raw"
status=$out/status.tsv; : > "$status"   # runtime/model <TAB> n/a reason, for whole-peer failures
torch_py=${TORCH_PYTHON:-.venv/bin/python}
host_py=$(command -v python3)
bin=target/release/edgemed-run conv=target/release/edgemed
log() { echo "[bench-peers] $*" >&2; }
na() { printf '%s\t%s\n' "$1" "$2" >> "$status"; log "n/a $1: $2"; }
# last meaningful line of a log, for a reason
why() { grep -v '^\s*$' "$1" 2>/dev/null | grep -iv 'warn' | tail -1 | cut -c1-160 | tr -d '\t|'; }

# --- venvs ------------------------------------------------------------------------------------------------------
venv() {  # NAME IMPORT-CHECK PACKAGES...
  local name=$1 check=$2; shift 2
  local py=$venvs/$name/bin/python
  if [[ -x $py ]] && "$py" -c "$check" >/dev/null 2>&1; then return 0; fi
  [[ $setup == 1 ]] || { na "venv:$name" "venv $venvs/$name missing (--no-setup)"; return 1; }
  log "setting up $venvs/$name: $*"
  { "$host_py" -m venv "$venvs/$name" && "$py" -m pip install -q --upgrade pip && "$py" -m pip install -q "$@"; } \
    > "$logs/setup-$name.log" 2>&1
  "$py" -c "$check" >> "$logs/setup-$name.log" 2>&1 && return 0
  na "venv:$name" "pip install $* failed: $(why "$logs/setup-$name.log")"; return 1
}
have_ov=0 have_lite=0 have_tf=0
venv ov "import openvino, onnxruntime, numpy" openvino onnxruntime numpy && have_ov=1
venv litert "import ai_edge_litert.interpreter, numpy" ai-edge-litert numpy && have_lite=1
venv tf "import tensorflow, tf_keras" tensorflow tf_keras && have_tf=1
ovpy=$venvs/ov/bin/python litepy=$venvs/litert/bin/python tfpy=$venvs/tf/bin/python

# --- edgemed ----------------------------------------------------------------------------------------------------
if [[ ! -x $bin || ! -x $conv ]]; then
  log "building edgemed (release)"
  cargo build --release -p edgemed-runtime -p edgemed-converter > "$logs/cargo.log" 2>&1 ||
    { log "cargo build failed: $(why "$logs/cargo.log")"; exit 1; }
fi

# --- models -----------------------------------------------------------------------------------------------------
# table|key|label|INT8 QDQ onnx|tflite (or "n/a (reason)", or "-": no LiteRT column)
models=()
[[ $rebuild == 1 ]] && rm -f "$md"/mnv2_x*.onnx "$md"/*-ortqdq.onnx
if ! ls "$md"/mnv2_x1.0_224.onnx "$md"/mnv2_x0.25_95.onnx "$md"/{mnv2_x1.0_224,mnv2_x0.25_95,pcam_c4,unet3d}-ortqdq.onnx >/dev/null 2>&1; then
  log "exporting torchvision MobileNetV2s, ONNX Runtime QDQ files"
  "$torch_py" scripts/make_peer_models.py --out "$md" --ort-qdq > "$logs/make_peer_models.log" 2>&1 ||
    log "make_peer_models.py failed: $(why "$logs/make_peer_models.log")"
fi
quant() {  # IN OUT [edgemed quantize options]
  local in=$1 q=$2; shift 2
  [[ -s $in ]] || { echo "missing $in"; return 1; }
  if [[ $rebuild == 1 || ! -s $q ]]; then
    "$conv" quantize "$in" -o "$q" --force "$@" > "$logs/quantize-$(basename "$q" .onnx).log" 2>&1 ||
      { why "$logs/quantize-$(basename "$q" .onnx).log"; return 1; }
  fi
}
tflite() {  # WIDTH SIZE OUT -> prints the path or "n/a (reason)"
  if [[ $rebuild == 0 && -s $3 ]]; then echo "$3"; return; fi
  if [[ $have_tf == 0 ]]; then echo "n/a (tensorflow venv unavailable: no conversion)"; return; fi
  if true; then
    "$tfpy" scripts/make_keras_tflite.py "$1" "$2" "$3" > "$logs/tflite-$(basename "$3").log" 2>&1 ||
      { echo "n/a (conversion failed: $(why "$logs/tflite-$(basename "$3").log"))"; return; }
  fi
  echo "$3"
}
for spec in "1.0 224" "0.25 95"; do
  set -- $spec
  key=mnv2_x$1_$2
  if r=$(quant "$md/$key.onnx" "$md/$key-int8.onnx"); then
    models+=("edgemed|$key|MobileNetV2 $1 @$2x$2|$md/$key-int8.onnx|$(tflite "$1" "$2" "$md/keras_${key}-int8.tflite")")
  else
    na "model:$key" "$r"
  fi
done
models+=("edgemed|pcam_c4|C4 equivariant MobileNetV2 @95x95 (bundled)|models/bundled/pcam-c4-demo-int8.onnx|n/a (escnn C4: no Keras equivalent)")
calib=$md/unet3d_calib
if [[ ! -s $calib/calib_3.npy ]] && [[ $have_ov == 1 ]]; then
  mkdir -p "$calib"
  "$ovpy" - <<'EOF' "$calib" > "$logs/unet3d-calib.log" 2>&1
import sys, numpy as np
x = np.fromfile('tests/fixtures/zoo/unet3d.input.f32', '<f4').reshape(1, 1, 32, 32, 32)
for i, y in enumerate([x, x[..., ::-1], x[..., ::-1, :], np.rot90(x, 1, (3, 4))]):
    np.save(f'{sys.argv[1]}/calib_{i}.npy', np.ascontiguousarray(y))
EOF
fi
if r=$(quant tests/fixtures/zoo/unet3d.onnx "$md/unet3d-int8.onnx" --calibrate "$calib"); then
  models+=("edgemed|unet3d|3-D U-Net window 32^3|$md/unet3d-int8.onnx|n/a (3-D: no int8 3-D conv in TFLite)")
else
  na "model:unet3d" "$r"
fi
for k in "mnv2_x1.0_224|MobileNetV2 1.0 @224x224" "mnv2_x0.25_95|MobileNetV2 0.25 @95x95" \
         "pcam_c4|C4 equivariant MobileNetV2 @95x95" "unet3d|3-D U-Net window 32^3"; do
  key=${k%%|*}
  if [[ -s $md/$key-ortqdq.onnx ]]; then models+=("ort|$key-ortqdq|${k#*|}|$md/$key-ortqdq.onnx|-")
  else na "model:$key-ortqdq" "no ONNX Runtime QDQ file (see $logs/make_peer_models.log)"; fi
done

# --- measurements -----------------------------------------------------------------------------------------------
record() {  # ROUND KEY THREADS RUNTIME LOG  (LOG's last line is the JSON, or the failure)
  local line; line=$(grep '^{' "$5" | tail -1)
  if [[ -n $line ]]; then
    printf '{"round": %s, "key": "%s", "threads": %s, "runtime": "%s", "result": %s}\n' "$1" "$2" "$3" "$4" "$line" >> "$raw"
  else
    local reason; reason=$(why "$5" | sed 's/"/'"'"'/g; s/\\/\//g')
    printf '{"round": %s, "key": "%s", "threads": %s, "runtime": "%s", "error": "%s"}\n' "$1" "$2" "$3" "$4" "${reason:-no output}" >> "$raw"
  fi
}
log "load before: $(uptime)"
load_before=$(uptime)
for round in $(seq 1 "$rounds"); do
  for m in "${models[@]}"; do
    IFS='|' read -r table key label qdq tfl <<< "$m"
    for t in $threads; do
      l=$logs/run.log
      "$bin" --backend int8 bench "$qdq" --threads "$t" --iters "$iters" --warmup 20 --format json > "$l" 2>&1
      record "$round" "$key" "$t" edgemed "$l"
      if [[ $have_ov == 1 ]]; then
        for rt in ort openvino; do
          "$ovpy" scripts/peer_latency.py "$rt" "$qdq" --threads "$t" --iters "$iters" > "$l" 2>&1
          record "$round" "$key" "$t" "$rt" "$l"
        done
      fi
      if [[ $have_lite == 1 && $tfl != n/a* && $tfl != - ]]; then
        "$litepy" scripts/peer_latency.py litert "$tfl" --threads "$t" --iters "$iters" > "$l" 2>&1
        record "$round" "$key" "$t" litert "$l"
      fi
      log "round $round $key threads $t done"
    done
  done
done
load_after=$(uptime)
log "load after: $load_after"

# --- table ------------------------------------------------------------------------------------------------------
printf '%s\n' "${models[@]}" > "$out/models.txt"
"$host_py" - "$out" "$iters" "$rounds" "$threads" "$have_ov" "$have_lite" "$load_before" "$load_after" <<'EOF'
import json, statistics, sys, platform, subprocess
out, iters, rounds, threads, have_ov, have_lite, lb, la = sys.argv[1:9]
raw = [json.loads(l) for l in open(f"{out}/raw.jsonl")]
models = [l.rstrip("\n").split("|") for l in open(f"{out}/models.txt") if l.strip()]
status = dict(l.rstrip("\n").split("\t", 1) for l in open(f"{out}/status.tsv") if "\t" in l)
cpu = next((l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if l.startswith("Model name")), platform.processor())
peers = [("ort", "ONNX Runtime"), ("openvino", "OpenVINO"), ("litert", "LiteRT")]
cells = []
for table, key, label, qdq, tfl in models:
    for t in threads.split():
        t = int(t)
        row = {"table": table, "key": key, "model": label, "threads": t, "qdq": qdq, "tflite": tfl}
        for rt in ["edgemed"] + [p for p, _ in peers]:
            if rt == "litert" and tfl == "-":
                continue
            rs = [r for r in raw if r["key"] == key and r["threads"] == t and r["runtime"] == rt]
            ok = [r["result"]["p50_ms"] for r in rs if "result" in r]
            if ok:
                row[rt] = {"ms": statistics.median(ok), "rounds": ok}
                row[rt].update({k: v for k, v in rs[-1]["result"].items()
                                if k in ("version", "conv_runtime_precision", "input_dtype", "mmac")})
            elif rs:
                row[rt] = {"na": f"n/a ({rs[-1]['error']})"}
            elif rt == "litert":
                row[rt] = {"na": tfl if tfl.startswith("n/a") else ("n/a (litert venv unavailable)" if have_lite != "1" else "n/a")}
            else:
                row[rt] = {"na": "n/a (openvino/onnxruntime venv unavailable)" if have_ov != "1" else "n/a"}
        best = min(((row[p]["ms"], n) for p, n in peers if p in row and "ms" in row[p]), default=None)
        if best and "ms" in row["edgemed"]:
            row["ratio"] = best[0] / row["edgemed"]["ms"]
            row["best_peer"] = best[1]
        cells.append(row)
def cell(c):
    return f"{c['ms']:.3f}" if "ms" in c else c["na"]
def ratio(r):
    return f"{r['ratio']:.2f}x ({r['best_peer']})" if "ratio" in r else "n/a"
lines = ["INT8 files from `edgemed quantize` (data-free; calibrated for the U-Net); LiteRT: its own full-int8 "
         "conversion of Keras MobileNetV2 at the same width and input size.", "",
         "| model | threads | edgemed ms | ORT ms | OpenVINO ms | LiteRT ms | edgemed vs best peer |",
         "|---|---|---|---|---|---|---|"]
for r in cells:
    if r["table"] == "edgemed":
        lines.append(f"| {r['model']} | {r['threads']} | {cell(r['edgemed'])} | {cell(r['ort'])} | {cell(r['openvino'])} | "
                     f"{cell(r['litert'])} | {ratio(r)} |")
if any(r["table"] == "ort" for r in cells):
    lines += ["", "Same FP32 models, INT8 files from ONNX Runtime's quantize_static (QDQ, per-channel, MinMax).", "",
              "| model | threads | edgemed ms | ORT ms | OpenVINO ms | edgemed vs best peer |", "|---|---|---|---|---|---|"]
    for r in cells:
        if r["table"] == "ort":
            lines.append(f"| {r['model']} | {r['threads']} | {cell(r['edgemed'])} | {cell(r['ort'])} | {cell(r['openvino'])} | {ratio(r)} |")
vers = {}
for r in raw:
    if "result" in r and "version" in r["result"]:
        vers[r["runtime"]] = r["result"]["version"]
notes = [f"CPU: {cpu}; batch 1; p50 ms = median over {rounds} rounds of each process's median of {iters} runs.",
         "edgemed vs best peer = best peer's ms / edgemed's ms (above 1: edgemed is faster).",
         "versions: " + ", ".join(f"{k} {v}" for k, v in sorted(vers.items())),
         f"load before: {lb.strip()}", f"load after: {la.strip()}"]
notes += [f"{k}: {v}" for k, v in status.items()]
text = "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"
open(f"{out}/peers.md", "w").write(text)
json.dump({"cpu": cpu, "iters": int(iters), "rounds": int(rounds), "load_before": lb.strip(), "load_after": la.strip(),
           "versions": vers, "status": status, "cells": cells, "raw": raw}, open(f"{out}/peers.json", "w"), indent=1)
print(text, end="")
EOF
