"""Reference outputs for edgemed's tests, computed by ONNX Runtime (an independent
implementation) on the models in tests/fixtures, written as raw little-endian
float32 files plus tests/fixtures/manifest.json.

- FP32 models: outputs of onnxruntime's CPU provider, all optimisations on.
- An INT8 QDQ model made by onnxruntime.quantization.quantize_static (u8
  activations, s8 per-channel weights) from the C4 fixture, with its output
  quantization step recorded: runtimes may legitimately differ by rounding flips.
- If torch and the bundled demo model's weights are available, the logits of the
  torch training model (scripts/train_pcam.py) on the sample patches, to check that
  the Rust exporter and the training code implement the same network.

Usage: python scripts/make_fixtures.py tests/fixtures
"""
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

ROOT = Path(__file__).resolve().parent.parent
S = 95


def masked_inputs(seed, batch):
    rng = np.random.default_rng(seed)
    c = (S - 1) / 2
    yy, xx = np.mgrid[0:S, 0:S]
    mask = ((yy - c) ** 2 + (xx - c) ** 2 <= (S / 2) ** 2).astype(np.float32)
    return (rng.uniform(-2, 2, size=(batch, 3, S, S)).astype(np.float32) * mask)


def run(model_path, x, optimize=True):
    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def write(path, a):
    np.ascontiguousarray(a, dtype="<f4").tofile(path)


class RandomReader(CalibrationDataReader):
    def __init__(self, name, n=16):
        self.batches = iter([{name: masked_inputs(100 + i, 1)} for i in range(n)])

    def get_next(self):
        return next(self.batches, None)


def output_step(model_path):
    """Scale of the DequantizeLinear that produces the graph output."""
    m = onnx.load(str(model_path))
    out = m.graph.output[0].name
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    for n in m.graph.node:
        if n.output[0] == out and n.op_type == "DequantizeLinear":
            return float(inits[n.input[1]])
    raise SystemExit(f"{model_path}: output is not produced by DequantizeLinear")


def main(out_dir):
    out = Path(out_dir)
    cases = []
    for i, name in enumerate(["eqmnv2_c1", "eqmnv2_c4", "eqmnv2_c8", "eqmnv2_c12", "eqmnv2_c4_folded"]):
        x = masked_inputs(i, 2)
        y = run(out / f"{name}.onnx", x)
        write(out / f"{name}.input.f32", x)
        write(out / f"{name}.ort.f32", y)
        cases.append({"model": f"{name}.onnx", "input": f"{name}.input.f32", "input_shape": list(x.shape),
                      "output": f"{name}.ort.f32", "output_shape": list(y.shape)})
        print(f"{name}: logits {y.ravel()[:4]} ...")

    qdq = out / "eqmnv2_c4_qdq.onnx"
    # From the folded model, as ONNX Runtime's quantization pre-processing would leave it.
    quantize_static(str(out / "eqmnv2_c4_folded.onnx"), str(qdq), RandomReader("input"), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    x = masked_inputs(10, 8)
    # Unoptimised: ONNX Runtime then computes QDQ exactly as the ONNX spec defines it
    # (dequantize, float op, quantize), the semantics tract implements.
    y = run(qdq, x, optimize=False)
    write(out / "eqmnv2_c4_qdq.input.f32", x)
    write(out / "eqmnv2_c4_qdq.ort.f32", y)
    step = output_step(qdq)
    # How far ONNX Runtime's optimised (integer kernels) run lands from its unoptimised one:
    # the rounding-flip spread any second implementation is allowed.
    spread = float(np.abs(run(qdq, x, optimize=True) - y).max() / step)
    cases.append({"model": qdq.name, "input": "eqmnv2_c4_qdq.input.f32", "input_shape": list(x.shape),
                  "output": "eqmnv2_c4_qdq.ort.f32", "output_shape": list(y.shape), "output_step": step,
                  "ort_self_spread_steps": spread})
    print(f"eqmnv2_c4_qdq: logits {y.ravel()[:4]} ..., output step {step}, ORT self-spread {spread:.2f} steps")

    (out / "manifest.json").write_text(json.dumps({"generator": "scripts/make_fixtures.py",
                                                   "onnxruntime": ort.__version__, "cases": cases}, indent=1) + "\n")
    pcam_h5_fixture(out)
    torch_logits_of_samples(out)


def pcam_h5_fixture(out):
    """The first four sample patches in PCam's HDF5 layout (tests read both and compare)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import pcam_synth
    from PIL import Image

    files = [ROOT / f"examples/data/pcam/patch_{i:03d}.png" for i in range(4)]
    if not all(f.exists() for f in files):
        print("sample patches missing (scripts/pcam_synth.py --samples): skipping the HDF5 fixture")
        return
    labels = {l.split(",")[0]: int(l.split(",")[1]) for l in (ROOT / "examples/data/pcam/labels.csv").read_text().split()[1:]}
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    pcam_synth.write_h5(str(out / "pcam_tiny"), images, np.array([labels[f.name] for f in files]))
    print("pcam_tiny_{x,y}.h5 written")


def torch_logits_of_samples(out):
    weights = ROOT / "models/bundled/pcam-c4-demo.safetensors"
    try:
        import torch  # noqa: F401
    except ImportError:
        print("torch not installed: skipping the training-model parity fixture")
        return
    if not weights.exists():
        print(f"{weights} missing (train it with scripts/train_pcam.py): skipping the training-model parity fixture")
        return
    sys.path.insert(0, str(ROOT / "scripts"))
    import train_pcam
    from PIL import Image

    model = train_pcam.load_model(weights).eval()
    files = sorted((ROOT / "examples/data/pcam").glob("*.png"))
    imgs = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        logits = model(train_pcam.to_input(imgs)).numpy()
    write(out / "pcam_c4_demo.torch_logits.f32", logits)
    (out / "pcam_c4_demo.torch_logits.json").write_text(json.dumps({"files": [f.name for f in files], "shape": list(logits.shape)}) + "\n")
    print(f"torch logits of {len(files)} sample patches written")


if __name__ == "__main__":
    main(sys.argv[1])
