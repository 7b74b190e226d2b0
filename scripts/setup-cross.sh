#!/usr/bin/env bash
# Installs what building and testing edgemed-run for ARM needs without containers
# (README, "ARM boards"): Debian's multiarch Rust (rustc-web with the arm64 std, and
# the std sources for armv7's build-std), the cross gcc and libc of each target, and
# qemu-user to run the results. Does nothing when all of it is there.
set -euo pipefail
packages=(rustc-web libstd-rust-web-dev:arm64 rust-web-src
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
    qemu-user-static)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
echo "installing the ARM cross toolchain: ${missing[*]}" >&2
sudo=""
[[ "$(id -u)" -ne 0 ]] && sudo=sudo
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $sudo dpkg --add-architecture arm64
fi
if ! { $sudo apt-get update -q && $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"; } >&2; then
    echo "could not install ${missing[*]}; see README \"ARM boards\", or run CI with EDGEMED_SKIP_ARM=1" >&2
    exit 1
fi
