#!/usr/bin/env python3
"""Compare edgemed's data-free INT8 quantization with calibrated peers (ONNX Runtime, AIMET).

For an FP32 ONNX classifier with a [batch, 3, H, W] input (default 95x95), this measures, against
the FP32 model run in ONNX Runtime (the reference):
    logit SQNR (dB) = 10 log10( sum ref^2 / sum (y - ref)^2 )  over all evaluation logits
    top-1 agreement = fraction of evaluation images whose argmax equals the FP32 argmax
of:
  a) edgemed, data-free: `EDGEMED quantize MODEL -o out.onnx` (defaults: per tensor, CLE, bias
     absorption, bias correction, laplace range model) and the variants `--per-channel`,
     `--range-model normal`, `--range-sigmas 6`; the QDQ models are run in ONNX Runtime.
  b) ONNX Runtime quantize_static, QDQ, MinMax calibration on the calibration set, QUInt8
     activations (asymmetric), QInt8 weights (symmetric), reduce_range=False, per_channel
     True / False. BatchNormalization is folded first with quant_pre_process (ORT basic
     graph optimizations), as a source model with BN folded is what quantize_static expects.
  c) AIMET (aimet-onnx): aimet_onnx.cross_layer_equalization.equalize_model (BN fold,
     ReLU6 -> ReLU, cross-layer scaling, high-bias fold; no bias correction), then
     QuantizationSimModel(param_type=int8, activation_type=int8, quant_scheme=min_max) with
     AIMET's per-tensor config (aimet_onnx/common/quantsim_config/default_config.json,
     per_channel_quantization False) and with its "default" alias (per-channel Conv/Gemm
     weights); encodings from compute_encodings over the calibration set; evaluated in the sim
     session. Also the equalized FP32 model alone (shows the ReLU6 -> ReLU / high-bias-fold
     change by itself).

Data (seeded, rerunnable): evaluation set = N(0,1) images [n_eval, 3, H, W] from
numpy.random.default_rng(seed); calibration set = a separate [n_calib, 3, H, W] N(0,1) draw
from default_rng(seed + 1). ONNX Runtime sessions use one intra-op thread.

Environments: needs onnx, onnxruntime, numpy. aimet-onnx may live in another venv: if
`import aimet_onnx` fails here, the AIMET part is run by `--aimet-python` (default
/work/venv-aimet/bin/python) on this same script in worker mode (`--aimet-worker`), exchanging
arrays through an .npz file. If neither works, the AIMET rows say why.

Usage:
    /work/main/.venv/bin/python scripts/compare_dfq_peers.py \
        [MODEL (default tests/fixtures/zoo/tv_mnv2_legacy_bn.onnx)] \
        [--edgemed /tmp/edgemed-peer] [--seed 0] [--n-eval 64] [--n-calib 32] [--json out.json]
Prints a markdown table (method, granularity, data-free/calibrated, SQNR dB, top-1 agreement).
"""
import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "tests/fixtures/zoo/tv_mnv2_legacy_bn.onnx"


def session(path_or_bytes):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(path_or_bytes, so, providers=["CPUExecutionProvider"])


def run_model(path, x, batch=16):
    s = session(str(path))
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def sqnr_db(ref, y):
    ref = ref.astype(np.float64)
    err = np.sum((y.astype(np.float64) - ref) ** 2)
    return float("inf") if err == 0 else float(10 * np.log10(np.sum(ref ** 2) / err))


def top1(ref, y):
    return float(np.mean(np.argmax(ref, 1) == np.argmax(y, 1)))


def input_info(path):
    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    inp = [i for i in m.graph.input if i.name not in inits][0]
    dims = [d.dim_value if d.dim_value > 0 else None for d in inp.type.tensor_type.shape.dim]
    return inp.name, dims


# --- AIMET (in-process or worker) -------------------------------------------------------

