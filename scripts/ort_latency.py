"""ONNX Runtime latency of one model: one intra-op thread, batch 1, seeded N(0, 1) input,
20 warm-up runs, then the median of ITERS runs in ms. Used by scripts/bench-zoo-vs-ort.sh.
Usage: python scripts/ort_latency.py MODEL.onnx ITERS
"""
import sys, time, numpy as np, onnxruntime as ort
path, iters = sys.argv[1], int(sys.argv[2])
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
s = ort.InferenceSession(path, so, providers=['CPUExecutionProvider'])
i = s.get_inputs()[0]
shape = [d if isinstance(d, int) else 1 for d in i.shape]
x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
for _ in range(20): s.run(None, {i.name: x})
t = []
for _ in range(iters):
    a = time.perf_counter(); s.run(None, {i.name: x}); t.append(time.perf_counter() - a)
print(f"{np.median(t) * 1e3:.4f}")
