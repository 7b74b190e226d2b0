#!/usr/bin/env python3
"""Model zoo of third-party networks for edgemed's converter and engine: networks
built by escnn, torchvision and MONAI with random weights whose batch-norm
statistics are realistic, exported to FP32 ONNX the ways users export them.
Seeded: a rerun rebuilds the same weights and inputs (ONNX bytes may differ in
metadata only).

Models (default output target/zoo/, one <name>.onnx each)
--------------------------------------------------------
c{4,8,12}_*      escnn C_N-equivariant MobileNetV2-style classifiers (95x95 RGB,
                 trivial input repr, regular fields): stem 3x3 R2Conv stride 2,
                 inverted-residual blocks [1x1 R2Conv -> InnerBatchNorm -> ReLU ->
                 depthwise R2Conv(hid, hid, 3, groups=len(hid.representations)),
                 one group per regular field -> InnerBatchNorm -> ReLU -> 1x1
                 R2Conv -> InnerBatchNorm, + input where shapes match], last 1x1
                 R2Conv -> BN -> ReLU, group pooling written as
                 y.view(b, c // N, N, h, w).amax(2) (escnn's GroupPooling exports
                 to a module that still needs escnn), global average pool, Linear
                 to 2 classes. Built with escnn, BN statistics re-estimated in
                 train mode on random data (InnerBatchNorm: one statistic per
                 field), BN gammas spread over 2.5 decades per field, then
                 .export() to plain torch modules. Strided 3x3 convolutions use
                 padding 0 so every feature map stays odd (95 -> 47 -> 23 -> 11):
                 90-degree rotations of the input are exact rotations of every
                 feature map, and torch's outputs for rot90(x) equal those for x
                 (checked, printed). Exports, all with a dynamic batch axis (the
                 pooling view goes through Shape -> Gather -> ... -> Reshape):
                   *_legacy_bn      torch.onnx.export(dynamo=False, opset 17, do_constant_folding=False): BN kept
                   *_legacy_folded  dynamo=False, opset 17, do_constant_folding=True, BN folded into the
                                    convolutions in torch first (torch.fx fuse of eval Conv+BN)
                   *_dynamo_bn      torch.onnx.export(dynamo=True, opset 18, optimize=False): BN kept
tv_mnv2_*        torchvision mobilenet_v2(width_mult=0.35, num_classes=2), 95x95,
                 ReLU6 kept, BN gammas spread over 2.5 decades, statistics
                 re-estimated; _legacy_bn (dynamo=False, opset 17, no folding) and
                 _dynamo_bn (dynamo=True, opset 18, optimize=False).
unet3d           monai UNet(spatial_dims=3, in_channels=1, out_channels=2,
                 channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=2),
                 MONAI defaults (instance norm without affine, PReLU; the PReLU
                 slopes are drawn from U(0.05, 0.4) so they are not all 0.25),
                 input [1, 1, 32, 32, 32]; legacy exporter, opset 17, folding on.
unet2d_bn        monai UNet(spatial_dims=2, 1 -> 2, channels=(8, 16, 32, 64),
                 strides=(2, 2, 2), num_res_units=2, norm="batch"), BN statistics
                 re-estimated, input [1, 1, 64, 64]; legacy, opset 17,
                 do_constant_folding=False (BN kept).
basicunet3d      monai BasicUNet(spatial_dims=3, features=(8, 8, 16, 32, 64, 8)),
                 MONAI defaults (instance norm with affine, LeakyReLU 0.1,
                 ConvTranspose upsampling), input [1, 1, 32, 32, 32]; legacy,
                 opset 17, folding on.

The U-Nets (unet3d and its fixture copy, unet2d_bn, basicunet3d, dynunet3d) are not left at random weights
(their two logits would be nearly equal almost everywhere, so argmax labels flip under any perturbation): each
is trained briefly, seeded and deterministic (torch deterministic algorithms, 2 threads; Adam lr 3e-3 with
cosine decay, cross-entropy + soft Dice, a few hundred steps of random 32^3 windows, 64x64 slices for 2-D, cut
from 48 noisy blobs volumes) on the synthetic task of the zoo's volumes: label 1 inside a blob, i.e.
blob_truth of the volume before noise (clean > 1.0 for bright blobs, clean < -0.75 for dark ones). The
manifest's "training" entry of each records steps, final loss, and on the eval volume the FP32 Dice vs the
truth and the quantiles (1%, 5%, 50%) of the logit margin |l1 - l0|.

Beside every model: <name>.input.f32 (raw little-endian float32 in the model's
input shape; batch 2 for 2-D classifiers, batch 1 otherwise) and
<name>.fp32_ref.f32 (torch's own outputs on it, the reference). For unet3d also
unet3d_calib/calib_{0..3}.npy (4 windows [1, 1, 32, 32, 32] float32 of smooth
random blobs on a smooth background) and unet3d_eval.nii.gz (64x64x48, same
generator, 1 mm, identity affine) with unet3d_eval_ref.nii.gz (uint8 argmax of
MONAI sliding_window_inference(roi 32^3, overlap 0.25, constant blend) of the
FP32 torch model: the label map edgemed-run segment should approach).
manifest.json lists every model: file, kind, input/output shapes, exporter,
opset, field_size (N for C_N models, else 1), op types, notes, file sizes, and
ONNX Runtime's max abs difference to torch.

--fixtures writes a smaller subset straight into tests/fixtures/zoo/ (fewer
fields for escnn, unet3d with channels (4, 8, 16, 32)): c4_legacy_bn,
c4_dynamo_bn, c8_legacy_bn, unet3d, tv_mnv2_legacy_bn, and its own manifest.

Needs torch, torchvision, onnxscript, escnn, monai, nibabel
(scripts/setup-python.sh --zoo).
Usage: python scripts/make_zoo.py [--out DIR] [--fixtures]
"""
import argparse
import copy
import json
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parent.parent
torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

