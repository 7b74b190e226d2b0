#!/usr/bin/env python3
"""INT8 models written by `edgemed quantize`, checked with ONNX Runtime's integer kernels
(a peer measurement for the issue notes; never needed by the tests).

  ort_check_int8.py rotation FP32.onnx [more.onnx ...]
      quantizes each model per tensor and per channel (field size from its metadata),
      then prints max |f(rot90 x) - f(x)| / max |f(x)| over 16 masked random inputs and
      3 quarter turns, for ONNX Runtime with optimisations (integer kernels) and without
      (float simulation of QDQ).
  ort_check_int8.py sqnr DIR
      DIR as written by scripts/make_dfq_models.py: quantizes DIR/mnv2_spread.onnx with
      edgemed's data-free DFQ (per tensor at 6 and 3 sigma, per channel) and naive per
      tensor, and prints logit SQNR and top-1 agreement against DIR's FP32 logits, next to
      DIR/baselines.json.

Needs a release build of the converter (cargo build --release -p edgemed-converter).
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
EDGEMED = ROOT / "target/release/edgemed"


def quantize(src, dst, *flags):
    subprocess.run([str(EDGEMED), "quantize", str(src), "-o", str(dst), *flags], check=True, capture_output=True)


def session(path, optimized):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not optimized:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def rotation(models):
    rng = np.random.default_rng(0)
    for src in map(Path, models):
        s = session(src, True)
        side = s.get_inputs()[0].shape[-1]
        c = (side - 1) / 2
        yy, xx = np.mgrid[0:side, 0:side]
        mask = (yy - c) ** 2 + (xx - c) ** 2 <= (side / 2) ** 2
        x = ((rng.uniform(0, 1, (16, 3, side, side)) - 0.5) / 0.25 * mask).astype(np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            for label, flags in [("per tensor", []), ("per channel", ["--per-channel"])]:
                q = Path(tmp) / "q.onnx"
                quantize(src, q, *flags)
                for optimized in (True, False):
                    sq = session(q, optimized)
                    name = sq.get_inputs()[0].name
                    y = sq.run(None, {name: x})[0]
                    err = max(np.abs(y - sq.run(None, {name: np.ascontiguousarray(np.rot90(x, k, axes=(2, 3)))})[0]).max() for k in (1, 2, 3))
                    kind = "integer kernels" if optimized else "float simulation"
                    print(f"{src.name} {label}, ONNX Runtime {kind}: rotation error {err / np.abs(y).max():.2e}")


def sqnr(directory):
    d = Path(directory)
    x = np.fromfile(d / "eval_inputs.f32", dtype="<f4").reshape(-1, 3, 95, 95)
    ref = np.fromfile(d / "mnv2_spread.fp32_logits.f32", dtype="<f4").reshape(len(x), -1)
    variants = {
        "edgemed DFQ per tensor (6 sigma)": [],
        "edgemed DFQ per tensor (3 sigma)": ["--range-sigmas", "3"],
        "edgemed DFQ per channel (6 sigma)": ["--per-channel"],
        "edgemed naive per tensor": ["--no-cle", "--no-bias-absorption", "--no-bias-correction"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for label, flags in variants.items():
            q = Path(tmp) / "q.onnx"
            quantize(d / "mnv2_spread.onnx", q, *flags)
            y = session(q, True).run(None, {"input": x})[0]
            s = 10 * np.log10((ref ** 2).sum() / ((ref - y) ** 2).sum())
            print(f"{label}: SQNR {s:.2f} dB, top-1 agreement {(y.argmax(1) == ref.argmax(1)).mean():.3f}")
    for name, r in json.loads((d / "baselines.json").read_text())["results"].items():
        r = r.get("int8_pertensor", r)  # AIMET's entry nests its INT8 result
        print(f"{name} (baselines.json): SQNR {r.get('sqnr_db')} dB, top-1 agreement {r.get('top1_agreement')}")


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("rotation", "sqnr"):
        sys.exit(__doc__)
    rotation(sys.argv[2:]) if sys.argv[1] == "rotation" else sqnr(sys.argv[2])
