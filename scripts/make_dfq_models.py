#!/usr/bin/env python3
"""Reference models and baseline numbers for edgemed's data-free quantization (DFQ,
Nagel et al. 2019) work, written to tests/fixtures/dfq/. Everything is seeded, so
a rerun rewrites the same numbers; ONNX files stay under 1.5 MB each.

Files
-----
mnv2_spread.onnx
    torchvision MobileNetV2 (width_mult 0.25, round_nearest 4, ReLU6, BN after
    every conv, residuals), 2 classes, input "input" [batch, 3, 95, 95], output
    "logits" [batch, 2]. Every BN gamma is multiplied by 10**U(-2, 0.5) per channel
    (2.5 decades) and frozen, beta is N(0, 0.05); the network is then trained for
    1000 steps on synthetic PCam patches (about 2-3 minutes on one thread: the
    random-init network is chaotic, so without it every quantizer scores ~3 dB;
    --train-steps 0 gives that variant) and its running statistics are re-estimated
    on 256 other patches (train mode, cumulative average), so the folded per-channel
    weight ranges spread over decades as in trained networks.

    Two choices keep the benchmark about quantization rather than about a broken
    network (measured, see the issue notes):
    - round_nearest 4, not torchvision's 8: at width 0.25 rounding to 8 gives the
      first inverted-residual block 8 -> 8 channels and so a residual connection
      that the full-width network (32 -> 16) does not have; the first conv's output
      then feeds an Add and no cross-layer equalization can scale it.
    - gammas at most 10**0.5 times the initial ones: with multipliers up to 10 (the
      first version of this script, --gamma-log10=-1.5,1) the boosted channels
      saturate ReLU6 into step functions, the FP32 network itself becomes chaotic
      and every quantizer, per-channel included, scores about 3 dB.
    Exported with the
    TorchScript exporter (opset 13, no constant folding): BatchNormalization nodes
    are kept, ReLU6 is Clip(0, 6).
mnv2_spread_folded.onnx
    The same network with every BN folded into its conv in torch
    (torch.nn.utils.fusion.fuse_conv_bn_eval), exported with constant folding; it
    has no BatchNormalization node (its logits match mnv2_spread.onnx to float
    rounding; the difference is recorded in mnv2_spread.json).
mnv2_spread.json
    Architecture, seeds, and per-layer weight range-ratio stats after BN folding:
    for every conv, r_c = max |w| over channel c's kernel, ratio = max_c r_c /
    min_c r_c. Depthwise and pointwise layers summarised separately (median,
    min, max across layers). Also the same stats after AIMET's CLE, when it ran.
eval_inputs.f32
    Raw little-endian float32 [32, 3, 95, 95]: synthetic patches
    (scripts/pcam_synth.py generate(32, seed 101)), (x/255 - 0.5)/0.25, crop of
    rows/cols 0..94 (torchvision CenterCrop's offset for 96 -> 95), no mask.
mnv2_spread.fp32_logits.f32
    Raw little-endian float32 [32, 2]: ONNX Runtime (CPU, all optimisations,
    one thread) outputs of mnv2_spread.onnx on eval_inputs.f32.
mnv2_spread.ort_perchannel.onnx / mnv2_spread.ort_pertensor.onnx
    onnxruntime.quantization.quantize_static from mnv2_spread_folded.onnx: QDQ,
    MinMax calibration on 64 other synthetic patches (seed 202), u8 activations,
    s8 weights, per_channel True / False ("naive per-tensor INT8"). Kept as ORT
    wrote them: the Clip nodes are gone (the u8 ranges clip) and their bound
    Constant nodes are left dangling.
mnv2_spread.aimet_cle.onnx (only when aimet-onnx is importable)
    aimet_onnx.cross_layer_equalization.equalize_model applied to mnv2_spread.onnx
    (BN fold, ReLU6 -> ReLU, cross-layer scaling, high-bias fold).
baselines.json
    Logit SQNR (dB) = 10 log10(sum y^2 / sum (y - yq)^2) over all eval logits, and
    top-1 agreement with the FP32 logits, for ORT per-channel, ORT per-tensor and
    (if available) AIMET CLE + the same per-tensor quantize_static (against both
    the original and the equalized FP32 logits); also the FP32 change from
    ReLU6 -> ReLU alone. With the exact settings and package versions.
escnn_c4.onnx / escnn_c4.json (only when escnn is importable)
    Tiny C4-equivariant escnn network exported to plain torch then ONNX (opset 13,
    BN kept), input [batch, 3, 33, 33], 2 classes; the json gives the field size
    (4), the layers, and the max |logit difference| under np.rot90 of the input
    measured with ONNX Runtime.

Rerun
-----
The base venv (/work/venv: torch, onnx, onnxruntime, numpy 1.26.4, plus
`pip install --no-deps torchvision==0.29.2`) makes everything except the AIMET
and escnn parts. Without aimet-onnx the AIMET entry of baselines.json says "not
available"; without escnn the escnn_c4 files are left as they are. Both peers
live in an overlay venv, so the base venv keeps numpy 1.26.4 (aimet-onnx would
otherwise pull numpy 2) and its own packages:

    python3.11 -m venv /tmp/dfq-peers
    echo /work/venv/lib/python3.11/site-packages > /tmp/dfq-peers/lib/python3.11/site-packages/base.pth
    printf 'numpy==1.26.4\\ntorch==2.15.0\\nonnx==1.23.2\\nonnxruntime==1.31.1\\n' > /tmp/c.txt
    /tmp/dfq-peers/bin/pip install -c /tmp/c.txt aimet-onnx joblib pymanopt autograd lie-learn
    /tmp/dfq-peers/bin/pip install --no-deps escnn==1.0.11

    /tmp/dfq-peers/bin/python scripts/make_dfq_models.py [--out tests/fixtures/dfq]

Takes about three minutes (one thread is used; data generation and training dominate).
"""
import argparse
import contextlib
import copy
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import pcam_synth  # noqa: E402

