#!/usr/bin/env bash
# Volume benchmarks (a script, not a unit test): wall time and peak RSS of the volume
# pipelines on synthetic head CTs (examples/ct_phantom.rs), one process per row so
# each peak is its own. Memory should follow the window / patch / model grid, not the
# volume: the 256^3 segmentation holds a 64 MiB float volume but only a slab of logits.
#
#   scripts/bench-volumes.sh            # 256^3 segmentation, 128^3 aging step, 128^3 x2 upsampling
set -euo pipefail
cd "$(dirname "$0")/.."
work=target/bench-volumes
mkdir -p "$work"
cargo build --release -q -p edgemed-runtime --bin edgemed-run --example ct_phantom
cargo build --release -q -p edgemed-converter --bin edgemed
run=$PWD/target/release/edgemed-run
conv=$PWD/target/release/edgemed
phantom=$PWD/target/release/examples/ct_phantom

[[ -f $work/head256.nii.gz ]] || "$phantom" 256 "$work/head256.nii.gz" > /dev/null
[[ -f $work/head128.nii.gz ]] || "$phantom" 128 "$work/head128.nii.gz" > /dev/null
# The aging twin at the paper's scale: 128^3 grid, 3 levels x 4 steps (seeded weights:
# the timing and memory do not depend on the values).
[[ -f $work/twin128/decoder.onnx ]] || "$conv" export aging-twin --seed 1 --grid 128 --output-dir "$work/twin128" 2> /dev/null
# 3-D U-Net from MONAI (tests/fixtures/unet, 32^3 windows) and 3-D ESPCN (8^3 patches).
unet=tests/fixtures/unet/unet3d.onnx
espcn=tests/fixtures/espcn/espcn3d_p8.onnx

printf '%-44s %10s %14s %10s\n' "task" "wall s" "peak RSS MiB" "input MiB"
row() { # NAME INPUT_VOXELS CMD...
    local name=$1 voxels=$2
    shift 2
    local out t0 t1 rss
    t0=$(date +%s.%N)
    out=$("$@" 2>&1) || { echo "$name failed: $out" >&2; exit 1; }
    t1=$(date +%s.%N)
    rss=$(sed -n 's/^peak RSS *\([0-9]*\) MiB$/\1/p' <<< "$out")
    printf '%-44s %10.2f %14s %10.1f\n' "$name" "$(echo "$t1 - $t0" | bc)" "${rss:-?}" "$(echo "$voxels * 4 / 1048576" | bc -l)"
}
row "segment 256^3 (U-Net, 32^3 windows, gaussian)" $((256 ** 3)) \
    "$run" segment "$work/head256.nii.gz" -o "$work/seg256.nii.gz" --force -m "$unet" --blend gaussian --ct-window
row "age 128^3, 1 year (GLOW 3x4 + P)" $((128 ** 3)) \
    "$run" age "$work/head128.nii.gz" -o "$work/aged128.nii.gz" --force -m "$work/twin128" --years 1 --ct-window
row "age 128^3, 5 years" $((128 ** 3)) \
    "$run" age "$work/head128.nii.gz" -o "$work/aged128_5.nii.gz" --force -m "$work/twin128" --years 5 --ct-window
row "upsample 128^3 -> 256^3 (ESPCN x2, 8^3 patches)" $((128 ** 3)) \
    "$run" upsample "$work/head128.nii.gz" -o "$work/up256.nii.gz" --force -m "$espcn"
