#!/usr/bin/env python3
"""INT8 fixtures for edgemed's integer engine on the volumetric models: ONNX Runtime's static QDQ form of
the 3-D U-Net, the aging twin's decoder, the 3-D ESPCN and the 2-D U-Net, each with a seeded test input
and ONNX Runtime's output on it, written to tests/fixtures/int8/. Everything is seeded and every
intermediate file goes to a temporary folder, so a rerun rewrites the same bytes.

How the models are made
-----------------------
1. The FP32 model with its symbolic batch dim fixed to 1 on the graph input and output
   (make_bench_models.fix_batch: value_info dropped, onnx strict shape inference re-run, so every
   intermediate shape is static with batch 1 too).
2. onnxruntime.quantization.shape_inference.quant_pre_process on it (when it fails the raw model is
   quantized; the manifest says which).
3. onnxruntime.quantization.quantize_static: QuantFormat.QDQ, activations QUInt8 (asymmetric), weights
   QInt8 per channel (symmetric), reduce_range False, MinMax calibration, one sample per calibration batch
   (make_bench_models.Reader), default extra_options, no excluded nodes.
4. onnx shape inference on the QDQ model (ORT's quantizer drops some value_info); every graph input,
   output and value_info is then checked to be fully static with batch 1.

Calibration and test inputs are the repository's sample inputs plus noise-perturbed copies
(make_bench_models.perturbed_volumes: x and copies x + N(0, 0.1 std(x)), numpy default_rng(seed)).
The test input is always a copy the calibration did not see (another seed).

Files
-----
unet3d_qdq.onnx
    tests/fixtures/unet/unet3d.onnx (opset 13 MONAI-style 3-D U-Net: Conv, InstanceNormalization, PReLU,
    ConvTranspose, Concat, Add), input "input" [1, 1, 32, 32, 32], output "logits" [1, 3, 32, 32, 32].
    Calibrated exactly as scripts/make_bench_models.py calibrates its unet3d_qdq.onnx:
    tests/fixtures/unet/unet3d_window_input.npy plus 15 perturbed copies (seed 2); test input: the
    perturbed copy of seed 99 (the benchmark's held-out volume).
glow_decoder_qdq.onnx
    DIR/decoder.onnx of `edgemed export aging-twin --weights tests/fixtures/glow/glow.safetensors --grid 16
    -o DIR` (the analytic inverse of the 3-D GLOW: Slice, Reshape, Transpose, Concat, 3-D Conv, Relu,
    Sigmoid, Exp, Add/Sub/Mul/Div), input "latent" [1, 4096], output "output" [1, 1, 16, 16, 16].
    Calibrated on the two rows of tests/fixtures/glow/latent.npy ([2, 4096]) plus 7 perturbed copies of
    each (seeds 3 and 4); test input: row 0 perturbed with seed 99.
espcn3d_qdq.onnx
    tests/fixtures/espcn/espcn3d_p8.onnx (valid 3-D convs 3/1/3 + ReLU, pixel shuffle r = 2 as
    Reshape/Transpose/Reshape; patch 8, halo 2), input "input" [1, 1, 12, 12, 12], output "output"
    [1, 1, 16, 16, 16]. Its input is a fixed 12^3 patch while tests/fixtures/espcn/espcn_input.npy is a
    [14, 12, 10] volume, so the inputs are the patches the runtime feeds it (runtime/src/upsample.rs:
    interior patches of 8 starting every 8 voxels with the last flush with the end, read with a halo of 2,
    edge voxels repeated outside the volume; 2 x 2 x 2 = 8 patches per volume). Calibrated on the patches
    of espcn_input.npy and of one perturbed copy (seed 5), 16 in all; test input: the first patch (origin)
    of the perturbed copy of seed 99.
unet2d_qdq.onnx
    tests/fixtures/unet/unet2d.onnx (2-D U-Net: Conv, BatchNormalization, Relu, ConvTranspose, Concat,
    Add), input "input" [1, 1, 48, 40], output "logits" [1, 2, 48, 40]. Calibrated on
    tests/fixtures/unet/unet2d_input.npy plus 15 perturbed copies (seed 6); test input: the perturbed copy
    of seed 99.
NAME.input.f32
    The test input [1, ...], raw little-endian float32, C order.
NAME.ort.f32
    ONNX Runtime's output of NAME.onnx on it, raw little-endian float32, C order: CPU execution provider,
    one intra-op and one inter-op thread, default graph optimisations (ORT_ENABLE_ALL: QDQ groups run as
    integer kernels), the settings edgemed's tests use.
manifest.json
    Per model: file names, input/output names and shapes, output_step (scale of the DequantizeLinear that
    writes the graph output, null if none) and its zero point, how it was calibrated, the QDQ graph's op
    counts (ops: all nodes; qdq_ops: the ops wrapped in Q/DQ, i.e. whose data inputs all come from
    DequantizeLinear and whose outputs all go to QuantizeLinear; float_ops / float_nodes: the others, which
    see float tensors on some side; ort_optimised_ops: the graph ORT actually runs after its optimisations,
    where the QLinear* ops are integer kernels and everything else, wrapped or not, runs in float between a
    DequantizeLinear and a QuantizeLinear), the QDQ-vs-FP32 comparison on
    the test input (SQNR = 10 log10(sum y^2 / sum (y - yq)^2) and max |y - yq|, both models in ONNX
    Runtime with the settings above), how far ORT's unoptimised run (float simulation of QDQ, the ONNX
    spec semantics) lands from the optimised one, in output steps, and the package versions.

What ORT made of them (onnxruntime 1.31.1, x86-64 with AVX-512 VNNI; numbers in manifest.json)
--------------------------------------------------------------------------------------------------
- Integer kernels (ORT_ENABLE_ALL) for Conv, Add, Concat, Mul, Sigmoid (com.microsoft.QLinear*), and
  Slice/Reshape/Transpose on uint8 where the Q/DQ around them share a scale. Wrapped in Q/DQ but run in
  float by ORT: InstanceNormalization, PRelu, ConvTranspose, Exp. Not quantized at all (float islands):
  Div and Sub (the glow decoder's inverse coupling (z2 / sigmoid(s + 2)) - t), and the glow decoder's
  three Slice + Reshape of the latent (the graph input is only quantized if its consumer is).
- quant_pre_process folds unet2d's 2 BatchNormalization; quantize_static drops every Relu after a conv
  (unet2d 9, espcn 2: the u8 range of the conv output starts at 0). unet3d's PRelu stays.
- SQNR against FP32 on the test input: unet3d 26.5 dB, glow decoder 19.1 dB, espcn 38.4 dB, unet2d 34.0 dB.
  The glow decoder is the sensitive one, and not because of one node: the FP32 decoder turns
  N(0, 0.0037) noise on the latent (39 dB, about one 8-bit step) into 26 dB at the output; excluding any
  single node from quantization moves the SQNR by less than 1 dB (best: the top prior's Mul, 20.0 dB),
  excluding every Conv gives 19.7 dB, every Mul 20.1 dB. So the default is kept and nothing is excluded.
- ORT optimised (integer kernels) vs unoptimised (float simulation of QDQ): equal on the glow decoder,
  espcn and unet2d; up to 5 output steps on unet3d, where 1-step rounding flips of the first convs grow
  through the InstanceNorm + PRelu levels (measured per QuantizeLinear: 1 step at level 2, 4-5 at the end).
  A second implementation should expect that spread there (ort_unoptimised_max_abs_diff_steps).

Run: /work/venv/bin/python scripts/make_int8_fixtures.py [--edgemed PATH] [--out DIR]
(onnx, onnxruntime, numpy, and torch through make_bench_models; CPU only. --edgemed is the converter
binary, default target/release/edgemed; it only exports the aging twin's decoder.)
"""
import argparse
import hashlib
import json
import logging
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.dont_write_bytecode = True  # no scripts/__pycache__ from the import below
from make_bench_models import SETTINGS, fix_batch, perturbed_volumes  # noqa: E402
from make_bench_models import quantize as quantize_qdq  # noqa: E402

