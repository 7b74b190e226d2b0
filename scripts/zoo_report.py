#!/usr/bin/env python3
"""The third-party zoo through edgemed's INT8 path: one report row per model (and quantization variant).

For every model in ZOO/manifest.json (written by scripts/make_zoo.py):

1. Quantize: `edgemed quantize MODEL -o OUT/<name>.onnx` with the defaults (data-free DFQ, per tensor, field
   size inferred by the converter from the grouped convs; its "field size N" note and summary are checked
   against the manifest). Models without batch norm (MONAI U-Nets, BN-folded exports: manifest
   batch_norm_nodes == 0) cannot use data-free ranges: they get `--calibrate DIR` ("(calib)" rows) and
   `--calibrate DIR --per-channel` ("(calib, per-channel)" rows) instead; so do, in addition to their
   data-free row, models whose data-free run left tensors in FP32 for want of ranges (the converter says
   "use --calibrate", e.g. BN followed by PReLU). Calibration data: ZOO/unet3d_calib/ for unet3d; for the
   others 4 windows written to OUT/calib/<name>/: classifiers get seeded noise U(-2, 2) in the manifest's
   input shape (batch 1; the zoo's classifier inputs are that same noise, other seeds), segmenters get the
   manifest's input window and three flips/quarter turns of it (i.e. calibrated on the evaluation input:
   optimistic). The converter's summary line ("wrote ...: folded ... field size N") and its "left in FP32"
   lines are kept.
2. Coverage: `edgemed-run --backend int8 info OUT.onnx --json` (its "backend" line: whether the INT8 engine
   covers the model, integer ops, float ops, MMAC) and `edgemed-run --backend int8 bench OUT.onnx --iters 3
   --profile`: the engine's integer MACs (the profile's "total" line) against every Conv / ConvTranspose /
   Gemm / MatMul MAC of the QDQ graph (shapes from ONNX Runtime at batch 1, counted as the engine counts
   them) give the integer MAC share; "float Conv/ConvTranspose/Gemm/MatMul" steps are float layers left.
3. Fidelity on the manifest's input: FP32 in ONNX Runtime vs the INT8 QDQ model in ONNX Runtime and in
   edgemed's engine (`edgemed-run --backend int8 run OUT.onnx --input x.npy --output-dir DIR`): logit SQNR and top-1
   agreement (classifiers) or argmax voxel agreement (segmenters); for C_N models (field_size > 1) the
   rotation error max|f(rot90 x) - f(x)| / max|f(x)| (rot90 over the last two axes, k=1; outputs with
   spatial axes are turned back first) for FP32 ORT, INT8 ORT and INT8 engine. When the engine does not cover
   a model, `run` falls back to tract: such cells say "(tract)".
4. Latency, one thread, batch 1: `edgemed-run --backend int8,ort --ort-lib ORT bench OUT.onnx --threads 1
   --iters N --warmup 5`: p50 of edgemed's INT8 engine and of ONNX Runtime on the same QDQ file; speed-up =
   ORT p50 / edgemed p50 (> 1: edgemed faster). unet3d: its 32^3 window (the model's input shape).
5. unet3d only: `edgemed-run segment ZOO/unet3d_eval.nii.gz --roi 32,32,32 --all-components` with the INT8
   model (int8 backend) and with the FP32 model (auto: tract), voxel agreement of the two label maps, and
   of each with ZOO/unet3d_eval_ref.nii.gz (MONAI's FP32 sliding window).

A step that fails puts "error: ..." in its cells and the report goes on. The binaries and the zoo are copied
to private temporary folders first, so a rebuild or a make_zoo.py run during the report does not change them
mid-way (their mtimes are in the report, with a warning when zoo files are newer than its manifest).
Classifier SQNR is over the manifest's 2 inputs x 2 logits: a coarse figure. Rerunnable: OUT is overwritten
in place.

Usage (from the repository root, with the project's venv: onnx, onnxruntime, numpy, nibabel):
  .venv/bin/python scripts/zoo_report.py [--zoo target/zoo] [--bin target/release] [--out target/zoo-int8]
      [--ort-lib target/onnxruntime] [--markdown PATH] [--json PATH] [--iters 50] [--only NAME,...]
Prints the markdown report on stdout (and writes it to --markdown); --json writes every measurement.
"""
import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

