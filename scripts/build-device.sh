#!/usr/bin/env bash
# Builds the device binary `edgemed-run` for a board profile in targets/ and prints
# its stripped size.
#
#   scripts/build-device.sh BOARD        # BOARD: rpi4, rpi-armv7, jetson-orin, x86_64-cuda
#
# With a container engine (docker/podman) and `cross` installed it runs `cross build`
# (cross.toml); otherwise Debian's multiarch Rust (rustc-web, libstd-rust-web-dev:arm64,
# rust-web-src, gcc-<triple>; see README "ARM boards"). Where Debian's armhf std did not
# install (scripts/setup-cross.sh), std is built from rust-web-src (-Zbuild-std).
# The binary lands in target/device/<triple>/device/edgemed-run.
set -euo pipefail
cd "$(dirname "$0")/.."
board="${1:?usage: scripts/build-device.sh BOARD (one of: $(ls targets/*.toml | xargs -n1 basename | sed 's/\.toml$//' | tr '\n' ' '))}"
profile="targets/$board.toml"
[[ -f "$profile" ]] || { echo "no board profile $profile" >&2; exit 1; }
key() { sed -n "s/^$1 *= *\"\(.*\)\"/\1/p" "$profile"; }
triple=$(key target)
rustflags=$(key rustflags)
features=$(key features)
[[ -n "$triple" ]] || { echo "$profile names no target" >&2; exit 1; }
feature_args=(--no-default-features --features "${features:-cli,bundled-model,ort,pcam-h5,tract}")
export CARGO_TARGET_DIR=target/device
upper=$(echo "$triple" | tr 'a-z-' 'A-Z_')
export "CARGO_TARGET_${upper}_RUSTFLAGS=$rustflags"

if command -v cross >/dev/null && { docker info >/dev/null 2>&1 || podman info >/dev/null 2>&1; }; then
    cross build --profile device --target "$triple" -p edgemed-runtime --bin edgemed-run "${feature_args[@]}"
elif [[ "$triple" == x86_64-* ]]; then
    cargo build --profile device --target "$triple" -p edgemed-runtime --bin edgemed-run "${feature_args[@]}"
else
    source scripts/cross-env.sh
    cross_env "$triple"
    # The device binary aborts on panic, so std is built with panic_abort alone.
    if [[ ${#build_std[@]} -gt 0 ]]; then build_std=(-Zbuild-std=std,panic_abort); fi
    cargo build --profile device --target "$triple" -p edgemed-runtime --bin edgemed-run "${feature_args[@]}" "${build_std[@]}"
fi
bin="$CARGO_TARGET_DIR/$triple/device/edgemed-run"
size=$(stat -c %s "$bin")
printf '%s: %s, %.1f MB stripped (%s)\n' "$board" "$bin" "$(echo "$size / 1000000" | bc -l)" "$triple"