# Ops the engine is known to take; anything else is listed in the manifest under "extra_ops".
KNOWN_OPS = {"Conv", "ConvTranspose", "BatchNormalization", "Relu", "Clip", "PRelu", "InstanceNormalization", "Add",
             "Concat", "Reshape", "Shape", "Gather", "Unsqueeze", "Cast", "Div", "ReduceMax", "GlobalAveragePool",
             "Flatten", "Gemm", "MatMul", "Constant", "Identity"}


# ---------------------------------------------------------------- BN statistics
def spread_gammas(bn_modules, rng_seed, decades=2.5):
    """Multiplies each BN gamma by 10^U(-decades/2, decades/2) (per field for escnn: one gamma per field)."""
    g = torch.Generator().manual_seed(rng_seed)
    with torch.no_grad():
        for m in bn_modules:
            m.weight.mul_(10 ** ((torch.rand(m.weight.shape, generator=g) - 0.5) * decades))
            m.bias.normal_(0.3, 0.5, generator=g)


def estimate_bn(model, make_batch, bn_modules, batches=8):
    """Cumulative-average BN statistics over `batches` random batches in train mode, then eval."""
    for m in bn_modules:
        m.momentum = None
        m.reset_running_stats()
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(make_batch())
    return model.eval()


def bns(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


# ---------------------------------------------------------------- escnn C_N MobileNetV2
class Res(torch.nn.Module):
    """Body plus its input where the shapes match; works on escnn GeometricTensors and on plain tensors."""

    def __init__(self, body, residual):
        super().__init__()
        self.body, self.residual = body, residual

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class EqNet(torch.nn.Module):
    def __init__(self, features, n, classes_in, in_type=None):
        super().__init__()
        self.features, self.n, self.in_type = features, n, in_type
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.head = torch.nn.Linear(classes_in, 2)

    def forward(self, x):
        if self.in_type is not None:
            from escnn.nn import GeometricTensor
            x = GeometricTensor(x, self.in_type)
        y = self.features(x)
        if self.in_type is not None:
            y = y.tensor
        b, c, h, w = y.shape
        y = y.view(b, c // self.n, self.n, h, w).amax(2)  # group pooling over each regular field
        return self.head(torch.flatten(self.pool(y), 1))


def escnn_mnv2(n, stem, blocks, last, seed):
    """blocks: (expansion, out fields, stride). Returns (escnn model, exported plain torch model)."""
    from escnn import gspaces
    from escnn import nn as enn
    torch.manual_seed(seed)
    gs = gspaces.rot2dOnR2(n)
    reg = lambda f: enn.FieldType(gs, f * [gs.regular_repr])
    in_t = enn.FieldType(gs, 3 * [gs.trivial_repr])
    t = reg(stem)
    layers = [Res(enn.SequentialModule(enn.R2Conv(in_t, t, 3, stride=2, padding=0, bias=False),
                                       enn.InnerBatchNorm(t), enn.ReLU(t)), False)]
    for e, f, s in blocks:
        hid, out = reg(t.size // n * e), reg(f)
        body = enn.SequentialModule(
            enn.R2Conv(t, hid, 1, bias=False), enn.InnerBatchNorm(hid), enn.ReLU(hid),
            enn.R2Conv(hid, hid, 3, stride=s, padding=1 if s == 1 else 0, groups=len(hid.representations), bias=False),
            enn.InnerBatchNorm(hid), enn.ReLU(hid),
            enn.R2Conv(hid, out, 1, bias=False), enn.InnerBatchNorm(out))
        layers.append(Res(body, s == 1 and t == out))
        t = out
    lt = reg(last)
    layers.append(Res(enn.SequentialModule(enn.R2Conv(t, lt, 1, bias=False), enn.InnerBatchNorm(lt), enn.ReLU(lt)), False))
    feats = torch.nn.Sequential(*layers)
    eq = EqNet(feats, n, last, in_type=in_t)
    inner = [m for m in eq.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    spread_gammas(inner, seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    estimate_bn(eq, lambda: torch.randn(16, 3, 95, 95, generator=g), inner, batches=8)
    plain_layers = [Res(layer.body.export(), layer.residual) for layer in feats]
    plain = EqNet(torch.nn.Sequential(*plain_layers), n, last)
    plain.head.load_state_dict(eq.head.state_dict())
    return eq.eval(), plain.eval()


def fold_bn(model):
    """Eval-mode Conv+BN fusion in torch (what a user does before exporting a deployment model)."""
    import torch.fx
    from torch.fx.experimental.optimization import fuse
    return fuse(model)


# ---------------------------------------------------------------- torchvision / MONAI
def tv_mnv2(seed):
    import torchvision
    torch.manual_seed(seed)
    m = torchvision.models.mobilenet_v2(width_mult=0.35, num_classes=2)
    spread_gammas(bns(m), seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    return estimate_bn(m, lambda: torch.randn(16, 3, 95, 95, generator=g), bns(m))


def randomize_prelu(m, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.modules():
            if isinstance(p, torch.nn.PReLU):
                p.weight.copy_(0.05 + 0.35 * torch.rand(p.weight.shape, generator=g))
    return m


def monai_unet3d(seed, channels=(8, 16, 32, 64)):
    from monai.networks.nets import UNet
    torch.manual_seed(seed)
    m = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=channels, strides=(2,) * (len(channels) - 1),
             num_res_units=2)
    return randomize_prelu(m, seed + 1).eval()


def monai_unet2d_bn(seed):
    from monai.networks.nets import UNet
    torch.manual_seed(seed)
    m = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16, 32, 64), strides=(2, 2, 2),
             num_res_units=2, norm="batch")
    randomize_prelu(m, seed + 1)
    spread_gammas(bns(m), seed + 2)
    g = torch.Generator().manual_seed(seed + 3)
    return estimate_bn(m, lambda: torch.randn(8, 1, 64, 64, generator=g) * 0.8 + 0.3, bns(m))


def monai_basicunet3d(seed):
    from monai.networks.nets import BasicUNet
    torch.manual_seed(seed)
    m = BasicUNet(spatial_dims=3, in_channels=1, out_channels=2, features=(8, 8, 16, 32, 64, 8))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # instance-norm affine parameters away from 1 / 0
        for p in m.modules():
            if isinstance(p, torch.nn.InstanceNorm3d) and p.affine:
                p.weight.mul_(10 ** ((torch.rand(p.weight.shape, generator=g) - 0.5) * 1.0))
                p.bias.normal_(0.0, 0.3, generator=g)
    return m.eval()


def monai_dynunet3d(seed):
    from monai.networks.nets import DynUNet
    torch.manual_seed(seed)
    m = DynUNet(spatial_dims=3, in_channels=1, out_channels=2, kernel_size=[3, 3, 3, 3], strides=[1, 2, 2, 2],
                upsample_kernel_size=[2, 2, 2], filters=[8, 16, 32, 64], res_block=True)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in m.modules():
            if isinstance(p, torch.nn.InstanceNorm3d) and p.affine:
                p.weight.mul_(10 ** ((torch.rand(p.weight.shape, generator=g) - 0.5) * 1.0))
                p.bias.normal_(0.0, 0.3, generator=g)
    return m.eval()


def tv_mnv2_small_head(seed, last=320):
    """The fixture copy: the same torchvision network with its 1280-channel last 1x1 conv cut to `last`."""
    from torchvision.ops.misc import Conv2dNormActivation
    torch.manual_seed(seed)
    import torchvision
    m = torchvision.models.mobilenet_v2(width_mult=0.35, num_classes=2)
    cin = m.features[-1][0].in_channels
    m.features[-1] = Conv2dNormActivation(cin, last, kernel_size=1, activation_layer=torch.nn.ReLU6)
    m.classifier[-1] = torch.nn.Linear(last, 2)
    spread_gammas(bns(m), seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    return estimate_bn(m, lambda: torch.randn(16, 3, 95, 95, generator=g), bns(m))


# ---------------------------------------------------------------- volumes
def blobs(shape, rng, n_blobs=6, truth=False):
    """Smooth random structures: a smooth background plus bright / dark ellipsoids, blurred, with mild noise.
    truth=True also returns blob_truth of the volume before noise (the same random draws either way)."""
    from scipy.ndimage import gaussian_filter
    v = gaussian_filter(rng.standard_normal(shape), sigma=6) * 8
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(np.float64)
    for _ in range(n_blobs):
        c = rng.uniform(0.15, 0.85, 3) * np.array(shape)
        r = rng.uniform(3, 8, 3)
        inside = (((grid - c) / r) ** 2).sum(-1) < 1
        v[inside] += rng.choice([-1.5, 2.0])
    clean = gaussian_filter(v, sigma=1.0)
    v = clean + 0.1 * rng.standard_normal(shape)
    if truth:
        return v.astype(np.float32), blob_truth(clean)
    return v.astype(np.float32)


def blob_truth(clean):
    """The synthetic ground truth, a function of the blurred volume before noise: inside a blob's half-height
    contour (bright blobs +2: clean > 1.0; dark blobs -1.5: clean < -0.75). The background field stays near 0."""
    return ((clean > 1.0) | (clean < -0.75)).astype(np.uint8)


def write_nifti(path, data):
    import nibabel as nib
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))


# ---------------------------------------------------------------- brief training of the U-Nets
# Random weights leave the two logits of a segmenter nearly equal almost everywhere, so any perturbation flips
# argmax labels; trained networks have margins. The U-Nets are trained briefly on the synthetic task the zoo's
# volumes show: label = blob_truth (inside a blob), from noisy blobs volumes.
TRAIN_THREADS = 2
TRAINED_NOTE = ("trained briefly (see training) on random windows of noisy blobs volumes, label = blob_truth "
                "(inside a blob's half-height contour of the volume before noise)")


def training_pool(n=48, seed=7):
    """n volumes 64x64x48 (8 blobs each, the eval volume's generator) with their truth; windows are cut from them."""
    rng = np.random.default_rng(seed)
    vols, labs = zip(*(blobs((64, 64, 48), rng, 8, truth=True) for _ in range(n)))
    return np.stack(vols), np.stack(labs)


_POOL = None


def pool():
    global _POOL
    if _POOL is None:
        _POOL = training_pool()
    return _POOL


def train_batch(rng, dims, batch):
    """Random windows (32^3 for 3-D, 64x64 slices for 2-D) from the pool, randomly flipped."""
    vols, labs = pool()
    xs, ys = [], []
    for _ in range(batch):
        i = rng.integers(len(vols))
        if dims == 3:
            o = [rng.integers(s - 32 + 1) for s in vols.shape[1:]]
            sl = (i,) + tuple(slice(a, a + 32) for a in o)
        else:
            sl = (i, slice(None), slice(None), rng.integers(vols.shape[3]))
        x, y = vols[sl], labs[sl]
        for ax in range(dims):
            if rng.random() < 0.5:
                x, y = np.flip(x, ax), np.flip(y, ax)
        xs.append(np.ascontiguousarray(x)[None])
        ys.append(np.ascontiguousarray(y))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)).long()


def train_segmenter(model, seed, dims=3, steps=300, batch=4, lr=3e-3):
    """Seeded, deterministic (deterministic algorithms, TRAIN_THREADS threads) Adam with cosine decay on
    cross-entropy + soft Dice of the foreground. Returns the model in eval mode and a summary for the manifest."""
    import time
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(TRAIN_THREADS)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr / 10)
    model.train()
    t0, losses = time.process_time(), []
    try:
        for _ in range(steps):
            x, y = train_batch(rng, dims, batch)
            out = model(x)
            if isinstance(out, (list, tuple)):
                out = out[0]
            p = torch.softmax(out, 1)[:, 1]
            f = (y == 1).float()
            dice = 1 - (2 * (p * f).sum() + 1) / (p.sum() + f.sum() + 1)
            loss = torch.nn.functional.cross_entropy(out, y) + dice
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss))
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)
    final = float(np.mean(losses[-20:]))
    print(f"  trained {steps} steps (batch {batch}): loss {losses[0]:.3f} -> {final:.4f} "
          f"(mean of last 20), {time.process_time() - t0:.0f} s CPU")
    return model.eval(), dict(steps=steps, batch=batch, optimizer=f"Adam lr {lr:g} cosine to {lr / 10:g}",
                              loss="cross-entropy + soft Dice (foreground)", first_loss=losses[0],
                              final_loss=final, seed=seed)