def aimet_run(model_path, input_name, x_eval, x_calib):
    """Returns (dict of name -> eval logits, info dict). Raises if aimet_onnx is missing."""
    import aimet_onnx
    from aimet_onnx.cross_layer_equalization import equalize_model
    from aimet_onnx.quantsim import QuantizationSimModel

    cfg_dir = Path(aimet_onnx.__file__).parent / "common/quantsim_config"
    per_tensor_cfg = cfg_dir / "default_config.json"
    if json.load(open(per_tensor_cfg))["defaults"].get("per_channel_quantization") != "False":
        raise RuntimeError(f"{per_tensor_cfg} is not per-tensor")
    m = onnx.load(str(model_path))
    with contextlib.redirect_stdout(io.StringIO()):
        equalize_model(m)  # in place
    logits, info = {}, {"aimet_onnx_version": getattr(aimet_onnx, "__version__", "unknown"),
                        "ops_after_cle": sorted({n.op_type for n in m.graph.node})}
    logits["aimet_cle_fp32"] = run_model_bytes(m.SerializeToString(), input_name, x_eval)
    for key, cfg in (("aimet_cle_pertensor", str(per_tensor_cfg)), ("aimet_cle_perchannel", "default")):
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            sim = QuantizationSimModel(onnx.load_from_string(m.SerializeToString()), param_type="int8",
                                       activation_type="int8", quant_scheme="min_max", config_file=cfg,
                                       path=tmp, session_options_kwargs={"intra_op_num_threads": 1})
            sim.compute_encodings([{input_name: x_calib[i:i + 8]} for i in range(0, len(x_calib), 8)])
            logits[key] = np.concatenate([sim.session.run(None, {input_name: x_eval[i:i + 16]})[0]
                                          for i in range(0, len(x_eval), 16)])
            # record weight granularity actually used (number of scales per Conv weight)
            nscales = []
            for name, q in sim.qc_quantize_op_dict.items():
                if name in sim.param_names and q.enabled and q.get_encodings():
                    nscales.append(len(q.get_encodings()))
            info[key + "_weight_scales_per_tensor_max"] = max(nscales) if nscales else None
    return logits, info