FIX = ROOT / "tests/fixtures"
TEST_SEED = 99  # the perturbed copy every test input is (make_bench_models' held-out seed)
TEST_DESC = f"the copy x + N(0, 0.1 std(x)) of seed {TEST_SEED} (not in the calibration set)"
N_CALIB = 16
ESPCN_PATCH, ESPCN_HALO = 8, 2  # espcn3d_p8.onnx: metadata edgemed.receptive_halo, input 12 = 8 + 2 * 2

# --- inputs ---------------------------------------------------------------------------

def unet3d_inputs():
    x = np.load(FIX / "unet/unet3d_window_input.npy").astype(np.float32)
    desc = ("tests/fixtures/unet/unet3d_window_input.npy + 15 copies x + N(0, 0.1 std(x)) (seed 2), "
            "as scripts/make_bench_models.py")
    return perturbed_volumes(x, N_CALIB, seed=2), perturbed_volumes(x, 2, seed=TEST_SEED)[1:], desc, TEST_DESC


def glow_inputs():
    z = np.load(FIX / "glow/latent.npy").astype(np.float32)
    assert z.shape == (2, 4096), z.shape
    calib = np.concatenate([perturbed_volumes(z[r:r + 1], N_CALIB // 2, seed=3 + r) for r in range(len(z))])
    desc = "the 2 rows of tests/fixtures/glow/latent.npy + 7 copies x + N(0, 0.1 std(x)) of each (seeds 3, 4)"
    return calib, perturbed_volumes(z[:1], 2, seed=TEST_SEED)[1:], desc, f"row 0 of latent.npy, {TEST_DESC}"


def starts(n, patch):
    """Patch starts along one axis as runtime/src/upsample.rs: every `patch`, the last flush with the end."""
    if n <= patch:
        return [0]
    return list(range(0, n - patch, patch)) + [n - patch]


def espcn_patches(vol):
    """The model inputs [k, 1, P + 2 halo, ...] the runtime reads from a volume [D, H, W] (edge-clamped)."""
    p, h = ESPCN_PATCH, ESPCN_HALO
    out = []
    for x0 in starts(vol.shape[0], p):
        for y0 in starts(vol.shape[1], p):
            for z0 in starts(vol.shape[2], p):
                idx = [np.clip(np.arange(s - h, s + p + h), 0, n - 1) for s, n in zip((x0, y0, z0), vol.shape)]
                out.append(vol[np.ix_(*idx)])
    return np.stack(out)[:, None].astype(np.float32)


def espcn_inputs():
    v = np.load(FIX / "espcn/espcn_input.npy").astype(np.float32)
    assert v.shape == (1, 1, 14, 12, 10), v.shape
    calib = np.concatenate([espcn_patches(c[0]) for c in perturbed_volumes(v, 2, seed=5)])
    test = espcn_patches(perturbed_volumes(v, 2, seed=TEST_SEED)[1, 0])[:1]
    desc = ("the 8 runtime patches (interior 8, halo 2, edge-clamped) of tests/fixtures/espcn/espcn_input.npy "
            "[14, 12, 10] and of one copy x + N(0, 0.1 std(x)) (seed 5)")
    test_desc = f"the first patch (origin, edge-clamped halo) of {TEST_DESC} of the volume"
    return calib, test, desc, test_desc


def unet2d_inputs():
    x = np.load(FIX / "unet/unet2d_input.npy").astype(np.float32)
    desc = "tests/fixtures/unet/unet2d_input.npy + 15 copies x + N(0, 0.1 std(x)) (seed 6)"
    return perturbed_volumes(x, N_CALIB, seed=6), perturbed_volumes(x, 2, seed=TEST_SEED)[1:], desc, TEST_DESC


# --- models ---------------------------------------------------------------------------

def export_glow_decoder(edgemed, tmp):
    out = Path(tmp) / "aging-twin"
    cmd = [str(edgemed), "export", "aging-twin", "--weights", str(FIX / "glow/glow.safetensors"), "--grid", "16",
           "--output-dir", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    return out / "decoder.onnx"


def quantize(src, dst, calib, exclude):
    """make_bench_models.quantize (SETTINGS), then static shapes checked; returns the pre-processing note."""
    error = quantize_qdq(src, dst, calib, exclude)
    note = "ok" if error is None else f"failed ({error}); the raw model was quantized"
    # Shapes of every tensor, batch 1 (the quantizer keeps only some value_info).
    m = onnx.load(str(dst))
    del m.graph.value_info[:]
    m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    onnx.checker.check_model(m)
    for v in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info):
        dims = v.type.tensor_type.shape.dim
        assert v.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") and d.dim_value > 0 for d in dims), \
            f"{dst.name}: {v.name} has no static shape"
    for v in list(m.graph.input) + list(m.graph.output):
        assert v.type.tensor_type.shape.dim[0].dim_value == 1, f"{dst.name}: {v.name} batch is not 1"
    onnx.save(m, str(dst))
    return note


# --- measurements ---------------------------------------------------------------------

def session(path, optimise=True, save_optimised=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not optimise:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if save_optimised:
        so.optimized_model_filepath = str(save_optimised)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run(path, x, **kw):
    s = session(path, **kw)
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def op_counts(nodes):
    """{op type: count}; ops outside the default ONNX domain as DOMAIN.OP (com.microsoft.QLinearConv)."""
    return dict(sorted(Counter(f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                               for n in nodes).items()))


def split_ops(m):
    """(ops inside a DQ -> op -> Q group, ops with some float input or output) of a QDQ graph."""
    init = {t.name for t in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    consumers = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in m.graph.output}
    qdq, flt = [], []
    for n in m.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear", "Constant"):
            continue
        # Data inputs: not initializers, not Constant-node outputs (shapes, slice bounds, ...).
        data = [i for i in n.input if i and i not in init and getattr(producer.get(i), "op_type", "") != "Constant"]
        ins_q = all(producer[i].op_type == "DequantizeLinear" for i in data if i in producer) and \
            all(i in producer for i in data)
        outs_q = all(o not in outputs and consumers.get(o) and all(c.op_type == "QuantizeLinear" for c in consumers[o])
                     for o in n.output if o)
        (qdq if ins_q and outs_q else flt).append(n)
    return op_counts(qdq), op_counts(flt), [n.name for n in flt]


def output_step(m):
    """(scale, zero point) of the DequantizeLinear that writes the graph's first output, or (None, None)."""
    init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    out = m.graph.output[0].name
    for n in m.graph.node:
        if n.output[0] == out and n.op_type == "DequantizeLinear":
            zp = int(init[n.input[2]]) if len(n.input) > 2 and n.input[2] else 0
            return float(init[n.input[1]]), zp
    return None, None


def sqnr_db(y, yq):
    y, yq = y.astype(np.float64), yq.astype(np.float64)
    return float(10 * np.log10(np.sum(y ** 2) / np.sum((y - yq) ** 2)))


def write_f32(path, a):
    np.ascontiguousarray(a, dtype="<f4").tofile(path)


def shape_of(v):
    return [d.dim_value for d in v.type.tensor_type.shape.dim]


# --- main -----------------------------------------------------------------------------

MODELS = [
    # name, FP32 source (None: exported by edgemed), inputs, source description, nodes_to_exclude
    ("unet3d_qdq", FIX / "unet/unet3d.onnx", unet3d_inputs, "tests/fixtures/unet/unet3d.onnx", ()),
    ("glow_decoder_qdq", None, glow_inputs,
     "decoder.onnx of `edgemed export aging-twin --weights tests/fixtures/glow/glow.safetensors --grid 16`", ()),
    ("espcn3d_qdq", FIX / "espcn/espcn3d_p8.onnx", espcn_inputs, "tests/fixtures/espcn/espcn3d_p8.onnx", ()),
    ("unet2d_qdq", FIX / "unet/unet2d.onnx", unet2d_inputs, "tests/fixtures/unet/unet2d.onnx", ()),
]


NOTES = {  # what ORT 1.31.1 made of each model (measured; see the module docstring)
    "unet3d_qdq": "integer kernels for Conv, Add, Concat; InstanceNormalization, PRelu and ConvTranspose are wrapped "
                  "in Q/DQ but ORT runs them in float. Rounding flips of the first convs grow through the "
                  "InstanceNorm + PRelu levels: ORT optimised vs unoptimised differ by up to 5 output steps.",
    "glow_decoder_qdq": "the graph input is not quantized (Slice/Reshape are quantized only after a quantized "
                        "tensor), so the three latent Slice + Reshape run in float; Div and Sub of the inverse "
                        "coupling are not quantizable by ORT and run in float; Exp is wrapped but runs in float. "
                        "The low SQNR is the decoder's noise gain, spread over all activations: no node excluded.",
    "espcn3d_qdq": "quantize_static drops both Relu (the u8 range of the conv output starts at 0); "
                   "ORT runs the pixel shuffle on uint8 (equal-scale Q/DQ pairs dropped): integers from the input "
                   "QuantizeLinear to the output DequantizeLinear.",
    "unet2d_qdq": "quant_pre_process folds the 2 BatchNormalization into their convs, the quantizer drops the 9 Relu "
                  "(u8 ranges from 0); ConvTranspose is wrapped in Q/DQ but ORT runs it in float.",
}


def make(name, src, inputs, source, exclude, out, edgemed, tmp):
    if src is None:
        src = export_glow_decoder(edgemed, tmp)
    fp32 = Path(tmp) / f"{name}.fp32.onnx"
    fix_batch(src, fp32)
    calib, x, calib_desc, test_desc = inputs()
    dst = out / f"{name}.onnx"
    pre = quantize(fp32, dst, calib, exclude)
    m = onnx.load(str(dst))
    y = run(fp32, x)
    yq = run(dst, x, save_optimised=Path(tmp) / f"{name}.ort_optimised.onnx")
    y_noopt = run(dst, x, optimise=False)
    write_f32(out / f"{name}.input.f32", x)
    write_f32(out / f"{name}.ort.f32", yq)
    step, zp = output_step(m)
    qdq_ops, float_ops, float_nodes = split_ops(m)
    optimised = onnx.load(str(Path(tmp) / f"{name}.ort_optimised.onnx"))
    spread = float(np.abs(yq - y_noopt).max())
    return dict(
        name=name,
        file=dst.name,
        input_file=f"{name}.input.f32",
        input_name=m.graph.input[0].name,
        input_shape=shape_of(m.graph.input[0]),
        output_file=f"{name}.ort.f32",
        output_name=m.graph.output[0].name,
        output_shape=shape_of(m.graph.output[0]),
        output_step=step,
        output_zero_point=zp,
        source=source,
        calibration=f"{len(calib)} samples: {calib_desc}",
        test_input=test_desc,
        quant_pre_process=pre,
        nodes_to_exclude=list(exclude),
        ops=op_counts(m.graph.node),
        qdq_ops=qdq_ops,
        float_ops=float_ops,
        float_nodes=float_nodes,
        ort_optimised_ops=op_counts(optimised.graph.node),
        fp32_output_range=[float(y.min()), float(y.max())],
        sqnr_db=round(sqnr_db(y, yq), 3),
        max_abs_diff=float(np.abs(y - yq).max()),
        max_abs_diff_steps=round(float(np.abs(y - yq).max()) / step, 3) if step else None,
        ort_unoptimised_max_abs_diff=spread,
        ort_unoptimised_max_abs_diff_steps=round(spread / step, 3) if step else None,
        onnxruntime=ort.__version__,
        note=NOTES[name],
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edgemed", type=Path, default=ROOT / "target/release/edgemed",
                    help="converter binary (exports the aging twin's decoder); default target/release/edgemed")
    ap.add_argument("--out", type=Path, default=FIX / "int8")
    args = ap.parse_args()
    ort.set_default_logger_severity(3)
    logging.getLogger().setLevel(logging.ERROR)
    edgemed = args.edgemed.resolve()
    if not edgemed.exists():
        sys.exit(f"{edgemed}: no converter binary (cargo build --release -p edgemed-converter, or pass --edgemed)")
    out = args.out.resolve()  # quantize() works from a temporary folder
    out.mkdir(parents=True, exist_ok=True)
    cases = []
    for name, src, inputs, source, exclude in MODELS:
        with tempfile.TemporaryDirectory(prefix="edgemed-int8-") as tmp:
            cases.append(make(name, src, inputs, source, exclude, out, edgemed, tmp))
    manifest = dict(
        generator="scripts/make_int8_fixtures.py",
        onnxruntime=ort.__version__, onnx=onnx.__version__, numpy=np.__version__,
        quantize_static={k: (v.name if hasattr(v, "name") else v) for k, v in SETTINGS.items()} | dict(
            extra_options="default (ActivationSymmetric False, WeightSymmetric True)", calibration_batch=1),
        ort_session="CPUExecutionProvider, intra_op_num_threads 1, inter_op_num_threads 1, default graph "
                    "optimisations (ORT_ENABLE_ALL)",
        metrics="sqnr_db = 10 log10(sum y^2 / sum (y - yq)^2), y = FP32 model (batch fixed to 1), yq = QDQ model, "
                "both ONNX Runtime as above on the test input; max_abs_diff = max |y - yq|; "
                "ort_unoptimised_max_abs_diff = max |yq - ORT with ORT_DISABLE_ALL on the QDQ model|",
        models=cases,
    )
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {out}")
    for f in sorted(out.iterdir()):
        print(f"  {f.name:32s} {f.stat().st_size:>9d}  {hashlib.sha256(f.read_bytes()).hexdigest()[:16]}")
    for c in cases:
        print(f"{c['name']}: SQNR {c['sqnr_db']:.2f} dB, max |fp32 - int8| {c['max_abs_diff']:.4g} "
              f"(fp32 range [{c['fp32_output_range'][0]:.3g}, {c['fp32_output_range'][1]:.3g}]), "
              f"output step {c['output_step']}, ORT opt vs unopt {c['ort_unoptimised_max_abs_diff_steps']} steps, "
              f"pre-process {c['quant_pre_process'][:40]}")
        print(f"    QDQ-wrapped {c['qdq_ops']}\n    float {c['float_ops']}\n    ORT runs {c['ort_optimised_ops']}")


if __name__ == "__main__":
    main()
