#!/usr/bin/env bash
# CI's ARM leg: builds edgemed-run, the runtime crate's tests and the INT8 engine's
# for aarch64 and armv7 with Debian's multiarch Rust (the arm-test profile in
# Cargo.toml), runs the tests under qemu-user, then checks that ARM computes what x86
# computes on the same inputs:
#   - the INT8 QDQ fixture (quantized output): identical bits;
#   - the bundled model quantized by the converter (DFQ, INT8 QDQ, float logits from the
#     last Gemm) in tract: logits of the fixture input within 1e-6; `classify` of the
#     samples identical on aarch64, same classes and probability within 0.05 on armv7;
#   - an FP32 equivariant MobileNetV2 fixture: logits within 1e-5;
#   - edgemed's INT8 engine (--backend int8): identical bits on the QDQ fixture, in
#     `classify` of the samples with the converter's INT8 model (the embedded one, which
#     the default backend runs), and on escnn's own C4 export (grouped convs), on both targets;
#   - `classify` of the sample patches with the FP32 demo model (tract): same class for
#     every patch, probability within 1e-5.
# Float sums are ordered differently by the AVX and NEON kernels, hence a tolerance there.
#
#   scripts/test-arm.sh                       # both targets
#   EDGEMED_ARM_TARGETS=aarch64-unknown-linux-gnu scripts/test-arm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
targets=${EDGEMED_ARM_TARGETS:-"aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf"}
scripts/setup-cross.sh

# x86 references, from the host's release build: the workspace's binaries, as scripts/test.sh
# built them (nothing to rebuild; `cargo run -p edgemed-converter` alone resolves the
# runtime's features otherwise and rebuilt it and the converter, 1-2 minutes of CI).
cargo build --release -q --workspace --bins
host=target/release/edgemed-run
converter=target/release/edgemed
ref=target/arm-check
rm -rf "$ref" && mkdir -p "$ref"
qdq=(tests/fixtures/eqmnv2_c4_qdq.onnx --input tests/fixtures/eqmnv2_c4_qdq.input.f32)
fp32=(tests/fixtures/eqmnv2_c8.onnx --input tests/fixtures/eqmnv2_c8.input.f32)
"$converter" quantize models/bundled/pcam-c4-demo.onnx -o "$ref/pcam-int8.onnx" >/dev/null
int8=("$ref/pcam-int8.onnx" --input tests/fixtures/eqmnv2_c4.input.f32)
"$host" run "${qdq[@]}" --output-dir "$ref/x86-qdq" >/dev/null
"$host" --backend tract run "${int8[@]}" --output-dir "$ref/x86-int8" >/dev/null
"$host" --backend tract classify examples/data/pcam -m "$ref/pcam-int8.onnx" --format csv -o "$ref/x86-int8.csv" 2>/dev/null
"$host" run "${fp32[@]}" --output-dir "$ref/x86-fp32" >/dev/null
"$host" classify examples/data/pcam -m models/bundled/pcam-c4-demo.onnx --format csv -o "$ref/x86.csv" 2>/dev/null
# edgemed's INT8 engine: integer arithmetic, the same on every architecture.
"$host" --backend int8 run "${qdq[@]}" --output-dir "$ref/x86-qdq-engine" >/dev/null
"$host" --backend int8 classify examples/data/pcam -m "$ref/pcam-int8.onnx" --format csv -o "$ref/x86-engine.csv" 2>/dev/null
# escnn's own export (grouped equivariant convs) after the converter's defaults.
"$converter" quantize tests/fixtures/zoo/c4_legacy_bn.onnx -o "$ref/escnn-c4-int8.onnx" 2>/dev/null
head -c $((3 * 95 * 95 * 4)) tests/fixtures/zoo/input95.f32 > "$ref/escnn.input.f32"    # its first image
escnn=("$ref/escnn-c4-int8.onnx" --input "$ref/escnn.input.f32")
"$host" --backend int8 run "${escnn[@]}" --output-dir "$ref/x86-escnn-engine" >/dev/null
# Volume models in the engine: 3-D and transposed convs, float ops between them.
unet3d=(tests/fixtures/int8/unet3d_qdq.onnx --input tests/fixtures/int8/unet3d_qdq.input.f32)
glow=(tests/fixtures/int8/glow_decoder_qdq.onnx --input tests/fixtures/int8/glow_decoder_qdq.input.f32)
"$host" --backend int8 run "${unet3d[@]}" --output-dir "$ref/x86-unet3d-engine" >/dev/null
"$host" --backend int8 run "${glow[@]}" --output-dir "$ref/x86-glow-engine" >/dev/null

