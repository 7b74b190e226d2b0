#!/usr/bin/env python3
"""Accuracy and AUC of the bundled demonstration classifier, FP32 next to INT8, on the
held-out synthetic patches that scripts/train_pcam.py reports on.

The held-out set is scripts/pcam_synth.py's generate(2000, seed=2000) (train_pcam.py's
`generate(val, seed=2000 + seed)` with seed 0); the generator is deterministic, so
every run sees the same patches. They are written to a temporary PCam-style HDF5 file
(pcam_synth.write_h5: dataset `x`, uint8 [N, 96, 96, 3]) and classified by the
release binary, once per configuration:

  fp32   models/bundled/pcam-c4-demo.onnx       --backend tract
  int8   the bundled default (no --model, no --backend: the INT8 model on the int8 engine)
  int8   models/bundled/pcam-c4-demo-int8.onnx  --backend ort   (if ONNX Runtime loads)
  torch  the training module on pcam-c4-demo.safetensors (reference: the numbers in
         pcam-c4-demo.train.json; skip with --no-torch)

Accuracy (metastatic iff p >= 0.5) and AUC use train_pcam.py's rule and its `auc`
function; agreement is top-1 agreement of the CSV `class` column with the FP32 run,
and flips the number of patches whose class differs from FP32.

Usage:
  .venv/bin/python scripts/eval_bundled.py [--n 2000] [--seed 2000] [--json OUT.json]
      [--bin target/release/edgemed-run] [--ort-lib PATH] [--threads T] [--keep DIR] [--no-torch]
The ONNX Runtime library is taken from --ort-lib, else ORT_DYLIB_PATH, else
target/onnxruntime/ (scripts/setup-ort.sh), else the onnxruntime pip package's capi/.
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import pcam_synth  # noqa: E402
import train_pcam  # noqa: E402

BUNDLED = ROOT / "models/bundled"


def find_ort_lib(explicit):
    if explicit:
        return explicit
    if os.environ.get("ORT_DYLIB_PATH"):
        return os.environ["ORT_DYLIB_PATH"]
    local = sorted((ROOT / "target/onnxruntime").glob("libonnxruntime.so*"))
    if local:
        return str(local[0])
    try:
        import onnxruntime

        capi = Path(onnxruntime.__file__).parent / "capi"
        libs = sorted(capi.glob("libonnxruntime.so*"))
        return str(libs[0]) if libs else None
    except ImportError:
        return None


def classify(binary, h5, out_csv, extra, threads):
    """Runs `edgemed-run classify`; returns (probability, class) arrays in patch order, or an error string."""
    cmd = [str(binary), "classify", str(h5), "--format", "csv", "-o", str(out_csv), *extra]
    if threads:
        cmd += ["--threads", str(threads)]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    secs = time.time() - t0
    if r.returncode != 0:
        return None, f"exit {r.returncode}: {r.stderr.strip()[-400:]}", cmd, secs
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and {"file", "probability", "class", "error"} <= rows[0].keys(), f"unexpected CSV header in {out_csv}"
    # Rows are keyed `PATH[index]`; sort by index rather than trusting the order.
    idx = np.array([int(r["file"].rsplit("[", 1)[1].rstrip("]")) for r in rows])
    failed = [r["file"] for r in rows if r["error"]]
    if failed:
        return None, f"{len(failed)} patches failed, e.g. {failed[0]}", cmd, secs
    order = np.argsort(idx)
    p = np.array([float(r["probability"]) for r in rows])[order]
    cls = np.array([r["class"] for r in rows])[order]
    return (p, cls), r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "", cmd, secs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="held-out patches (default 2000, as train_pcam.py)")
    ap.add_argument("--seed", type=int, default=2000, help="generator seed (default 2000 = train_pcam.py's held-out seed)")
    ap.add_argument("--bin", default=str(ROOT / "target/release/edgemed-run"))
    ap.add_argument("--ort-lib", default=None)
    ap.add_argument("--threads", type=int, default=None, help="edgemed-run --threads (default: all cores)")
    ap.add_argument("--json", default=None, help="write the table (and run details) here as JSON")
    ap.add_argument("--keep", default=None, help="keep the HDF5 and CSV files in this directory instead of a temporary one")
    ap.add_argument("--no-torch", action="store_true", help="skip the torch reference row")
    args = ap.parse_args()

    t0 = time.time()
    images, labels = pcam_synth.generate(args.n, seed=args.seed)
    print(f"generated {args.n} patches (seed {args.seed}, {int(labels.sum())} metastatic) in {time.time() - t0:.0f} s", file=sys.stderr)

    tmp = None
    if args.keep:
        work = Path(args.keep)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="eval_bundled_")
        work = Path(tmp.name)
    pcam_synth.write_h5(str(work / "heldout"), images, labels)
    h5 = work / "heldout_x.h5"

    ort_lib = find_ort_lib(args.ort_lib)
    configs = [
        ("fp32", "pcam-c4-demo.onnx", "tract", ["--model", str(BUNDLED / "pcam-c4-demo.onnx"), "--backend", "tract"]),
        ("int8", "bundled default (pcam-c4-demo-int8)", "auto (int8 engine)", []),
    ]
    if ort_lib:
        configs.append(("int8", "pcam-c4-demo-int8.onnx", "ort", ["--model", str(BUNDLED / "pcam-c4-demo-int8.onnx"), "--backend", "ort",
                                                                  "--ort-lib", ort_lib]))
    else:
        print("ONNX Runtime library not found: skipping the ort row", file=sys.stderr)

    rows, fp32_cls, fp32_p = [], None, None
    for i, (prec, model, backend, extra) in enumerate(configs):
        res, note, cmd, secs = classify(args.bin, h5, work / f"run{i}.csv", extra, args.threads)
        row = {"precision": prec, "model": model, "backend": backend, "command": " ".join(cmd[:1] + ["classify", "<heldout_x.h5>"] + cmd[3:]),
               "seconds": round(secs, 1), "log": note}
        if res is None:
            row["error"] = note
            print(f"{model} on {backend}: FAILED ({note})", file=sys.stderr)
        else:
            p, cls = res
            row["accuracy"] = float(((p >= 0.5) == (labels == 1)).mean())
            row["auc"] = float(train_pcam.auc(p, labels))
            if i == 0:  # the FP32 run is the reference
                fp32_cls, fp32_p = cls, p
            if fp32_cls is not None:
                row["agreement_with_fp32"] = float((cls == fp32_cls).mean())
                row["flips_vs_fp32"] = int((cls != fp32_cls).sum())
                row["max_abs_dprob_vs_fp32"] = float(np.abs(p - fp32_p).max())
        rows.append(row)

    if not args.no_torch:
        import torch

        torch.manual_seed(0)
        t1 = time.time()
        model = train_pcam.load_model(BUNDLED / "pcam-c4-demo.safetensors")
        acc, a = train_pcam.evaluate(model, images, labels)
        rows.append({"precision": "fp32", "model": "pcam-c4-demo.safetensors", "backend": "torch (reference)", "accuracy": acc, "auc": a,
                     "seconds": round(time.time() - t1, 1)})

    fmt = lambda v, f: "—" if v is None else format(v, f)  # noqa: E731
    print("\n| model | precision | backend | accuracy | AUC | agreement with FP32 | flips |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['precision']} | {r['backend']} | failed | | | |")
            continue
        print(f"| {r['model']} | {r['precision']} | {r['backend']} | {r['accuracy']:.4f} | {r['auc']:.4f} | "
              f"{fmt(r.get('agreement_with_fp32'), '.4f')} | {fmt(r.get('flips_vs_fp32'), 'd')} |")
    print(f"\n{args.n} held-out patches: pcam_synth.generate({args.n}, seed={args.seed}); accuracy at p >= 0.5")

    if args.json:
        out = {"held_out": {"generator": f"scripts/pcam_synth.py generate({args.n}, seed={args.seed})", "n": args.n,
                            "metastatic": int(labels.sum())},
               "binary": args.bin, "ort_lib": ort_lib, "rows": rows}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