S = 95  # network input side
MEAN, STD = 0.5, 0.25
ROUND_NEAREST = 4  # see build_mnv2
WIDTH = 0.25  # 0.35 would give 1.65 MB with BN kept; 0.25 gives about 1 MB
MODEL_SEED = 11  # torch init and the gamma/beta spread
BN_DATA = (256, 303)  # (n, seed) of the patches that re-estimate BN statistics
EVAL_DATA = (32, 101)
CALIB_DATA = (64, 202)
GAMMA_LOG10 = (-2.0, 0.5)
BETA_STD = 0.05
TRAIN_DATA = (2048, 404)  # (n, seed) of the labelled patches for the short training run
TRAIN_STEPS = 1000  # batches of 32, Adam 2e-3 with cosine decay, BN gammas frozen
TRAIN_BATCH = 32


def patches(n, seed):
    """Normalised NCHW float32 crops of generate(n, seed)."""
    img, _ = pcam_synth.generate(n, seed)
    x = (img.astype(np.float32) / 255.0 - MEAN) / STD
    off = (pcam_synth.P - S) // 2  # 0, as torchvision's CenterCrop for 96 -> 95
    return np.ascontiguousarray(x[:, off:off + S, off:off + S, :].transpose(0, 3, 1, 2))


def prune_dead_nodes(m):
    """Drops nodes none of whose outputs is used (AIMET leaves the Clip bounds' Constant nodes behind)."""
    while True:
        used = {i for n in m.graph.node for i in n.input} | {o.name for o in m.graph.output}
        dead = [n for n in m.graph.node if not any(o in used for o in n.output)]
        if not dead:
            return m
        for n in dead:
            m.graph.node.remove(n)


def relu6_as_relu(src, dst):
    """Copy of a model with every Clip(0, 6) replaced by Relu (what AIMET's CLE does first)."""
    m = onnx.load(str(src))
    for n in m.graph.node:
        if n.op_type == "Clip":
            n.op_type = "Relu"
            del n.input[1:]
    onnx.save(prune_dead_nodes(m), str(dst))


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_ort(path, x):
    s = session(path)
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def sqnr_db(y, yq):
    return float(10 * np.log10(np.sum(y.astype(np.float64) ** 2) / np.sum((y.astype(np.float64) - yq) ** 2)))


def top1_agreement(y, yq):
    return float(np.mean(np.argmax(y, 1) == np.argmax(yq, 1)))