def eval_volume():
    """The eval volume (64x64x48) and its truth: the same draws as unet3d_volumes writes."""
    rng = np.random.default_rng(31)
    for _ in range(4):
        blobs((32, 32, 32), rng, 3)
    return blobs((64, 64, 48), rng, 8, truth=True)


def segment_logits(model, vol, dims=3):
    from monai.inferers import sliding_window_inference
    with torch.no_grad():
        if dims == 3:
            return sliding_window_inference(torch.from_numpy(vol)[None, None], (32, 32, 32), 1, model,
                                            overlap=0.25, mode="constant")[0].numpy()
        return model(torch.from_numpy(np.ascontiguousarray(np.moveaxis(vol, 2, 0)))[:, None]).numpy()


def seg_quality(model, dims=3):
    """FP32 Dice of argmax vs the truth on the eval volume and quantiles of the logit margin |l1 - l0|
    (3-D: sliding window roi 32^3, overlap 0.25; 2-D: the volume's 48 axial 64x64 slices)."""
    vol, truth = eval_volume()
    logits = segment_logits(model, vol, dims)
    if dims == 2:
        truth = np.moveaxis(truth, 2, 0)
        margin = np.abs(logits[:, 1] - logits[:, 0])
        pred = logits.argmax(1)
    else:
        margin = np.abs(logits[1] - logits[0])
        pred = logits.argmax(0)
    dice = 2 * float(((pred == 1) & (truth == 1)).sum()) / float((pred == 1).sum() + (truth == 1).sum())
    q = {f"q{int(p * 100):02d}": float(np.quantile(margin, p)) for p in (0.01, 0.05, 0.5)}
    r = dict(eval_dice_vs_truth=dice, eval_margin_quantiles=q, eval_truth_fraction=float(truth.mean()),
             eval_voxel_accuracy=float((pred == truth).mean()))
    print(f"  eval volume: Dice vs truth {dice:.4f}, |l1 - l0| quantiles 1% {q['q01']:.2f} 5% {q['q05']:.2f} "
          f"50% {q['q50']:.2f}")
    return r


