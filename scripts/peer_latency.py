#!/usr/bin/env python3
"""Latency of one model on one INT8 CPU peer, batch 1, in this process: WARMUP untimed runs, then the median
of ITERS timed runs (time.perf_counter around one inference call, the input already set up). Prints one
JSON object. Used by scripts/bench-peers.sh, which runs each measurement in its own process and venv.

  python scripts/peer_latency.py {ort|openvino|litert} MODEL --threads T [--iters N] [--warmup W]

ort       onnxruntime CPUExecutionProvider on the QDQ .onnx: intra-op threads T, inter-op 1, sequential,
          all graph optimisations (its default; QDQ pairs become QLinear/integer kernels).
openvino  openvino CPU plugin on the same QDQ .onnx (read directly; the batch fixed to 1): INFERENCE_NUM_THREADS
          T, NUM_STREAMS 1, PERFORMANCE_HINT LATENCY, INFERENCE_PRECISION_HINT f32 (what the graph leaves in float
          runs in f32, as on the other runtimes, not bf16). Also reports how many convolutions run in i8/u8.
litert    ai-edge-litert Interpreter (TFLite, default XNNPACK delegate) on a full-int8 .tflite, num_threads T.
Input: seeded N(0, 1) float32 (quantized to the input's dtype for an int8 .tflite); dynamic dims set to 1.
"""
import argparse
import json
import time

import numpy as np


def static(shape):
    return [int(d) if isinstance(d, (int, np.integer)) and d > 0 else 1 for d in shape]


def ort_runner(path, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    i = s.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal(static(i.shape)).astype(np.float32)
    feed = {i.name: x}
    return (lambda: s.run(None, feed)), {"version": ort.__version__}


def openvino_runner(path, threads):
    import openvino as ov
    core = ov.Core()
    m = core.read_model(path)
    inp = m.inputs[0]
    ps = inp.get_partial_shape()
    if ps.is_dynamic:
        dims = [d.get_length() if d.is_static else 1 for d in ps]
        m.reshape({inp.get_any_name(): ov.PartialShape(dims)})
    cfg = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
           "INFERENCE_PRECISION_HINT": "f32"}
    c = core.compile_model(m, "CPU", cfg)
    req = c.create_infer_request()
    shape = list(c.inputs[0].get_shape())
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    req.set_input_tensor(ov.Tensor(x))
    prec = {}
    for op in c.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        if "layerType" in rt and rt["layerType"].astype(str) == "Convolution":
            p = rt["runtimePrecision"].astype(str) if "runtimePrecision" in rt else "?"
            prec[p] = prec.get(p, 0) + 1
    return req.infer, {"version": ov.get_version(), "conv_runtime_precision": prec}


def litert_runner(path, threads):
    from ai_edge_litert.interpreter import Interpreter
    import importlib.metadata as md
    it = Interpreter(model_path=path, num_threads=threads)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    x = np.random.default_rng(0).standard_normal(static(list(d["shape"]))).astype(np.float32)
    if d["dtype"] != np.float32:
        scale, zp = d["quantization"]
        info = np.iinfo(d["dtype"])
        x = np.clip(np.round(x / scale + zp), info.min, info.max).astype(d["dtype"])
    it.set_tensor(d["index"], x)
    return it.invoke, {"version": md.version("ai-edge-litert"), "input_dtype": np.dtype(d["dtype"]).name}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runtime", choices=["ort", "openvino", "litert"])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    a = ap.parse_args()
    run, info = {"ort": ort_runner, "openvino": openvino_runner, "litert": litert_runner}[a.runtime](a.model, a.threads)
    for _ in range(a.warmup):
        run()
    t = []
    for _ in range(a.iters):
        s = time.perf_counter()
        run()
        t.append(time.perf_counter() - s)
    t = np.array(t) * 1e3
    print(json.dumps({"runtime": a.runtime, "model": a.model, "threads": a.threads, "iters": a.iters,
                      "p50_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)), **info}))


if __name__ == "__main__":
    main()