def write_f32(path, a):
    np.ascontiguousarray(a, dtype="<f4").tofile(path)


def export(model, x, path, fold, input_hw):
    """TorchScript exporter, opset 13, symbolic batch; fold=False keeps BatchNormalization."""
    model.eval()
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=13, do_constant_folding=fold,
                          training=torch.onnx.TrainingMode.EVAL, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, *input_hw], dims
    return m


def op_counts(m):
    counts = {}
    for n in m.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items()))


# --- MobileNetV2 with spread BN gammas -------------------------------------------

def train(model, steps, seed):
    """Short supervised run on synthetic PCam with the spread BN gammas frozen.

    A randomly initialised BN MobileNetV2 is chaotic: relative input noise of 1e-3
    leaves about 8 dB logit SQNR, so every quantizer scores about 3 dB and top-1
    agreement says nothing. A few hundred steps make the function smooth enough for
    the baselines to separate, while the frozen gammas keep the weight-range spread.
    """
    img, labels = pcam_synth.generate(*TRAIN_DATA)
    del img
    x = torch.from_numpy(patches(*TRAIN_DATA))
    y = torch.from_numpy(labels)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, 2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(x), (TRAIN_BATCH,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return float(np.mean(losses[-100:])) if losses else None


def build_mnv2(train_steps, gamma_log10, seed):
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.mobilenet_v2(width_mult=WIDTH, num_classes=2, round_nearest=ROUND_NEAREST)
    rng = np.random.default_rng(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            c = bn.num_features
            bn.weight.mul_(torch.from_numpy(10.0 ** rng.uniform(*gamma_log10, c)).float())
            bn.bias.copy_(torch.from_numpy(rng.normal(0, BETA_STD, c)).float())
            bn.weight.requires_grad_(False)
    train_loss = train(model, train_steps, seed)
    # Re-estimate running statistics: cumulative average over the batches, train mode.
    x = torch.from_numpy(patches(*BN_DATA))
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), 32):
            model(x[i:i + 32])
    for bn in bns:
        bn.momentum = 0.1  # the exporter writes the attribute; eval ignores it
    return model.eval(), train_loss


