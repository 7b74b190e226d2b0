#!/usr/bin/env bash
# Puts ONNX Runtime's shared library, the CPU build from the `onnxruntime` pip wheel,
# in target/onnxruntime/ and prints its path. scripts/test.sh uses it for the ONNX
# Runtime backend's tests; users pass it with --ort-lib or ORT_DYLIB_PATH.
# For CUDA take the library from the `onnxruntime-gpu` wheel instead (same layout).
#
#   scripts/setup-ort.sh            # this machine's architecture -> target/onnxruntime/
#   scripts/setup-ort.sh aarch64    # the aarch64 wheel (ARM tests under qemu) -> target/onnxruntime/aarch64/
set -euo pipefail
cd "$(dirname "$0")/.."
version=1.31.1  # keep in step with the ort crate's api-31 feature (Cargo.toml)
arch="${1:-$(uname -m)}"
dest=target/onnxruntime
platform=()
if [[ "$arch" != "$(uname -m)" ]]; then
    case "$arch" in
        aarch64) platform=(--platform manylinux_2_28_aarch64) ;;
        *) echo "no onnxruntime wheel for $arch (PyPI has x86_64 and aarch64 Linux wheels)" >&2; exit 1 ;;
    esac
    dest="target/onnxruntime/$arch"
fi
lib="$dest/libonnxruntime.so.$version"
if [[ ! -f "$lib" ]]; then
    sudo=""
    [[ "$(id -u)" -ne 0 ]] && sudo=sudo
    if ! python3 -m pip --version >/dev/null 2>&1; then
        echo "installing python3-pip (to fetch the onnxruntime wheel)" >&2
        { $sudo apt-get update -q && $sudo apt-get install -y -q --no-install-recommends python3-pip; } >&2
    fi
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download -q --no-deps --only-binary=:all: "${platform[@]}" "onnxruntime==$version" -d "$tmp" >&2
    mkdir -p "$dest"
    # The wheel is a zip; only the C library (and its provider bridge) is needed.
    python3 - "$tmp" "$dest" <<'PY'
import pathlib, sys, zipfile
src, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(src.glob("onnxruntime-*.whl"))
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = name.rsplit("/", 1)[-1]
        if name.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime"):
            part = dest / (base + ".part")
            part.write_bytes(z.read(name))
            part.chmod(0o755)
            part.rename(dest / base)
PY
fi
[[ -f "$lib" ]] || { echo "the onnxruntime $version wheel held no $lib" >&2; exit 1; }
echo "$PWD/$lib"