def run_model_bytes(b, input_name, x, batch=16):
    s = session(b)
    return np.concatenate([s.run(None, {input_name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def aimet_worker(npz_in, npz_out):
    d = np.load(npz_in, allow_pickle=False)
    logits, info = aimet_run(str(d["model"]), str(d["input_name"]), d["x_eval"], d["x_calib"])
    np.savez(npz_out, info=json.dumps(info), **logits)


def aimet_logits(model_path, input_name, x_eval, x_calib, aimet_python, tmp):
    try:
        import aimet_onnx  # noqa: F401
        return aimet_run(model_path, input_name, x_eval, x_calib)
    except ImportError as e:
        if not (aimet_python and Path(aimet_python).exists()):
            raise RuntimeError(f"aimet_onnx not importable ({e}) and no --aimet-python") from e
    npz_in, npz_out = Path(tmp) / "aimet_in.npz", Path(tmp) / "aimet_out.npz"
    np.savez(npz_in, model=str(Path(model_path).resolve()), input_name=input_name, x_eval=x_eval, x_calib=x_calib)
    r = subprocess.run([aimet_python, str(Path(__file__).resolve()), "--aimet-worker", str(npz_in), str(npz_out)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"AIMET worker failed (rc {r.returncode}): {r.stderr[-2000:]}")
    d = np.load(npz_out, allow_pickle=False)
    return {k: d[k] for k in d.files if k != "info"}, json.loads(str(d["info"]))


# --- ONNX Runtime static quantization ----------------------------------------------------

def ort_quantize(src, dst, input_name, x_calib, per_channel, tmp):
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = [x_calib[i:i + 8] for i in range(0, len(x_calib), 8)]
            self.i = 0

        def get_next(self):
            if self.i >= len(self.batches):
                return None
            self.i += 1
            return {input_name: self.batches[self.i - 1]}

        def rewind(self):
            self.i = 0

    pre = Path(tmp) / "ort_pre.onnx"
    if not pre.exists():
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    cwd = os.getcwd()
    os.chdir(tmp)  # calibration writes its augmented model to the working directory
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            reduce_range=False, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, extra_options={})
    finally:
        os.chdir(cwd)


# --- main ----------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", default=str(DEFAULT_MODEL))
    ap.add_argument("--edgemed", default="/tmp/edgemed-peer")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-eval", type=int, default=64)
    ap.add_argument("--n-calib", type=int, default=32)
    ap.add_argument("--aimet-python", default="/work/venv-aimet/bin/python")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--keep", help="keep the quantized models in this directory")
    ap.add_argument("--aimet-worker", nargs=2, metavar=("IN_NPZ", "OUT_NPZ"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.aimet_worker:
        aimet_worker(*a.aimet_worker)
        return

    model = Path(a.model)
    input_name, dims = input_info(model)
    c, h, w = (dims[1] or 3), (dims[2] or 95), (dims[3] or 95)
    x_eval = np.random.default_rng(a.seed).standard_normal((a.n_eval, c, h, w)).astype(np.float32)
    x_calib = np.random.default_rng(a.seed + 1).standard_normal((a.n_calib, c, h, w)).astype(np.float32)
    ref = run_model(model, x_eval)

    rows = []  # (method, granularity, data, logits or error)
    tmp = tempfile.mkdtemp(prefix="dfq_peers_")
    try:
        edgemed_variants = [("edgemed (defaults)", "per-tensor", []),
                            ("edgemed --per-channel", "per-channel", ["--per-channel"]),
                            ("edgemed --range-model normal", "per-tensor", ["--range-model", "normal"]),
                            ("edgemed --range-sigmas 6", "per-tensor", ["--range-sigmas", "6"])]
        for i, (name, gran, flags) in enumerate(edgemed_variants):
            out = Path(tmp) / f"edgemed_{i}.onnx"
            cmd = [a.edgemed, "quantize", str(model), "-o", str(out)] + flags
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                rows.append((name, gran, "data-free", f"failed rc {r.returncode}: {(r.stderr or r.stdout)[-500:]}"))
            else:
                try:
                    rows.append((name, gran, "data-free", run_model(out, x_eval)))
                except Exception as e:  # noqa: BLE001
                    rows.append((name, gran, "data-free", f"ORT run failed: {type(e).__name__}: {e}"))

        for pc in (True, False):
            name, gran = "ORT quantize_static QDQ MinMax", "per-channel" if pc else "per-tensor"
            out = Path(tmp) / f"ort_{'pc' if pc else 'pt'}.onnx"
            try:
                ort_quantize(model, out, input_name, x_calib, pc, tmp)
                rows.append((name, gran, f"calibrated ({a.n_calib})", run_model(out, x_eval)))
            except Exception as e:  # noqa: BLE001
                rows.append((name, gran, f"calibrated ({a.n_calib})", f"failed: {type(e).__name__}: {e}"))

        aimet_info = {}
        aimet_rows = [("AIMET CLE+HBF, FP32 (no quantization)", "-", "data-free", "aimet_cle_fp32"),
                      ("AIMET CLE+HBF + QuantSim min_max", "per-tensor", f"calibrated ({a.n_calib})", "aimet_cle_pertensor"),
                      ("AIMET CLE+HBF + QuantSim min_max", "per-channel", f"calibrated ({a.n_calib})", "aimet_cle_perchannel")]
        try:
            logits, aimet_info = aimet_logits(model, input_name, x_eval, x_calib, a.aimet_python, tmp)
            rows += [(n, g, d, logits[k]) for n, g, d, k in aimet_rows]
            # the quantization error alone: AIMET sims against AIMET's equalized FP32 model (ReLU6 -> ReLU
            # and high-bias fold change the FP32 function, so the rows above mix both effects)
            rows += [(n + " [ref: AIMET CLE FP32]", g, d, (logits[k], logits["aimet_cle_fp32"]))
                     for n, g, d, k in aimet_rows[1:]]
        except Exception as e:  # noqa: BLE001
            msg = f"failed: {type(e).__name__}: {str(e)[-800:]}"
            traceback.print_exc(file=sys.stderr)
            rows += [(n, g, d, msg) for n, g, d, _ in aimet_rows]
        if a.keep:
            Path(a.keep).mkdir(parents=True, exist_ok=True)
            for f in Path(tmp).glob("*.onnx"):
                shutil.copy(f, a.keep)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    results = []
    print(f"model: {model}  input {input_name} [{c},{h},{w}]  eval {a.n_eval} N(0,1) (seed {a.seed}), "
          f"calib {a.n_calib} N(0,1) (seed {a.seed + 1}); reference: FP32 in onnxruntime {ort.__version__}\n")
    counts = np.bincount(np.argmax(ref, 1), minlength=ref.shape[1])
    print(f"FP32 top-1 class counts on the eval set: {counts.tolist()}"
          + ("  (all one class: top-1 agreement only detects flips away from it)" if counts.max() == len(ref) else "")
          + "\n")
    print("| method | granularity | data | logit SQNR (dB) | top-1 agreement |")
    print("|---|---|---|---|---|")
    for name, gran, data, y in rows:
        if isinstance(y, str):
            print(f"| {name} | {gran} | {data} | FAILED | {y.splitlines()[0][:120] if y else ''} |")
            results.append(dict(method=name, granularity=gran, data=data, error=y))
        else:
            r = ref
            if isinstance(y, tuple):
                y, r = y
            s, t = sqnr_db(r, y), top1(r, y)
            print(f"| {name} | {gran} | {data} | {s:.2f} | {t:.3f} ({int(round(t * len(ref)))}/{len(ref)}) |")
            results.append(dict(method=name, granularity=gran, data=data, sqnr_db=s, top1_agreement=t,
                                max_abs_logit_err=float(np.abs(y - r).max())))
    if a.json:
        Path(a.json).write_text(json.dumps(dict(
            model=str(model), input=[input_name, c, h, w], seed=a.seed, n_eval=a.n_eval, n_calib=a.n_calib,
            onnxruntime=ort.__version__, edgemed=a.edgemed, aimet=aimet_info,
            fp32_top1_class_counts=counts.tolist(),
            results=results), indent=2))


if __name__ == "__main__":
    main()
