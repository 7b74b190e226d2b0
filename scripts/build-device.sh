#!/usr/bin/env bash
# Builds the device binary `edgemed-run` for a board profile in targets/ and prints
# its stripped size.
#
#   scripts/build-device.sh BOARD        # BOARD: rpi4, rpi-armv7, jetson-orin, x86_64-cuda
#
# With a container engine (docker/podman) and `cross` installed it runs `cross build`
# (cross.toml); otherwise Debian's multiarch Rust (rustc-web, libstd-rust-web-dev:arm64,
# rust-web-src, gcc-<triple>; see README "ARM boards"). armv7 has no packaged std that
# installs cleanly, so std is built from rust-web-src (-Zbuild-std).
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
feature_args=(--no-default-features --features "${features:-cli,bundled-model,ort}")
export CARGO_TARGET_DIR=target/device
upper=$(echo "$triple" | tr 'a-z-' 'A-Z_')
export "CARGO_TARGET_${upper}_RUSTFLAGS=$rustflags"

if command -v cross >/dev/null && { docker info >/dev/null 2>&1 || podman info >/dev/null 2>&1; }; then
    cross build --profile device --target "$triple" -p edgemed-runtime --bin edgemed-run "${feature_args[@]}"
elif [[ "$triple" == x86_64-* ]]; then
    cargo build --profile device --target "$triple" -p edgemed-runtime --bin edgemed-run "${feature_args[@]}"
else
    gcc_prefix=$(case "$triple" in
        aarch64-unknown-linux-gnu) echo aarch64-linux-gnu ;;
        armv7-unknown-linux-gnueabihf) echo arm-linux-gnueabihf ;;
        *) echo "" ;;
    esac)
    [[ -n "$gcc_prefix" ]] || { echo "no cross toolchain recipe for $triple" >&2; exit 1; }
    for tool in /usr/bin/rustc "$gcc_prefix-gcc"; do
        command -v "$tool" >/dev/null || { echo "$tool missing: install the cross toolchain (README, \"ARM boards\")" >&2; exit 1; }
    done
    # Debian's rustc (a different compiler than the host's: separate target dir above).
    export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
    export "CARGO_TARGET_${upper}_LINKER=$gcc_prefix-gcc"
    export "CC_${triple//-/_}=$gcc_prefix-gcc" "AR_${triple//-/_}=$gcc_prefix-ar"
    build_std=()
    if [[ ! -d "/usr/lib/rustlib/$triple" ]]; then
        # No packaged std for this target: build it from rust-web-src.
        export RUSTC_BOOTSTRAP=1
        build_std=(-Zbuild-std=std,panic_abort)
    fi
    cargo build --profile device --target "$triple" -p edgemed-runtime --bin edgemed-run "${feature_args[@]}" "${build_std[@]}"
fi
bin="$CARGO_TARGET_DIR/$triple/device/edgemed-run"
size=$(stat -c %s "$bin")
printf '%s: %s, %.1f MB stripped (%s)\n' "$board" "$bin" "$(echo "$size / 1000000" | bc -l)" "$triple"
