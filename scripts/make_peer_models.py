#!/usr/bin/env python3
"""FP32 torchvision MobileNetV2s for scripts/bench-peers.sh, with their BatchNormalization nodes kept so that
`edgemed quantize` (data-free: activation ranges from batch-norm statistics) quantizes every activation.

Files (into --out, default target/peers/models/):
  mnv2_x1.0_224.onnx   torchvision mobilenet_v2(width_mult=1.0, num_classes=2), input [1, 3, 224, 224]
  mnv2_x0.25_95.onnx   torchvision mobilenet_v2(width_mult=0.25, num_classes=2), input [1, 3, 95, 95]
Same init as scripts/make_bench_models.py (seed 0; low-pass depthwise kernels, residual-branch BN gamma 0.5,
classifier N(0, 1/1280); BN running statistics from 20 train-mode passes on plausible images), exported with
the TorchScript exporter (dynamo=False, opset 17, do_constant_folding=False: BN nodes stay), input "input",
output "logits", static batch 1. Random weights: these are timing inputs, not classifiers.
The channel counts equal Keras' MobileNetV2(alpha=width) (both round to multiples of 8, last conv 1280), which
is what the LiteRT peer converts.

With --ort-qdq, also ONNX Runtime's own static QDQ files of every benchmarked model (the second table of
bench-peers.sh; onnxruntime.quantization.quantize_static with scripts/make_bench_models.py's settings: QDQ, u8
activations, s8 per-channel weights, MinMax, after quant_pre_process; batch fixed to 1):
  mnv2_x1.0_224-ortqdq.onnx, mnv2_x0.25_95-ortqdq.onnx  16 plausible images (make_bench_models.plausible_images)
  pcam_c4-ortqdq.onnx   models/bundled/pcam-c4-demo.onnx, 16 pcam_synth patches (seed 1) preprocessed as trained
  unet3d-ortqdq.onnx    tests/fixtures/zoo/unet3d.onnx, its fixture window and three flips/quarter turns of it

Run: .venv/bin/python scripts/make_peer_models.py [--out DIR] [--ort-qdq]   (torch, torchvision, onnx, onnxruntime)
"""
import argparse
import contextlib
import io
import sys
from pathlib import Path

import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_bench_models import fix_batch, plausible_images, quantize  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = [(1.0, 224), (0.25, 95)]


def make(width, size, path):
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=2, width_mult=width)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and m.groups > 1:
                m.weight.copy_((1 + 0.15 * torch.randn(m.weight.shape, generator=g)) / 9)
        for blk in model.features:
            if getattr(blk, "use_res_connect", False):
                blk.conv[-1].weight.fill_(0.5)
        torch.nn.init.normal_(model.classifier[1].weight, 0, model.last_channel ** -0.5)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(20):
            model(torch.from_numpy(plausible_images(4, seed=1000 + i, size=size)))
    model.eval()
    x = torch.zeros(1, 3, size, size)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, do_constant_folding=False,
                          input_names=["input"], output_names=["logits"])
    bn = sum(n.op_type == "BatchNormalization" for n in onnx.load(str(path)).graph.node)
    assert bn > 0, f"{path.name}: no BatchNormalization node kept"
    print(f"{path}: {bn} BatchNormalization nodes, {path.stat().st_size} bytes")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "target/peers/models")
    ap.add_argument("--ort-qdq", action="store_true", help="also ONNX Runtime's quantize_static QDQ files")
    a = ap.parse_args()
    a.out = a.out.resolve()  # quantize_static runs in a temporary working directory
    torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    for width, size in MODELS:
        path = a.out / f"mnv2_x{width}_{size}.onnx"
        if not path.exists():
            make(width, size, path)
        if a.ort_qdq:
            ort_qdq(path, a.out / f"mnv2_x{width}_{size}-ortqdq.onnx", plausible_images(16, seed=1, size=size))
    if a.ort_qdq:
        import pcam_synth
        import numpy as np
        images, _ = pcam_synth.generate(16, seed=1)
        x = images[:, :95, :95, :].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        ort_qdq(ROOT / "models/bundled/pcam-c4-demo.onnx", a.out / "pcam_c4-ortqdq.onnx", ((x - 0.5) / 0.25).astype(np.float32))
        w = np.fromfile(ROOT / "tests/fixtures/zoo/unet3d.input.f32", "<f4").reshape(1, 1, 32, 32, 32)
        vols = np.concatenate([w, w[..., ::-1], w[..., ::-1, :], np.rot90(w, 1, (3, 4))]).astype(np.float32)
        ort_qdq(ROOT / "tests/fixtures/zoo/unet3d.onnx", a.out / "unet3d-ortqdq.onnx", np.ascontiguousarray(vols))


def ort_qdq(src, dst, calib):
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        fixed = Path(tmp) / "fixed.onnx"
        fix_batch(src, fixed)
        err = quantize(fixed, dst, calib)
    print(f"{dst}: quantize_static" + ("" if err is None else f" (quant_pre_process failed: {err})"))


if __name__ == "__main__":
    main()