# Same file, same class, probability within $3: one line per difference, exit 1 if any.
same_classes() {
    awk -F, -v tol="$3" '
        FNR == 1 { next }
        NR == FNR { p[$1] = $2; c[$1] = $3; next }
        { seen++
          if (!($1 in c)) { print "not in the x86 output: " $1; bad++; next }
          d = $2 - p[$1]; if (d < 0) d = -d
          if ($3 != c[$1]) flipped++
          if (d > 0) moved++
          if ($3 != c[$1] || d > tol) { print $1 ": " $2 " " $3 " on ARM, " p[$1] " " c[$1] " on x86"; bad++ }
          if (d > worst) worst = d }
        END { if (seen != length(c)) { print seen " patches on ARM, " length(c) " on x86"; bad++ }
              printf "%d patches: %d with another class, %d with another probability, max |diff| %.1e (allowed %s)\n", seen, flipped, moved, worst, tol
              exit bad > 0 }' "$1" "$2"
}

export CARGO_TARGET_DIR=target/device
for triple in $targets; do
    echo "=== $triple ($(date -u +%T) UTC)" >&2
    t0=$SECONDS
    (
        source scripts/cross-env.sh
        cross_env "$triple"
        upper=$(echo "$triple" | tr 'a-z-' 'A-Z_')
        export "CARGO_TARGET_${upper}_RUNNER=$runner"
        # The CLI tests start edgemed-run themselves: through the same emulator.
        export EDGEMED_RUNNER="$runner"
        # No ONNX Runtime under qemu: PyPI's aarch64 library (scripts/setup-ort.sh aarch64)
        # crashes at load in its CPU probe (cpuinfo reads the x86 host's /proc/cpuinfo and
        # /sys topology), and there is no armv7 wheel. The ort tests run on x86.
        export EDGEMED_SKIP_ORT=1
        # Only the runtime crate (the device side), and the INT8 engine's tests: its kernel
        # property tests (every kernel this CPU has against the scalar reference) and the
        # same bits at every thread count on the repository's fixtures (tests/threads.rs).
        # brain-age's end-to-end CLI test (a 1 mm brain through tract) takes 1-3 minutes per
        # target under qemu and checks nothing the other tests do not check here: it runs
        # on x86 only.
        # One cargo run for both crates: built apart, the engine's dependencies resolve
        # other features and half of them build again (1-2 minutes per target).
        cargo test --profile arm-test --target "$triple" -p edgemed-runtime -p edgemed-engine --lib --bins --tests "${build_std[@]}" \
            -- --skip brain_age_writes_maps_overlay_and_summaries_that_say_what_made_them
        echo "=== $triple: built and tested in $((SECONDS - t0)) s" >&2

        bin="$CARGO_TARGET_DIR/$triple/arm-test/edgemed-run"
        out="$ref/$triple"
        $runner "$bin" run "${qdq[@]}" --expect "$ref/x86-qdq"
        # Its logits come from a float Gemm after the last DequantizeLinear: the integer
        # grid is the same, the float sum may round the last bit otherwise (armv7: 2.4e-7).
        $runner "$bin" --backend tract run "${int8[@]}" --expect "$ref/x86-int8" --tolerance 1e-6
        $runner "$bin" run "${fp32[@]}" --expect "$ref/x86-fp32" --tolerance 1e-5
        $runner "$bin" --backend tract classify examples/data/pcam -m "$ref/pcam-int8.onnx" --format csv -o "$out-int8.csv" 2>/dev/null
        # tract runs QDQ models as float convolutions between quantize/dequantize ops, and
        # its NEON and AVX kernels order float sums differently: single rounding flips
        # in the quantized layers spread (measured on aarch64: 2 of 100 patches moved,
        # at most 0.013; on armv7, whose NEON does not fuse multiply-adds, 19 moved, at
        # most 0.02; no class changed). Identical INT8 bits are the engine's (below).
        int8_tol=0.05
        same_classes "$ref/x86-int8.csv" "$out-int8.csv" "$int8_tol"
        $runner "$bin" classify examples/data/pcam -m models/bundled/pcam-c4-demo.onnx --format csv -o "$out.csv" 2>/dev/null
        same_classes "$ref/x86.csv" "$out.csv" 1e-5
        # The INT8 engine: NEON on aarch64 and armv7, AVX-512 VNNI on x86,
        # identical integers, so identical bits: the QDQ fixture's quantised logits, and
        # every probability of the demo INT8 model (measured: 0 of 100 differ on both
        # targets, where tract's float simulation moved 19 on armv7). Its float tail
        # (edgemed's interpreter: fixed operation order, no fused multiply-adds) too.
        $runner "$bin" --backend int8 run "${qdq[@]}" --expect "$ref/x86-qdq-engine"
        $runner "$bin" --backend int8 classify examples/data/pcam -m "$ref/pcam-int8.onnx" --format csv -o "$out-engine.csv" 2>/dev/null
        same_classes "$ref/x86-engine.csv" "$out-engine.csv" 0
        $runner "$bin" --backend int8 run "${escnn[@]}" --expect "$ref/x86-escnn-engine"
        # The U-Net's float ops (instance normalisation, PReLU, concat) are IEEE-exact
        # steps in a fixed order: identical bits. The GLOW decoder's exp and sigmoid come
        # from each platform's libm (correctly rounded in nearly all cases): allowed to
        # move by one output step (0.0059).
        $runner "$bin" --backend int8 run "${unet3d[@]}" --expect "$ref/x86-unet3d-engine"
        $runner "$bin" --backend int8 run "${glow[@]}" --expect "$ref/x86-glow-engine" --tolerance 0.006
        if [[ "$triple" == aarch64-* ]]; then
            # A core with the dot-product extension (qemu's "max"): the sdot kernels are
            # chosen, and the property tests compare them (and NEON) with the scalar
            # reference on random convolutions; whole models must keep x86's bits.
            max="qemu-aarch64-static -cpu max"
            # The engine's test binary of the run above (the same flags: nothing rebuilds).
            engine_tests=$(cargo test --profile arm-test --target "$triple" -p edgemed-runtime -p edgemed-engine \
                --lib --bins --tests "${build_std[@]}" --no-run --message-format=json |
                grep -o '"executable":"[^"]*/edgemed_engine-[^"]*"' | cut -d'"' -f4)
            [[ -n "$engine_tests" ]] || { echo "no test binary of edgemed-engine" >&2; exit 1; }
            $max "$engine_tests"
            $max "$bin" --backend int8 run "${qdq[@]}" --expect "$ref/x86-qdq-engine"
            $max "$bin" --backend int8 classify examples/data/pcam -m "$ref/pcam-int8.onnx" --format csv -o "$out-engine-dot.csv" 2>/dev/null
            same_classes "$ref/x86-engine.csv" "$out-engine-dot.csv" 0
            $max "$bin" --backend int8 run "${escnn[@]}" --expect "$ref/x86-escnn-engine"
        fi
    )
    echo "=== $triple: $((SECONDS - t0)) s in all" >&2
done
echo "ARM: tests pass and outputs match x86 on: $targets" >&2