TIMEOUT = 900  # seconds per edgemed command


# ---------------------------------------------------------------- helpers
class StepError(Exception):
    pass


def sh(cmd, timeout=TIMEOUT):
    """Runs cmd; returns (rc, stdout, stderr)."""
    try:
        p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StepError(f"timed out after {timeout} s: {' '.join(map(str, cmd[:4]))} ...")
    return p.returncode, p.stdout, p.stderr


def must(cmd, timeout=TIMEOUT):
    rc, out, err = sh(cmd, timeout)
    if rc != 0:
        lines = [l for l in (err + "\n" + out).splitlines() if l.strip()]
        why = next((l for l in reversed(lines) if "rror" in l), lines[-1] if lines else f"exit {rc}")
        raise StepError(f"`{Path(cmd[0]).name} {cmd[1] if len(cmd) > 1 else ''}` exit {rc}: {why.strip()}")
    return out, err


def err_text(e):
    s = str(e) if isinstance(e, StepError) else f"{type(e).__name__}: {e}"
    s = " ".join(s.split()).replace("edgemed: error: ", "").replace("edgemed-run: error: ", "")
    s = re.sub(r"(?:/[^\s:/]+)+/([^\s:/]+\.(?:onnx|npy|nii\.gz|nii|f32|so[.\d]*))", r"\1", s)  # file paths -> names
    s = re.sub(r"^quantize exit \d+: writing \S+: ", "quantize: ", s)
    return "error: " + s


def short(s, n=60):
    """Head and tail of a long message (the tail of an error is often its cause)."""
    return s if len(s) <= 2 * n + 5 else s[:n] + " ... " + s[-n:]


def sqnr_db(ref, y):
    ref = np.asarray(ref, np.float64)
    noise = float(((ref - np.asarray(y, np.float64)) ** 2).sum())
    return float("inf") if noise == 0 else float(10 * np.log10((ref ** 2).sum() / noise))


def rot(x, k=1):
    return np.ascontiguousarray(np.rot90(x, k, axes=(-2, -1)))


def rotation_error(f, x):
    """max |f(rot90 x) - g(f(x))| / max |f(x)|, g = rot90 for outputs with spatial axes, identity otherwise."""
    y = f(x)
    yr = f(rot(x))
    ref = rot(y) if y.ndim >= 4 else y
    return float(np.abs(yr - ref).max() / np.abs(y).max())


def fmt(v, spec=".3g"):
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    return format(v, spec)


# ---------------------------------------------------------------- ONNX Runtime
def ort_session(path, optimize=True):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_fn(path, optimize=True):
    s = ort_session(path, optimize)
    name = s.get_inputs()[0].name
    return lambda x: s.run(None, {name: x.astype(np.float32)})[0]


