#!/usr/bin/env bash
# Brain-age benchmark: a full 1 mm brain (the MNI152 template, 197x233x189, from nilearn's
# wheel: MNI=path/to/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz), seeded 3-D BagNets
# at half width (running norms, so the maps can be tiled), FP32 (tract) and INT8 (the
# engine, after data-free `edgemed quantize`), one and two threads: seconds and peak RSS
# of `edgemed-run brain-age`, tile by tile (8 map voxels a side: a fixed window of
# 8*7 + rf voxels); then ONNX Runtime running the whole
# volume at once (FP32, open input sizes: the whole activation memory).
# NORM=instance: the paper's instance norms instead, open input sizes: FP32 on tract runs the
# whole (cropped) volume, INT8 streams the norms' statistics over the tiles (a pass per norm).
# Usage: MNI=... [NORM=instance] scripts/bench-brain-age.sh [RF...]   (default 9 17 33)
set -euo pipefail
cd "$(dirname "$0")/.."
MNI=${MNI:?set MNI to the 1 mm MNI152 T1 template}
PY=${PY:-.venv/bin/python}
E=target/release/edgemed R=target/release/edgemed-run
NORM=${NORM:-running}
D=${OUT:-target/bench-brain-age}/$NORM
mkdir -p "$D"
for rf in ${@:-9 17 33}; do
  w=$((8 * 7 + rf))
  # Running norms: a fixed window of one tile; instance norms: open sizes (whole or tiles).
  window=(--window "$w,$w,$w")
  [ "$NORM" = instance ] && window=()
  [ -f "$D/b$rf.map.int8.onnx" ] || {
    $E export bagnet3d --seed 0 --receptive-field "$rf" --norm "$NORM" "${window[@]}" --force -o "$D/b$rf.onnx"
    $E export --local-map "$D/b$rf.onnx" --force -o "$D/b$rf.map.onnx"
    $E quantize "$D/b$rf.map.onnx" --force -o "$D/b$rf.map.int8.onnx"
    $E export bagnet3d --seed 0 --receptive-field "$rf" --norm "$NORM" --force -o "$D/b$rf.open.onnx"
    $E export --local-map "$D/b$rf.open.onnx" --force -o "$D/b$rf.open.map.onnx"
  } 2>/dev/null
  # Instance norms: the INT8 model whole (the default without a memory budget) and in
  # streamed tiles of 8 map voxels.
  runs="b$rf.map b$rf.map.int8"
  [ "$NORM" = instance ] && runs="$runs b$rf.map.int8:8"
  for run in $runs; do
    model=${run%%:*} tile=()
    [ "$run" != "$model" ] && tile=(--tile "${run#*:}")
    for t in 1 2; do
      /usr/bin/time -f "%e s wall, %M KiB max RSS" $R --memory-budget 0 brain-age "$MNI" -m "$D/$model.onnx" --output-dir "$D/out-$run-t$t" \
        "${tile[@]}" --threads "$t" --force ${COMPARE:+--compare "$D/b$rf.map.onnx"} 2>&1 | grep -E "^maps|^peak|wall|vs FP32" | sed "s/^/BagNet-$rf $run t$t: /"
    done
  done
  $PY - "$D/b$rf.open.map.onnx" "$MNI" <<'PYEOF' | sed "s/^/BagNet-$rf ORT whole volume: /"
import resource, sys, time
import nibabel as nib, numpy as np, onnxruntime as ort
x = np.asarray(nib.load(sys.argv[2]).dataobj, dtype=np.float32)
m = x != 0
x = np.where(m, (x - x[m].mean()) / x[m].std(), 0).astype(np.float32)[None, None]
for threads in (1, 2):
    so = ort.SessionOptions(); so.intra_op_num_threads = threads
    s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
    t = time.time(); y = s.run(None, {s.get_inputs()[0].name: x})[0]; dt = time.time() - t
    print(f"threads {threads}: {dt:.1f} s, map {y.shape}, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
PYEOF
done