def fold_bn(model):
    """Copy of a torchvision MobileNetV2 with every BatchNorm2d folded into the conv before it."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    folded = 0
    for seq in [m for m in model.modules() if isinstance(m, torch.nn.Sequential)]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], torch.nn.Conv2d) and isinstance(seq[i + 1], torch.nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
                seq[i + 1] = torch.nn.Identity()
                folded += 1
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    return model, folded


def range_ratio_stats(m):
    """Per-conv max/min over output channels of max |w| per channel (BN must already be folded)."""
    init = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    layers = []
    for n in m.graph.node:
        if n.op_type != "Conv" or n.input[1] not in init:
            continue
        w = init[n.input[1]]
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        r = np.abs(w.reshape(w.shape[0], -1)).max(1)
        kind = "depthwise" if group > 1 and group == w.shape[0] and w.shape[1] == 1 else (
            "pointwise" if w.shape[2:] == (1, 1) else "full")
        layers.append(dict(node=n.name, kind=kind, shape=list(w.shape), ratio=float(r.max() / max(r.min(), 1e-30)),
                           min_range=float(r.min()), max_range=float(r.max())))

    def summary(kind):
        rs = [l["ratio"] for l in layers if l["kind"] == kind]
        if not rs:
            return None
        return dict(layers=len(rs), median_ratio=float(np.median(rs)), min_ratio=float(np.min(rs)),
                    max_ratio=float(np.max(rs)), geomean_ratio=float(np.exp(np.mean(np.log(rs)))))

    return dict(depthwise=summary("depthwise"), pointwise=summary("pointwise"), full=summary("full"), per_layer=layers)


# --- ONNX Runtime static quantization ----------------------------------------------

class Reader(CalibrationDataReader):
    def __init__(self, x, batch=8):
        self.batches = [x[i:i + batch] for i in range(0, len(x), batch)]
        self.i = 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {"input": self.batches[self.i - 1]}

    def rewind(self):
        self.i = 0


def ort_settings(per_channel):
    return dict(quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=False,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax, extra_options={})


def settings_json(settings, source, calib):
    d = {k: (v.name if hasattr(v, "name") else v) for k, v in settings.items()}
    d.update(source_model=source, calibration_batches_of=8, calibration_data=calib,
             note="default extra_options: ActivationSymmetric=False (asymmetric u8), WeightSymmetric=True (s8); "
                  "no quant_pre_process (BN already folded in the source model)")
    return d


def quantize(src, dst, calib, per_channel):
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        cwd = os.getcwd()
        os.chdir(tmp)  # calibration writes its augmented model to the working directory
        try:
            quantize_static(str(src), str(dst), Reader(calib), **ort_settings(per_channel))
        finally:
            os.chdir(cwd)


def evaluate(path, x, y):
    yq = run_ort(path, x)
    return dict(sqnr_db=round(sqnr_db(y, yq), 3), top1_agreement=top1_agreement(y, yq),
                max_abs_logit_err=float(np.abs(y - yq).max()), size_bytes=os.path.getsize(path))


def run_aimet(out, src, x, y, calib):
    try:
        import aimet_onnx
        from aimet_onnx.cross_layer_equalization import equalize_model
    except Exception as e:  # noqa: BLE001
        return dict(status="not available", reason=f"{type(e).__name__}: {e}"), None
    m = onnx.load(str(src))
    clips_before = sum(n.op_type == "Clip" for n in m.graph.node)
    equalize_model(m)  # in place
    prune_dead_nodes(m)
    dst = out / "mnv2_spread.aimet_cle.onnx"
    onnx.save(m, str(dst))
    m = onnx.load(str(dst))
    y_cle = run_ort(dst, x)
    qdst = out / "mnv2_spread.aimet_cle_pertensor.onnx"
    quantize(dst, qdst, calib, per_channel=False)
    res = dict(
        status="ok",
        version=getattr(aimet_onnx, "__version__", "unknown"),
        api="aimet_onnx.cross_layer_equalization.equalize_model(model) on mnv2_spread.onnx (BN kept)",
        steps="BN fold, ReLU6 (Clip 0..6) -> ReLU, cross-layer scaling, high-bias fold; no bias correction",
        relu6_replaced_by_relu=True,
        clip_nodes_before=clips_before,
        clip_nodes_kept=[n.name for n in m.graph.node if n.op_type == "Clip"],
        ops_after=op_counts(m),
        fp32_vs_original=dict(sqnr_db=round(sqnr_db(y, y_cle), 3), top1_agreement=top1_agreement(y, y_cle),
                              max_abs_logit_err=float(np.abs(y - y_cle).max()),
                              note="equalized FP32 model vs mnv2_spread.onnx: ReLU6->ReLU and high-bias fold "
                                   "change the function"),
        int8_pertensor=evaluate(qdst, x, y),
        int8_pertensor_vs_equalized_fp32=None,
        quantize_static=settings_json(ort_settings(False), "mnv2_spread.aimet_cle.onnx", "generate(64, seed 202)"),
    )
    yq = run_ort(qdst, x)
    res["int8_pertensor_vs_equalized_fp32"] = dict(sqnr_db=round(sqnr_db(y_cle, yq), 3),
                                                   top1_agreement=top1_agreement(y_cle, yq))
    os.remove(qdst)  # only the numbers are kept
    return res, range_ratio_stats(m)


# --- escnn C4 network --------------------------------------------------------------

ESCNN_SEED = 5
ESCNN_HW = 33
ESCNN_FIELDS = (4, 8, 8)  # regular fields per layer


def run_escnn(out):
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import escnn
            from escnn import gspaces
            from escnn import nn as enn
    except Exception as e:  # noqa: BLE001
        return dict(status="not available", reason=f"{type(e).__name__}: {e}")

    torch.manual_seed(ESCNN_SEED)
    g = gspaces.rot2dOnR2(4)
    t_in = enn.FieldType(g, 3 * [g.trivial_repr])
    t1, t2, t3 = (enn.FieldType(g, f * [g.regular_repr]) for f in ESCNN_FIELDS)
    body = enn.SequentialModule(
        enn.R2Conv(t_in, t1, 5, padding=2, bias=False),  # lifting, 33 -> 33
        enn.InnerBatchNorm(t1, momentum=None), enn.ReLU(t1),
        enn.R2Conv(t1, t2, 3, stride=2, padding=0, bias=False),  # 33 -> 16, grid symmetric under rot90
        enn.InnerBatchNorm(t2, momentum=None), enn.ReLU(t2),
        enn.R2Conv(t2, t3, 3, padding=1, bias=False),  # 16 -> 16
        enn.InnerBatchNorm(t3, momentum=None), enn.ReLU(t3),
    )
    gen = torch.Generator().manual_seed(ESCNN_SEED)
    with torch.no_grad():
        for m in body.modules():
            if isinstance(m, enn.InnerBatchNorm):  # per-field affine keeps equivariance
                for bn in m.children():
                    bn.weight.copy_(10 ** (torch.rand(bn.weight.shape, generator=gen) * 1.5 - 1))
                    bn.bias.copy_(0.1 * torch.randn(bn.bias.shape, generator=gen))
        # Random BN statistics: train mode on random data with per-channel offsets/scales.
        body.train()
        for _ in range(4):
            xr = torch.randn(16, 3, ESCNN_HW, ESCNN_HW, generator=gen) * torch.tensor([0.5, 1.0, 2.0]).view(1, 3, 1, 1) \
                + torch.tensor([0.3, -0.2, 0.1]).view(1, 3, 1, 1)
            body(enn.GeometricTensor(xr, t_in))
    body.eval()
    features = body.export()
    nf = ESCNN_FIELDS[-1]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = features
            self.fc = torch.nn.Linear(nf, 2)

        def forward(self, x):
            h = self.features(x)
            h = h.reshape(-1, nf, 4, h.shape[-2], h.shape[-1]).amax(2)  # group max-pool over C4
            return self.fc(h.mean((2, 3)))

    net = Net().eval()
    torch.nn.init.normal_(net.fc.weight, 0, 0.5, generator=gen)
    path = out / "escnn_c4.onnx"
    x0 = torch.zeros(1, 3, ESCNN_HW, ESCNN_HW)
    m = export(net, x0, path, fold=False, input_hw=(ESCNN_HW, ESCNN_HW))

    rng = np.random.default_rng(ESCNN_SEED)
    x = rng.normal(0, 1, (8, 3, ESCNN_HW, ESCNN_HW)).astype(np.float32)
    y = run_ort(path, x)
    with torch.no_grad():
        y_torch = net(torch.from_numpy(x)).numpy()
        y_escnn = net.fc(body(enn.GeometricTensor(torch.from_numpy(x), t_in)).tensor
                         .reshape(-1, nf, 4, 16, 16).amax(2).mean((2, 3))).numpy()
    rot = {}
    for k in (1, 2, 3):
        yr = run_ort(path, np.ascontiguousarray(np.rot90(x, k, axes=(2, 3))))
        rot[f"rot90_k{k}"] = float(np.abs(yr - y).max())
    info = dict(
        status="ok",
        escnn_version=getattr(escnn, "__version__", "1.0.11"),
        group="C4 (gspaces.rot2dOnR2(4))",
        field_size=4,
        channel_layout="field-major: channel = field * 4 + group element",
        input_shape=["batch", 3, ESCNN_HW, ESCNN_HW],
        input_name="input", output_name="logits", num_classes=2,
        layers=[
            "R2Conv trivial x3 -> regular x4 (16 ch), k5 pad2, no bias; InnerBatchNorm; ReLU",
            "R2Conv regular x4 -> regular x8 (32 ch), k3 stride2 pad0 (33 -> 16); InnerBatchNorm; ReLU",
            "R2Conv regular x8 -> regular x8 (32 ch), k3 pad1; InnerBatchNorm; ReLU",
            "group max-pool x.view(b, 8, 4, h, w).amax(2); global average pool; Linear(8, 2)",
        ],
        seed=ESCNN_SEED,
        export="escnn .export() -> torch; torch.onnx.export(dynamo=False, opset 13, do_constant_folding=False)",
        ops=op_counts(m),
        rot90_test=dict(input="8 x N(0,1) [8, 3, 33, 33], seed 5", rotation="np.rot90(x, k, axes=(2, 3))",
                        max_abs_logit_diff=rot, max_abs_logit=float(np.abs(y).max()), runtime="onnxruntime CPU"),
        ort_vs_torch_max_abs=float(np.abs(y - y_torch).max()),
        exported_vs_escnn_max_abs=float(np.abs(y_torch - y_escnn).max()),
        size_bytes=os.path.getsize(path),
    )
    (out / "escnn_c4.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "dfq")
    ap.add_argument("--seed", type=int, default=MODEL_SEED, help="torch init, gamma/beta spread and batch order")
    ap.add_argument("--gamma-log10", type=lambda v: tuple(float(t) for t in v.split(",")), default=GAMMA_LOG10,
                    help="per-channel gamma multiplier 10**U(lo, hi), as LO,HI")
    ap.add_argument("--train-steps", type=int, default=TRAIN_STEPS,
                    help=f"training steps before the BN re-estimation (default {TRAIN_STEPS}; 0: random weights)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ort.set_default_logger_severity(3)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    import torchvision

    # 1. Models.
    model, train_loss = build_mnv2(args.train_steps, args.gamma_log10, args.seed)
    x0 = torch.zeros(1, 3, S, S)
    m_bn = export(model, x0, out / "mnv2_spread.onnx", fold=False, input_hw=(S, S))
    folded, n_folded = fold_bn(model)
    m_f = export(folded, x0, out / "mnv2_spread_folded.onnx", fold=True, input_hw=(S, S))
    assert sum(n.op_type == "BatchNormalization" for n in m_bn.graph.node) == n_folded
    assert not any(n.op_type == "BatchNormalization" for n in m_f.graph.node)

    # 2. Inputs and FP32 logits.
    x_eval = patches(*EVAL_DATA)
    labels_eval = pcam_synth.generate(*EVAL_DATA)[1]
    x_calib = patches(*CALIB_DATA)
    write_f32(out / "eval_inputs.f32", x_eval)
    y = run_ort(out / "mnv2_spread.onnx", x_eval)
    write_f32(out / "mnv2_spread.fp32_logits.f32", y)
    y_folded = run_ort(out / "mnv2_spread_folded.onnx", x_eval)
    with torch.no_grad():
        y_torch = model(torch.from_numpy(x_eval)).numpy()

    # 3. Baselines.
    calib_desc = "pcam_synth.generate(64, seed 202), same normalisation and crop as eval_inputs"
    results = {}
    for name, pc in (("ort_perchannel", True), ("ort_pertensor", False)):
        dst = out / f"mnv2_spread.{name}.onnx"
        quantize(out / "mnv2_spread_folded.onnx", dst, x_calib, pc)
        mq = onnx.load(str(dst))
        used = {i for n in mq.graph.node for i in n.input}
        results[name] = dict(
            **evaluate(dst, x_eval, y),
            ops=op_counts(mq),
            dangling_constant_nodes=sum(n.op_type == "Constant" and n.output[0] not in used for n in mq.graph.node),
            note="quantize_static drops every Clip(0, 6) after a conv (the u8 range of the conv's QuantizeLinear, "
                 "calibrated on the Clip output, does the clipping) and leaves the Clip bounds as dangling Constant "
                 "nodes; the file is kept as ORT wrote it",
            settings=settings_json(ort_settings(pc), "mnv2_spread_folded.onnx", calib_desc))
    aimet, cle_stats = run_aimet(out, out / "mnv2_spread.onnx", x_eval, y, x_calib)
    results["aimet_cle_pertensor"] = aimet
    with tempfile.TemporaryDirectory() as tmp:  # how much of AIMET's change is ReLU6 -> ReLU alone
        relu = Path(tmp) / "relu.onnx"
        relu6_as_relu(out / "mnv2_spread_folded.onnx", relu)
        y_relu = run_ort(relu, x_eval)
    results["fp32_relu6_replaced_by_relu"] = dict(
        sqnr_db=round(sqnr_db(y, y_relu), 3), top1_agreement=top1_agreement(y, y_relu),
        note="FP32 mnv2_spread_folded.onnx with every Clip(0, 6) as Relu, against the FP32 logits; no file kept")
    baselines = dict(
        model="mnv2_spread (FP32 reference: mnv2_spread.fp32_logits.f32, ONNX Runtime on mnv2_spread.onnx)",
        eval_inputs="eval_inputs.f32 [32, 3, 95, 95]",
        metric="sqnr_db = 10 log10(sum y^2 / sum (y - yq)^2) over all 32 x 2 logits; top1_agreement = "
               "mean(argmax y == argmax yq); ONNX Runtime CPU, default optimisations, 1 thread",
        onnxruntime_version=ort.__version__,
        fp32_logit_rms=float(np.sqrt(np.mean(y.astype(np.float64) ** 2))),
        fp32_predicted_class_counts=np.bincount(np.argmax(y, 1), minlength=2).tolist(),
        fp32_accuracy_on_eval_labels=float(np.mean(np.argmax(y, 1) == labels_eval)),
        eval_labels=labels_eval.tolist(),
        results=results,
    )
    (out / "baselines.json").write_text(json.dumps(baselines, indent=2) + "\n")

    stats = range_ratio_stats(m_f)
    desc = dict(
        architecture=f"torchvision.models.mobilenet_v2(width_mult={WIDTH}, num_classes=2, round_nearest={ROUND_NEAREST}), ReLU6, "
                     "BN after every conv, residuals",
        torch_version=torch.__version__, torchvision_version=torchvision.__version__,
        input_name="input", output_name="logits", input_shape=["batch", 3, S, S], output_shape=["batch", 2],
        preprocess=f"(x/255 - {MEAN})/{STD}, crop rows/cols 0..94 of the 96x96 patch, no mask",
        seed=args.seed,
        training=(f"{args.train_steps} steps, batch {TRAIN_BATCH}, Adam lr 2e-3 cosine to 0, cross-entropy on "
                  f"pcam_synth.generate({TRAIN_DATA[0]}, seed {TRAIN_DATA[1]}) (same preprocessing), after the gamma "
                  f"spread and with BN gammas frozen; mean loss of the last 100 steps: {train_loss}"
                  if args.train_steps else "none: random torchvision init"),
        bn_spread=f"gamma *= 10**U{args.gamma_log10} per channel, beta = N(0, {BETA_STD}) (then trained); running stats re-estimated "
                  f"on pcam_synth.generate({BN_DATA[0]}, seed {BN_DATA[1]}), batches of 32, train mode, "
                  "momentum=None (cumulative average)",
        batchnorm_nodes=n_folded,
        ops=op_counts(m_bn), ops_folded=op_counts(m_f),
        params=int(sum(p.numel() for p in model.parameters())),
        sizes_bytes={f: os.path.getsize(out / f) for f in ("mnv2_spread.onnx", "mnv2_spread_folded.onnx")},
        check=dict(folded_vs_bn_max_abs=float(np.abs(y - y_folded).max()),
                   ort_vs_torch_max_abs=float(np.abs(y - y_torch).max())),
        range_ratio_definition="per conv after BN folding: r_c = max |w| over output channel c; "
                               "ratio = max_c r_c / min_c r_c; summaries are across layers",
        range_ratio_after_bn_fold=stats,
        range_ratio_after_aimet_cle=cle_stats,
    )
    (out / "mnv2_spread.json").write_text(json.dumps(desc, indent=2) + "\n")

    # 4. escnn.
    esc = run_escnn(out)

    # Every ONNX file must load and stay small.
    for f in sorted(out.glob("*.onnx")):
        session(f)
        assert f.stat().st_size < 1.5e6, f
    print(f"wrote {out}")
    for f in sorted(out.iterdir()):
        print(f"  {f.name:40s} {f.stat().st_size:>9d}")
    for k, v in results.items():
        print(f"{k:22s}", {kk: v.get(kk) for kk in ("status", "sqnr_db", "top1_agreement")} if "sqnr_db" in v
              else v.get("status"), v.get("int8_pertensor", ""))
    dw = stats["depthwise"]
    print(f"depthwise range ratio after BN fold: median {dw['median_ratio']:.3g} (min {dw['min_ratio']:.3g}, "
          f"max {dw['max_ratio']:.3g}, {dw['layers']} layers)")
    if cle_stats:
        print(f"after AIMET CLE: median {cle_stats['depthwise']['median_ratio']:.3g}")
    print("escnn:", esc.get("status"), esc.get("rot90_test", {}).get("max_abs_logit_diff", esc.get("reason")))


if __name__ == "__main__":
    sys.exit(main())
