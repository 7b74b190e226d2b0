"""Exporter matrix for the converter's tests: one torchvision-style MobileNetV2
(width 0.25, 2 classes, 95x95 input, random weights, batch-norm statistics
re-estimated on random data) exported the ways users export it:

- legacy13_bn:      torch.onnx.export(dynamo=False, opset 13, do_constant_folding=False): BatchNormalization kept
- legacy17_folded:  torch.onnx.export(dynamo=False, opset 17, do_constant_folding=True): BN folded into Conv
- dynamo18_bn:      torch.onnx.export(dynamo=True, opset 18, optimize=False): BN kept, opset 18 ops
- dynamo18_folded:  torch.onnx.export(dynamo=True, opset 18): the exporter's default optimisation

Writes tests/fixtures/exporters/{name}.onnx, input.f32 [2, 3, 95, 95], torch_logits.f32
[2, 2] (torch's own outputs, the reference) and manifest.json.
Needs torch, torchvision, onnxscript (scripts/setup-python.sh --torch).
Usage: python scripts/make_exporter_matrix.py
"""
import json
from pathlib import Path

import numpy as np
import onnx
import torch
import torchvision

OUT = Path(__file__).resolve().parent.parent / "tests/fixtures/exporters"


def model():
    torch.manual_seed(0)
    m = torchvision.models.mobilenet_v2(width_mult=0.25, num_classes=2)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None  # cumulative average over the estimation batches
            with torch.no_grad():
                mod.weight.mul_(torch.exp(torch.randn_like(mod.weight) * 0.7))
                mod.bias.normal_(0.3, 0.5)
    m.train()
    with torch.no_grad():
        for _ in range(8):
            m(torch.randn(16, 3, 95, 95))
    return m.eval()


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    m = model()
    x = torch.from_numpy(np.random.default_rng(1).uniform(-2, 2, (2, 3, 95, 95)).astype(np.float32))
    with torch.no_grad():
        y = m(x).numpy()
    x.numpy().astype("<f4").tofile(OUT / "input.f32")
    y.astype("<f4").tofile(OUT / "torch_logits.f32")
    dyn = {"input": {0: "batch"}, "logits": {0: "batch"}}
    cases = {}
    for name, kwargs in {
        "legacy13_bn": dict(dynamo=False, opset_version=13, do_constant_folding=False, dynamic_axes=dyn),
        "legacy17_folded": dict(dynamo=False, opset_version=17, do_constant_folding=True, dynamic_axes=dyn),
        "dynamo18_bn": dict(dynamo=True, opset_version=18, optimize=False),
        "dynamo18_folded": dict(dynamo=True, opset_version=18),
    }.items():
        path = OUT / f"{name}.onnx"
        torch.onnx.export(m, (x,), str(path), input_names=["input"], output_names=["logits"], external_data=False, **kwargs)
        mp = onnx.load(str(path))
        ops = sorted({n.op_type for n in mp.graph.node})
        cases[name] = {"opset": mp.opset_import[0].version, "batch_norm_nodes": sum(n.op_type == "BatchNormalization" for n in mp.graph.node), "ops": ops}
        print(name, cases[name]["opset"], "BN nodes:", cases[name]["batch_norm_nodes"], f"{path.stat().st_size / 1e6:.2f} MB")
    (OUT / "manifest.json").write_text(json.dumps({"generator": "scripts/make_exporter_matrix.py", "torch": torch.__version__, "input_shape": [2, 3, 95, 95], "cases": cases}, indent=1) + "\n")


if __name__ == "__main__":
    main()