def graph_macs(path, x1):
    """MACs of every Conv / ConvTranspose / Gemm / MatMul of the model at input x1, counted as the engine counts
    them (conv: output elements x weights per output channel; transposed: input positions x all weights;
    products: output elements x k); shapes from ONNX Runtime with the layers' tensors exposed as outputs."""
    import onnx
    m = onnx.load(str(path))
    g = m.graph
    inits = {t.name: list(t.dims) for t in g.initializer}
    layers = [n for n in g.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
    want = []
    for n in layers:
        for t in list(n.input[:2]) + [n.output[0]]:
            if t and t not in inits and t not in want:
                want.append(t)
    have = {o.name for o in g.output}
    for t in want:
        if t not in have:
            g.output.append(onnx.ValueInfoProto(name=t))
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "exposed.onnx"
        onnx.save(m, str(p))
        s = ort_session(p)
        outs = s.run(None, {s.get_inputs()[0].name: x1})
        shapes = {o.name: list(v.shape) for o, v in zip(s.get_outputs(), outs)}
    shapes.update(inits)
    total = 0
    for n in layers:
        a, w, y = shapes[n.input[0]], shapes[n.input[1]], shapes[n.output[0]]
        if n.op_type == "Conv":
            total += int(np.prod(y)) * int(np.prod(w)) // max(w[0], 1)
        elif n.op_type == "ConvTranspose":
            total += int(np.prod(a)) // max(a[1], 1) * int(np.prod(w))
        elif n.op_type == "Gemm":
            trans_a = next((at.i for at in n.attribute if at.name == "transA"), 0)
            k = a[0] if trans_a else a[-1]
            total += int(np.prod(y)) * k
        else:
            total += int(np.prod(y)) * a[-1]
    return total


# ---------------------------------------------------------------- edgemed steps
SUMMARY = re.compile(r"^wrote (\S+): (.*)$")


def quantize(b, model, out, extra):
    rc, so, se = sh([b["edgemed"], "quantize", model, "-o", out, "--force", *extra])  # a rerun replaces the last
    text = se + "\n" + so
    r = {"rc": rc}
    lines = text.splitlines()
    summary = next((SUMMARY.match(l).group(2) for l in lines if SUMMARY.match(l)), None)
    left, keep = [], False
    for l in lines:
        if "left in FP32" in l:
            left.append(l.strip())
            keep = True
        elif keep and l.startswith((" ", "\t")):
            left.append(l.strip())
        else:
            keep = False
    r["left_fp32"] = left
    r["notes"] = [l.strip() for l in lines if l.startswith("edgemed: note")]
    fs = re.search(r"field size (\d+) from", text)
    r["field_size_note"] = int(fs.group(1)) if fs else None
    if rc != 0 or summary is None:
        bad = [l for l in lines if l.strip()]
        raise StepError(f"quantize exit {rc}: {bad[-1].strip() if bad else '?'}")
    r["left_fp32_count"] = sum(1 for l in left if "(" in l and not l.endswith(":"))
    r["summary"] = summary
    pats = {
        "folded_bn": r"folded (\d+) batch norms",
        "cle_triplets": r"CLE (\d+) triplets",
        "cle_pairs": r"\+ (\d+) pairs",
        "absorbed": r"high-bias absorption (\d+|off)",
        "weights": r"(\d+) weights",
        "weight_granularity": r"weights \(([^)]*)\)",
        "activations": r"(\d+) activations quantized",
        "biases_corrected": r"(\d+) biases corrected",
        "field_size": r"field size (\d+)\s*$",
    }
    for k, p in pats.items():
        mm = re.search(p, summary)
        v = mm.group(1) if mm else None
        r[k] = int(v) if v is not None and v.isdigit() else v
    return r


def info(b, qpath):
    out, _ = must([b["run"], "--backend", "int8", "info", qpath, "--json"])
    line = json.loads(out)["backend"]
    r = {"backend_line": line}
    m = re.search(r"(\d+) integer ops \(([\d.]+) MMAC\), (\d+) float ops", line)
    if line.startswith("edgemed INT8 engine") and m:
        r.update(covers=True, int_ops=int(m.group(1)), mmac=float(m.group(2)), float_ops=int(m.group(3)))
    else:
        why = re.search(r"does not cover this model \((.*)\)\s*$", line) or re.search(r"refuses this model \((.*)\)", line)
        r.update(covers=False, reason=why.group(1) if why else line)
    return r


def parse_profile(text):
    """The `bench --profile` section: header numbers, steps (label, MMAC, us, share), total MMAC and us."""
    r = {"steps": []}
    h = re.search(r"INT8 engine, (\S+) kernels, (\d+) integer ops, (\d+) float ops, ([\d.]+) MMAC", text)
    if not h:
        raise StepError("no profile in bench's output")
    r.update(isa=h.group(1), int_ops=int(h.group(2)), float_ops=int(h.group(3)), mmac=float(h.group(4)))
    body = text[h.end():].splitlines()[2:]  # after the header's rest and the column titles
    num = re.compile(r"^-?[\d.]+%?$")
    for l in body:
        toks = l.split()
        if not toks:
            continue
        if toks[0] == "total" and len(toks) >= 3:
            r["total_mmac"], r["total_us"] = float(toks[1]), float(toks[2])
            break
        if not toks[-1].endswith("%"):
            continue
        n = 0
        while n < len(toks) and num.match(toks[-1 - n]):
            n += 1
        k = 4 if n >= 4 else 2
        vals = toks[-k:]
        label = " ".join(toks[:-k])
        step = {"label": label, "mmac": float(vals[0]) if k == 4 else 0.0, "us": float(vals[-3] if k == 4 else vals[0]),
                "share": float(vals[-1].rstrip("%"))}
        r["steps"].append(step)
    r["float_layers"] = [s["label"] for s in r["steps"] if re.match(r"float (Conv|ConvTranspose|Gemm|MatMul)\b", s["label"])]
    r["float_time_share"] = sum(s["share"] for s in r["steps"] if s["label"].startswith("float "))
    return r


def profile(b, qpath):
    out, _ = must([b["run"], "--backend", "int8", "bench", qpath, "--iters", "3", "--profile"])
    return parse_profile(out)


def engine_fn(b, qpath, work):
    """f(x) through `edgemed-run --backend int8 run`; f.fallback is set when the engine handed the model to tract."""
    work.mkdir(parents=True, exist_ok=True)
    state = {"n": 0, "fallback": False}

    def f(x):
        state["n"] += 1
        xi, od = work / f"x{state['n']}.npy", work / f"y{state['n']}"
        np.save(xi, x.astype(np.float32))
        shutil.rmtree(od, ignore_errors=True)
        out, err = must([b["run"], "--backend", "int8", "run", qpath, "--input", xi, "--output-dir", od, "--force"])
        if "does not cover" in err or "running it with tract" in err:
            state["fallback"] = True
        written = re.findall(r"^wrote\s+\S+ \[[^\]]*\] -> (.+)$", out, re.M)
        if not written:
            raise StepError("run wrote no output")
        return np.load(written[0].strip())

    f.state = state
    return f


def latency(b, qpath, iters, ort_lib):
    out, _ = must([b["run"], "--backend", "int8,ort", "--ort-lib", ort_lib, "bench", qpath, "--threads", "1",
                   "--iters", str(iters), "--warmup", "5"])
    rows = {}
    for l in out.splitlines():
        m = re.match(r"^\S+ / (\S+) @ (\S+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", l)
        if m:
            rows[m.group(1)] = {"device": m.group(2), "p50_ms": float(m.group(4)), "p90_ms": float(m.group(5)),
                                "p99_ms": float(m.group(6))}
    r = {"rows": rows}
    eng = rows.get("edgemed-int8") or rows.get("tract")
    r["edgemed_backend"] = "edgemed-int8" if "edgemed-int8" in rows else ("tract" if "tract" in rows else None)
    r["edgemed_ms"] = eng["p50_ms"] if eng else None
    r["ort_ms"] = rows["ort"]["p50_ms"] if "ort" in rows else None
    if r["edgemed_ms"] and r["ort_ms"]:
        r["speedup"] = r["ort_ms"] / r["edgemed_ms"]
    return r


def segment_volume(b, zoo, fp32, qpath, work):
    import nibabel as nib
    vol = zoo / "unet3d_eval.nii.gz"
    work.mkdir(parents=True, exist_ok=True)
    paths = {}
    for tag, model, backend in (("int8", qpath, "int8"), ("fp32", fp32, "auto")):
        o = work / f"seg_{tag}.nii.gz"
        must([b["run"], "--backend", backend, "segment", vol, "-m", model, "--roi", "32,32,32", "--all-components", "-o", o, "--force"])
        paths[tag] = o
    lab = {k: np.asarray(nib.load(str(p)).dataobj).astype(np.uint8) for k, p in paths.items()}
    r = {"agreement_int8_fp32": float((lab["int8"] == lab["fp32"]).mean()),
         "class1_voxels": {k: int((v == 1).sum()) for k, v in lab.items()}}
    ref = zoo / "unet3d_eval_ref.nii.gz"
    if ref.exists():
        rl = np.asarray(nib.load(str(ref)).dataobj).astype(np.uint8)
        r["agreement_vs_monai_ref"] = {k: float((v == rl).mean()) for k, v in lab.items()}
    return r


# ---------------------------------------------------------------- calibration
def calibration(zoo, name, entry, x, out):
    if name == "unet3d" and (zoo / "unet3d_calib").is_dir():
        return zoo / "unet3d_calib", "ZOO/unet3d_calib (the blob windows make_zoo.py writes)"
    d = out / "calib" / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    shape = [1] + list(entry["input_shape"][1:])
    if entry["kind"] == "classifier":
        for i in range(4):
            rng = np.random.default_rng(1000 + i)
            np.save(d / f"calib_{i}.npy", rng.uniform(-2, 2, shape).astype(np.float32))
        return d, "seeded noise U(-2,2), 4 windows (seeds 1000-1003)"
    w = x[:1]
    for i, v in enumerate([w, w[..., ::-1], rot(w, 1), rot(w, 2)[..., ::-1, :]]):
        np.save(d / f"calib_{i}.npy", np.ascontiguousarray(v, np.float32))
    return d, "manifest input + 3 flips/quarter turns (the eval input: optimistic)"


# ---------------------------------------------------------------- one variant
# variant: (file suffix, label in the table, converter options besides --calibrate DIR)
VARIANTS = {
    "dfq": ("", "", []),
    "calib": (".calib", " (calib)", []),
    "calib-pc": (".calib-pc", " (calib, per-channel)", ["--per-channel"]),
}


def title(r):
    return r["model"] + VARIANTS[r["variant"]][1]


def run_variant(b, a, zoo, name, entry, variant, extra, calib_desc):
    r = {"model": name, "variant": variant, "exporter": entry.get("exporter"), "kind": entry["kind"],
         "manifest_field_size": entry.get("field_size", 1), "calibration": calib_desc, "quantize_args": extra}
    fp32 = zoo / entry["file"]
    qpath = a.out / f"{name}{VARIANTS[variant][0]}.onnx"
    work = a.out / "work" / f"{name}.{variant}"
    shutil.rmtree(work, ignore_errors=True)
    x = np.fromfile(zoo / entry["input"], dtype="<f4").reshape(entry["input_shape"])

    def step(key, fn):
        t = time.time()
        try:
            r[key] = fn()
        except Exception as e:  # noqa: BLE001 - every failure becomes a cell
            r[key] = {"error": err_text(e)}
            if a.verbose:
                traceback.print_exc()
        print(f"  {name} [{variant}] {key}: {time.time() - t:.1f} s"
              + (f"  {r[key]['error']}" if isinstance(r[key], dict) and "error" in r[key] else ""), file=sys.stderr)

    r["command"] = " ".join(["edgemed", "quantize", str(fp32), "-o", str(qpath), *extra]).replace(str(zoo), str(a.zoo_src))
    step("quantize", lambda: quantize(b, fp32, qpath, extra))
    if "error" in r["quantize"]:
        return r
    step("info", lambda: info(b, qpath))
    step("profile", lambda: profile(b, qpath))
    step("macs", lambda: {"total": graph_macs(qpath, x[:1])})

    def fidelity():
        f32, fq, fr = ort_fn(fp32), ort_fn(qpath), ort_fn(qpath, optimize=False)
        fe = engine_fn(b, qpath, work)
        y, yq = f32(x), fq(x)
        res = {"fp32_ort_vs_torch_max_abs": None}
        ref_file = zoo / entry.get("fp32_ref", "")
        if entry.get("fp32_ref") and ref_file.exists():
            res["fp32_ort_vs_torch_max_abs"] = float(np.abs(np.fromfile(ref_file, "<f4").reshape(y.shape) - y).max())
        ye = None
        try:
            ye = fe(x)
        except Exception as e:  # noqa: BLE001
            res["engine_error"] = err_text(e)
        for tag, yy in (("ort_int8", yq), ("ort_int8_ref", fr(x)), ("engine", ye)):
            if yy is None:
                continue
            d = {"sqnr_db": sqnr_db(y, yy)}
            if entry["kind"] == "classifier":
                d["top1"] = [int((yy.argmax(1) == y.argmax(1)).sum()), int(y.shape[0])]
            else:
                d["voxel_agreement"] = float((yy.argmax(1) == y.argmax(1)).mean())
            res[tag] = d
        res["engine_fallback_tract"] = fe.state["fallback"]
        if entry.get("field_size", 1) > 1:
            rotr = {"fp32_ort": rotation_error(f32, x), "int8_ort": rotation_error(fq, x)}
            if "engine_error" not in res:
                try:
                    rotr["int8_engine"] = rotation_error(fe, x)
                except Exception as e:  # noqa: BLE001
                    rotr["int8_engine"] = err_text(e)
            res["rotation"] = rotr
        return res

    step("fidelity", fidelity)
    step("latency", lambda: latency(b, qpath, a.iters, a.ort_lib))
    if name == "unet3d" and (zoo / "unet3d_eval.nii.gz").exists():
        step("segment", lambda: segment_volume(b, zoo, fp32, qpath, work))
    return r


# ---------------------------------------------------------------- report
def cells(r):
    g = lambda k: r.get(k) if isinstance(r.get(k), dict) else {}
    q, inf, prof, fid, lat = g("quantize"), g("info"), g("profile"), g("fidelity"), g("latency")
    qerr = q.get("error")
    name = title(r)
    exp = r.get("exporter") or ""
    exp = "dynamo" if "dynamo (" in exp else ("legacy" if "legacy" in exp else exp)
    # field size
    if qerr:
        field = qerr
    else:
        fs = q.get("field_size")
        field = str(fs) if fs == r["manifest_field_size"] else f"{fs} (manifest {r['manifest_field_size']})"
    cle = "—" if qerr else f"{q.get('cle_triplets')}+{q.get('cle_pairs')}"
    # coverage
    if qerr:
        cov = "—"
    elif "error" in inf:
        cov = inf["error"]
    elif inf.get("covers"):
        nf = len(prof.get("float_layers", [])) if "error" not in prof else None
        cov = f"yes ({inf['int_ops']} int / {inf['float_ops']} float ops" + (
            f"; {nf} float conv/gemm)" if nf else ")")
    else:
        cov = f"no: {inf.get('reason', '?')}"
    # integer MAC share
    macs = g("macs")
    if qerr:
        share = "—"
    elif "error" in prof:
        share = "0% (engine refuses)" if inf.get("covers") is False else prof["error"]
    elif "error" in macs:
        share = macs["error"]
    else:
        tot = macs["total"] / 1e6
        share = f"{100 * prof.get('total_mmac', prof['mmac']) / tot:.1f}% of {tot:.1f} MMAC" if tot else "—"
    # fidelity
    if qerr:
        fidc = rotc = "—"
    elif "error" in fid:
        fidc = rotc = fid["error"]
    else:
        parts = []
        for tag, lab in (("ort_int8", "ORT"), ("engine", "engine")):
            d = fid.get(tag)
            if d is None:
                parts.append(f"{lab}: {fid.get('engine_error', '—')}")
                continue
            s = f"{lab} {d['sqnr_db']:.1f} dB"
            if "top1" in d:
                s += f", top-1 {d['top1'][0]}/{d['top1'][1]}"
            else:
                s += f", {100 * d['voxel_agreement']:.2f}%"
            if tag == "engine" and fid.get("engine_fallback_tract"):
                s += " (tract)"
            parts.append(s)
        seg = g("segment")
        if seg:
            parts.append(seg["error"] if "error" in seg else f"volume {100 * seg['agreement_int8_fp32']:.2f}%")
        fidc = "; ".join(parts)
        rt = fid.get("rotation")
        if rt:
            e = rt.get("int8_engine", fid.get("engine_error", "—"))
            rotc = " / ".join([fmt(rt["fp32_ort"], ".1e"), fmt(rt["int8_ort"], ".1e"), fmt(e, ".1e")])
            if fid.get("engine_fallback_tract"):
                rotc += " (tract)"
        else:
            rotc = "—"
    # latency
    if qerr:
        em = om = ratio = "—"
    elif "error" in lat:
        em = om = ratio = lat["error"]
    else:
        em = fmt(lat.get("edgemed_ms"), ".2f") + ("" if lat.get("edgemed_backend") == "edgemed-int8" else f" ({lat.get('edgemed_backend')})")
        om = fmt(lat.get("ort_ms"), ".2f")
        ratio = fmt(lat.get("speedup"), ".2f") + ("x" if lat.get("speedup") else "")
    row = [name, exp, field, cle, cov, share, fidc, rotc, em, om, ratio]
    return [short(c) if "error:" in str(c) else c for c in row]


HEADER = ["model", "exporter", "field N", "CLE triplets+pairs", "engine covers", "integer MAC share",
          "SQNR / agreement vs FP32 (ORT INT8; engine INT8)", "rotation err FP32 / INT8 ORT / INT8 engine",
          "edgemed ms", "ORT ms", "speed-up (ORT/edgemed)"]


def esc(s):
    return str(s).replace("|", "\\|").replace("\n", " ")


def markdown(results, meta):
    out = [f"# edgemed zoo report ({meta['date']})", "",
           f"Zoo: {meta['zoo']}.", "", f"Binaries: {meta['binaries']}; ONNX Runtime (Python) {meta['ort_version']}, edgemed-run ORT library "
           f"{meta['ort_lib']}; latency at 1 thread, batch 1, {meta['iters']} iterations, 5 warm-up; host "
           f"{meta['cores']} cores.", "",
           "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in results:
        out.append("| " + " | ".join(esc(c) for c in cells(r)) + " |")
    out += ["", "## Converter and engine details", ""]
    for r in results:
        q = r.get("quantize", {})
        out.append(f"- **{title(r)}**: `{r.get('command', '?')}`")
        if r.get("calibration"):
            out.append(f"  - calibration: {r['calibration']}")
        if "error" in q:
            out.append(f"  - {q['error']}")
            continue
        out.append(f"  - summary: {q.get('summary')}")
        if q.get("field_size_note") is not None:
            out.append(f"  - converter note: field size {q['field_size_note']} from the grouped convs")
        if q.get("left_fp32"):
            out.append(f"  - {q['left_fp32'][0]} " + (f"(first: {q['left_fp32'][1]})" if len(q['left_fp32']) > 1 else ""))
        inf = r.get("info", {})
        fid = r.get("fidelity", {})
        if "error" in fid:
            out.append(f"  - fidelity: {fid['error']}")
        elif fid:
            fs = []
            for tag, lab in (("ort_int8", "ORT (integer kernels)"), ("ort_int8_ref", "ORT without graph optimizations "
                             "(float simulation of the QDQ graph)"), ("engine", "edgemed engine")):
                d = fid.get(tag)
                if d:
                    fs.append(f"{lab} {d['sqnr_db']:.2f} dB" + (f" top-1 {d['top1'][0]}/{d['top1'][1]}" if "top1" in d else
                                                               f" {100 * d['voxel_agreement']:.3f}%"))
            if fid.get("engine_error"):
                fs.append(f"engine {fid['engine_error']}")
            out.append("  - fidelity vs FP32 ORT: " + "; ".join(fs) + (
                "; engine fell back to tract" if fid.get("engine_fallback_tract") else ""))
        for k in ("info", "profile", "macs", "latency"):
            if isinstance(r.get(k), dict) and "error" in r[k] and k not in ("info", "profile"):
                out.append(f"  - {k}: {r[k]['error']}")
        out.append(f"  - backend: {inf.get('backend_line', inf.get('error'))}")
        prof = r.get("profile", {})
        if "error" in prof:
            out.append(f"  - profile: {prof['error']}")
        else:
            fl = prof.get("float_layers", [])
            out.append(f"  - profile: {prof.get('total_mmac')} integer MMAC; float steps {prof.get('float_time_share', 0):.1f}% of "
                       f"engine time; float conv/gemm left: {len(fl)}" + (f" ({', '.join(sorted(set(fl)))})" if fl else ""))
        seg = r.get("segment")
        if seg and "error" not in seg:
            ref = seg.get("agreement_vs_monai_ref", {})
            out.append(f"  - segment 64x64x48 (roi 32^3, all components): INT8 vs FP32 {100 * seg['agreement_int8_fp32']:.3f}% "
                       f"of voxels; class-1 voxels {seg['class1_voxels']}; vs MONAI FP32 reference: "
                       + ", ".join(f"{k} {100 * v:.3f}%" for k, v in ref.items()))
        elif seg:
            out.append(f"  - segment: {seg['error']}")
    out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zoo", type=Path, default=Path("target/zoo"))
    ap.add_argument("--bin", type=Path, default=Path("target/release"))
    ap.add_argument("--out", type=Path, default=Path("target/zoo-int8"))
    ap.add_argument("--ort-lib", default="target/onnxruntime")
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--only", help="comma-separated model names")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    import onnxruntime

    # A snapshot of the zoo (make_zoo.py may be rewriting it), checked for files newer than the manifest.
    zoo_src = a.zoo_src = a.zoo
    snap = Path(tempfile.mkdtemp(prefix="zoo-report-zoo-"))
    shutil.copytree(zoo_src, snap / "zoo")
    a.zoo = snap / "zoo"
    mtime = lambda p: datetime.datetime.fromtimestamp(p.stat().st_mtime, datetime.timezone.utc)
    man_t = mtime(zoo_src / "manifest.json")
    newer = sorted(p.name for p in zoo_src.rglob("*") if p.is_file() and mtime(p) > man_t + datetime.timedelta(seconds=5))
    zoo_line = f"{zoo_src} (manifest {man_t:%Y-%m-%d %H:%M} UTC)"
    if newer:
        zoo_line += f"; WARNING: {len(newer)} files newer than the manifest (make_zoo.py running?): {', '.join(newer[:6])}" + (
            " ..." if len(newer) > 6 else "")
    manifest = json.loads((a.zoo / "manifest.json").read_text())
    models = manifest["models"]
    if a.only:
        keep = a.only.split(",")
        models = {k: v for k, v in models.items() if k in keep}
    a.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="zoo-report-bin-"))
    b, stamps = {}, []
    for key, exe in (("edgemed", "edgemed"), ("run", "edgemed-run")):
        src = a.bin / exe
        shutil.copy2(src, tmp / exe)
        b[key] = tmp / exe
        mt = datetime.datetime.fromtimestamp(src.stat().st_mtime, datetime.timezone.utc)
        stamps.append(f"{src} (mtime {mt:%Y-%m-%d %H:%M} UTC)")
    meta = {"zoo": zoo_line, "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC", "binaries": ", ".join(stamps),
            "ort_version": onnxruntime.__version__, "ort_lib": a.ort_lib, "iters": a.iters, "cores": os.cpu_count()}
    results = []
    try:
        for name, entry in models.items():
            # Data-free first where there are batch norms; calibrated (per tensor and per channel) where there are
            # none, or where the data-free run left tensors in FP32 for want of ranges ("use --calibrate").
            need = entry.get("batch_norm_nodes", 1) == 0
            if not need:
                r = run_variant(b, a, a.zoo, name, entry, "dfq", [], None)
                results.append(r)
                need = any("--calibrate" in l for l in r.get("quantize", {}).get("left_fp32", []))
            if not need:
                continue
            try:
                x = np.fromfile(a.zoo / entry["input"], dtype="<f4").reshape(entry["input_shape"])
                cdir, cdesc = calibration(a.zoo, name, entry, x, a.out)
            except Exception as e:  # noqa: BLE001
                results.append({"model": name, "variant": "calib", "exporter": entry.get("exporter"),
                                "manifest_field_size": entry.get("field_size", 1), "quantize": {"error": err_text(e)}})
                continue
            for variant in ("calib", "calib-pc"):
                extra = ["--calibrate", str(cdir), *VARIANTS[variant][2]]
                results.append(run_variant(b, a, a.zoo, name, entry, variant, extra, cdesc))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(snap, ignore_errors=True)
    md = markdown(results, meta)
    print(md)
    if a.markdown:
        a.markdown.parent.mkdir(parents=True, exist_ok=True)
        a.markdown.write_text(md)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))


if __name__ == "__main__":
    main()