def trained(model, seed, dims=3, **kw):
    model, info = train_segmenter(model, seed, dims, **kw)
    info.update(seg_quality(model, dims))
    return model, info


def unet3d_volumes(out, model):
    from monai.inferers import sliding_window_inference
    rng = np.random.default_rng(31)
    cal = out / "unet3d_calib"
    cal.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        np.save(cal / f"calib_{i}.npy", blobs((32, 32, 32), rng, 3)[None, None])
    vol = blobs((64, 64, 48), rng, 8)
    write_nifti(out / "unet3d_eval.nii.gz", vol)
    with torch.no_grad():
        logits = sliding_window_inference(torch.from_numpy(vol)[None, None], (32, 32, 32), 1, model, overlap=0.25,
                                          mode="constant")
    labels = logits[0].argmax(0).numpy().astype(np.uint8)
    write_nifti(out / "unet3d_eval_ref.nii.gz", labels)
    fr = np.bincount(labels.ravel(), minlength=2) / labels.size
    print(f"unet3d eval volume 64x64x48: reference label fractions {np.round(fr, 3).tolist()}")


# ---------------------------------------------------------------- export
LEGACY_BN = dict(exporter="torch.onnx legacy (dynamo=False)", dynamo=False, opset_version=17, do_constant_folding=False)
LEGACY_FOLD = dict(exporter="torch.onnx legacy (dynamo=False)", dynamo=False, opset_version=17, do_constant_folding=True)
DYNAMO_BN = dict(exporter="torch.onnx dynamo (optimize=False)", dynamo=True, opset_version=18, optimize=False)


