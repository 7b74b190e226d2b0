#!/usr/bin/env bash
# Creates .venv with the Python peers used to make fixtures and train the demo
# model (never needed to build, run or test edgemed):
#   scripts/setup-python.sh           numpy, onnx, onnxruntime, safetensors, pillow, h5py, scipy
#   scripts/setup-python.sh --torch   also torch, torchvision and onnxscript (large: ~5 GB with CUDA wheels)
#   scripts/setup-python.sh --zoo     --torch, plus escnn, monai and nibabel for scripts/make_zoo.py
#                                     (escnn without its py3nj dependency, which needs a Fortran compiler;
#                                     lie-learn needs numpy 1.x, so numpy stays at 1.26.4)
# Versions are the ones the committed fixtures were made with.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -m venv --help >/dev/null 2>&1; then
    echo "python3 with the venv module is needed (Debian: apt-get install python3-venv)" >&2
    exit 1
fi
[[ -d .venv ]] || python3 -m venv .venv
pip=".venv/bin/python -m pip"
$pip install -q --upgrade pip
$pip install -q numpy==1.26.4 onnx==1.23.2 onnxruntime==1.31.1 safetensors==0.8.0 pillow==13.0.0 h5py==3.16.0 scipy==1.17.1
echo "installed: numpy onnx onnxruntime safetensors pillow h5py scipy into .venv"
if [[ "${1:-}" == "--torch" || "${1:-}" == "--zoo" ]]; then
    $pip install -q torch==2.15.0 onnxscript==0.7.2
    $pip install -q --no-deps torchvision==0.29.2
    echo "installed: torch torchvision onnxscript into .venv"
fi
if [[ "${1:-}" == "--zoo" ]]; then
    $pip install -q --no-deps escnn==1.0.11 monai==1.6.1 nibabel==5.4.2 importlib-resources==7.1.0
    $pip install -q numpy==1.26.4 scipy==1.17.1 joblib==1.6.0 pymanopt==2.2.1 autograd==1.9.1 lie-learn==0.0.2
    echo "installed: escnn monai nibabel (and escnn's scipy joblib pymanopt autograd lie-learn) into .venv"
fi
