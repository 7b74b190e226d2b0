#!/usr/bin/env bash
# Installs what building and testing edgemed-run for ARM needs without containers
# (README, "ARM boards"): Debian's multiarch Rust (rustc-web with the arm64 and armhf
# std), the cross gcc and libc of each target, and qemu-user to run the results. Does
# nothing when all of it is there.
#
# The armhf std comes from Debian's armhf index, which has been seen inconsistent
# ("File has unexpected size"; apt-get update then fails for every architecture). So it
# is tried last and alone: where it fails, the armhf architecture is removed again and
# armv7 builds std from rust-web-src instead (-Zbuild-std; scripts/cross-env.sh).
set -euo pipefail
packages=(rustc-web libstd-rust-web-dev:arm64 rust-web-src
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
    qemu-user-static)
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
for p in "${packages[@]}"; do
    installed "$p" || missing+=("$p")
done
sudo=""
[[ "$(id -u)" -ne 0 ]] && sudo=sudo
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "installing the ARM cross toolchain: ${missing[*]}" >&2
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        $sudo dpkg --add-architecture arm64
    fi
    if ! { $sudo apt-get update -q && $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"; } >&2; then
        echo "could not install ${missing[*]}; see README \"ARM boards\", or run CI with EDGEMED_SKIP_ARM=1" >&2
        exit 1
    fi
fi
# armv7's std (optional: build-std otherwise).
armhf_std=libstd-rust-web-dev:armhf
if ! installed "$armhf_std"; then
    echo "installing Debian's armv7 std ($armhf_std)" >&2
    added=0
    if ! dpkg --print-foreign-architectures | grep -qx armhf; then
        $sudo dpkg --add-architecture armhf
        added=1
    fi
    if ! { $sudo apt-get update -q && $sudo apt-get install -y -q --no-install-recommends "$armhf_std"; } >&2; then
        echo "no armhf std from apt: armv7 builds std from source (slower)" >&2
        if [[ $added -eq 1 ]]; then
            $sudo dpkg --remove-architecture armhf || true
            $sudo apt-get update -q >&2 || true
        fi
    fi
fi