def export(out, name, model, x, kind, how, field_size=1, notes="", dynamic_batch=True, input_file=None):
    path = out / f"{name}.onnx"
    how = dict(how)
    exporter = how.pop("exporter")
    kw = dict(input_names=["input"], output_names=["output"], external_data=False, **how)
    if dynamic_batch:
        if how["dynamo"]:
            kw["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=64)},)
        else:
            kw["dynamic_axes"] = {"input": {0: "batch"}, "output": {0: "batch"}}
    with torch.no_grad():
        y = model(x)
        torch.onnx.export(model, (x,), str(path), **kw)
    mp = onnx.load(str(path))
    onnx.checker.check_model(mp)
    ops = sorted({n.op_type for n in mp.graph.node})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    yo = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    diff = float(np.abs(yo - y.numpy()).max())
    scale = float(np.abs(y.numpy()).max())
    with torch.no_grad():  # how far torch's own FP32 is from float64: the noise floor of any FP32 comparison
        noise = float((y.double() - copy.deepcopy(model).double()(x.double())).abs().max())
    assert diff <= max(1e-3 * max(scale, 1.0), 4 * noise), (name, diff, scale, noise)
    if dynamic_batch:  # another batch size through the same file
        xb = x[:1] if x.shape[0] > 1 else torch.cat([x, x])
        with torch.no_grad():
            yb = model(xb).numpy()
        db = float(np.abs(sess.run(None, {sess.get_inputs()[0].name: xb.numpy()})[0] - yb).max())
        assert db <= max(1e-3 * max(scale, 1.0), 4 * noise), (name, "batch", db)
    input_file = input_file or f"{name}.input.f32"
    x.numpy().astype("<f4").tofile(out / input_file)
    y.numpy().astype("<f4").tofile(out / f"{name}.fp32_ref.f32")
    entry = dict(file=path.name, kind=kind, input_shape=list(x.shape), output_shape=list(y.shape),
                 input=input_file, fp32_ref=f"{name}.fp32_ref.f32", exporter=exporter,
                 opset=mp.opset_import[0].version, field_size=field_size,
                 dynamic_batch=dynamic_batch, ops=ops, extra_ops=[o for o in ops if o not in KNOWN_OPS],
                 batch_norm_nodes=sum(n.op_type == "BatchNormalization" for n in mp.graph.node),
                 nodes=len(mp.graph.node), bytes=path.stat().st_size, ort_max_abs_diff=diff,
                 torch_fp32_vs_fp64_max_abs=noise, notes=notes)
    print(f"  {name:22s} opset {entry['opset']:2d}  {entry['bytes'] / 1e3:7.1f} KB  nodes {entry['nodes']:4d}  "
          f"BN {entry['batch_norm_nodes']:2d}  ort-vs-torch max abs {diff:.2e} (torch fp32-vs-fp64 {noise:.1e}, |y| max {scale:.2f})"
          + (f"  extra ops {entry['extra_ops']}" if entry["extra_ops"] else ""))
    return name, entry


def rotation_check(name, model, x):
    with torch.no_grad():
        y = model(x)
        yr = model(torch.rot90(x, 1, (2, 3)))
    rel = float((yr - y).abs().max() / y.abs().max())
    print(f"  rotation check {name}: max |f(rot90 x) - f(x)| / max |f(x)| = {rel:.2e}")
    assert rel < 1e-4, (name, rel)
    return rel


def classifier_input():
    return torch.from_numpy(np.random.default_rng(11).uniform(-2, 2, (2, 3, 95, 95)).astype(np.float32))


def escnn_cases(out, fixtures):
    cases, rot = {}, {}
    x = classifier_input()
    shared = "input95.f32" if fixtures else None
    if fixtures:
        cfg = {4: (2, [(2, 3, 2), (2, 3, 1), (2, 4, 2)], 6), 8: (2, [(2, 2, 2), (2, 2, 1), (2, 3, 2)], 4)}
        variants = {4: ["legacy_bn", "dynamo_bn"], 8: ["legacy_bn"]}
    else:
        cfg = {4: (4, [(1, 4, 1), (3, 6, 2), (3, 6, 1), (3, 8, 2), (3, 8, 1)], 16),
               8: (3, [(1, 3, 1), (3, 4, 2), (3, 4, 1), (3, 6, 2), (3, 6, 1)], 12),
               12: (2, [(1, 2, 1), (3, 3, 2), (3, 3, 1), (3, 4, 2), (3, 4, 1)], 8)}
        variants = {4: ["legacy_bn", "legacy_folded", "dynamo_bn"], 8: ["legacy_bn", "legacy_folded", "dynamo_bn"],
                    12: ["legacy_bn", "dynamo_bn"]}
    for n, (stem, blocks, last) in cfg.items():
        eq, plain = escnn_mnv2(n, stem, blocks, last, seed=100 + n)
        with torch.no_grad():
            d = float((eq(x) - plain(x)).abs().max())
        print(f"C{n}: escnn vs exported torch max abs {d:.2e}")
        rot[f"c{n}"] = rotation_check(f"C{n}", plain, x)
        arch = (f"escnn C{n} MobileNetV2-style: stem {stem} fields, blocks (expansion, fields, stride) {blocks}, "
                f"last {last} fields; group pooling as view(b, c // {n}, {n}, h, w).amax(2); Linear {last}->2")
        for v in variants[n]:
            how = {"legacy_bn": LEGACY_BN, "legacy_folded": LEGACY_FOLD, "dynamo_bn": DYNAMO_BN}[v]
            m = fold_bn(plain) if v == "legacy_folded" else plain
            extra = "; BN folded in torch (fx fuse) then exported with constant folding" if v == "legacy_folded" else ""
            k, e = export(out, f"c{n}_{v}", m, x, "classifier", how, field_size=n, input_file=shared,
                          notes=arch + extra + f"; rotation check rel {rot[f'c{n}']:.1e}")
            cases[k] = e
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="output directory (default target/zoo/, "
                                                            "or tests/fixtures/zoo/ with --fixtures)")
    ap.add_argument("--fixtures", action="store_true", help="write the small subset for the Rust tests")
    args = ap.parse_args()
    out = args.out or ROOT / ("tests/fixtures/zoo" if args.fixtures else "target/zoo")
    out.mkdir(parents=True, exist_ok=True)
    cases = escnn_cases(out, args.fixtures)

    x2 = classifier_input()
    tv = tv_mnv2_small_head(200) if args.fixtures else tv_mnv2(200)
    tv_notes = ("torchvision mobilenet_v2(width_mult=0.35, num_classes=2), ReLU6, BN gammas spread over 2.5 decades"
                + ("; fixture copy: last 1x1 conv 1280 -> 320 channels, Linear 320->2" if args.fixtures else ""))
    for v, how in [("legacy_bn", LEGACY_BN)] + ([] if args.fixtures else [("dynamo_bn", DYNAMO_BN)]):
        k, e = export(out, f"tv_mnv2_{v}", tv, x2, "classifier", how, notes=tv_notes,
                      input_file="input95.f32" if args.fixtures else None)
        cases[k] = e

    x3 = torch.from_numpy(blobs((32, 32, 32), np.random.default_rng(13), 3)[None, None])
    ch = (4, 8, 16, 32) if args.fixtures else (8, 16, 32, 64)
    u3, tr = trained(monai_unet3d(300, ch), 301)
    k, e = export(out, "unet3d", u3, x3, "segmenter", LEGACY_FOLD,
                  notes=f"monai UNet(spatial_dims=3, in_channels=1, out_channels=2, channels={ch}, "
                        f"strides={(2,) * (len(ch) - 1)}, num_res_units=2), instance norm (no affine), PReLU slopes "
                        "U(0.05, 0.4) at init; " + TRAINED_NOTE + ("" if args.fixtures else "; calibration windows unet3d_calib/*.npy, eval volume "
                        "unet3d_eval.nii.gz, FP32 sliding-window labels unet3d_eval_ref.nii.gz"))
    cases[k] = dict(e, training=tr)
    if not args.fixtures:
        unet3d_volumes(out, u3)

    if not args.fixtures:
        x4 = torch.from_numpy((np.random.default_rng(14).standard_normal((1, 1, 64, 64)) * 0.8 + 0.3).astype(np.float32))
        u2, tr = trained(monai_unet2d_bn(400), 401, dims=2, batch=8)
        rng2 = np.random.default_rng(403)
        estimate_bn(u2, lambda: train_batch(rng2, 2, 16)[0], bns(u2))  # statistics of the trained weights
        tr.update(seg_quality(u2, 2))
        k, e = export(out, "unet2d_bn", u2, x4, "segmenter", LEGACY_BN,
                      notes="monai UNet(spatial_dims=2, 1->2, channels=(8, 16, 32, 64), strides=(2, 2, 2), "
                            "num_res_units=2, norm='batch'), PReLU, BN statistics re-estimated; BN kept; "
                            + TRAINED_NOTE + " (2-D: 64x64 slices of the blobs volumes; BN statistics re-estimated "
                            "after training)")
        cases[k] = dict(e, training=tr)
        x5 = torch.from_numpy(blobs((32, 32, 32), np.random.default_rng(15), 3)[None, None])
        ub, tr = trained(monai_basicunet3d(500), 501, steps=200, batch=2)
        k, e = export(out, "basicunet3d", ub, x5, "segmenter", LEGACY_FOLD,
                      notes="monai BasicUNet(spatial_dims=3, in_channels=1, out_channels=2, "
                            "features=(8, 8, 16, 32, 64, 8)), defaults: instance norm (affine), LeakyReLU 0.1, deconv; "
                            + TRAINED_NOTE)
        cases[k] = dict(e, training=tr)
        ud, tr = trained(monai_dynunet3d(600), 601, steps=200, batch=2)
        k, e = export(out, "dynunet3d", ud, x5, "segmenter", LEGACY_FOLD,
                      notes="monai DynUNet(spatial_dims=3, 1->2, kernel_size=[3]*4, strides=[1, 2, 2, 2], "
                            "upsample_kernel_size=[2]*3, filters=[8, 16, 32, 64], res_block=True), defaults: "
                            "instance norm (affine), LeakyReLU 0.01, ConvTranspose upsampling, residual adds; "
                            + TRAINED_NOTE)
        cases[k] = dict(e, training=tr)

    from importlib.metadata import version
    manifest = dict(generator="scripts/make_zoo.py" + (" --fixtures" if args.fixtures else ""),
                    versions={p: version(p) for p in ["torch", "torchvision", "onnxscript", "escnn", "monai",
                                                                       "onnx", "onnxruntime", "nibabel"]},
                    input_format="raw little-endian float32, C order, shape input_shape",
                    models=cases)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"\n{'file':40s} {'bytes':>9s}")
    total = 0
    for p in sorted(out.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
            print(f"{str(p.relative_to(out)):40s} {p.stat().st_size:9d}")
    print(f"{'total':40s} {total:9d}  ({out})")


if __name__ == "__main__":
    main()
