#!/usr/bin/env python3
"""Reference fixtures for edgemed's MONAI UNet / sliding-window support, written to
tests/fixtures/unet/. Everything is seeded, so a rerun rewrites the same numbers;
the whole directory stays around 3 MB. All .npy files are numpy.save float32 (C
order) except seg_gaussian_o50_lcc.npy (uint8); all spatial axes are in the order
nibabel gives them (x, y, z).

Files
-----
unet3d.safetensors / unet3d.json
    state_dict of monai.networks.nets.UNet(spatial_dims=3, in_channels=1,
    out_channels=3, channels=(8, 16, 32), strides=(2, 2), num_res_units=1,
    norm="instance", act="prelu") built after torch.manual_seed(7), eval mode.
    MONAI's parameter names are kept exactly (the file loads back with
    load_state_dict(strict=True)); "__metadata__" holds the constructor arguments
    as a JSON string ("constructor") plus class and versions (keys sorted, so
    reruns give identical bytes). InstanceNorm3d has affine=False and no running
    stats, so the 3D file only has conv / transposed conv weights and biases and
    the one-element PReLU slopes. The json lists every
    tensor (name, shape, dtype) in state_dict order, the constructor arguments and
    the torch / monai versions.
unet2d.safetensors / unet2d.json
    The same for UNet(spatial_dims=2, in_channels=1, out_channels=2,
    channels=(8, 16, 32), strides=(2, 2), num_res_units=2, norm="batch",
    act="relu"), torch.manual_seed(7), then BN_BATCHES random batches in train
    mode (no_grad, momentum 0.1) so that every BatchNorm running_mean /
    running_var moves away from its initial 0 / 1 (ranges in unet2d.json), then
    eval. The BN num_batches_tracked buffers are int64 and are stored as "I64"
    (every other tensor is "F32").
unet2d_input.npy / unet2d_torch_output.npy
    One input [1, 1, 48, 40] (N(0.3, 1), seed 21) and the torch eval output
    [1, 2, 48, 40].
unet2d.onnx / unet3d.onnx
    torch.onnx.export(dynamo=False, opset 13, do_constant_folding=True, eval),
    input "input" [batch, 1, 48, 40] / [batch, 1, 32, 32, 32] (only the batch
    axis is dynamic), output "logits". The op lists are in unet.json. 3D:
    InstanceNormalization with constant scale 1 / bias 0 (Constant nodes), PRelu
    with slope [1, 1, 1, 1]; the six slopes are all still 0.25, so the exporter
    deduplicates them into one initializer plus five Identity nodes. 2D: BN after
    a Conv is folded into it, the two BNs after a ConvTranspose stay
    BatchNormalization nodes.
unet3d_window_input.npy / unet3d_window_torch_output.npy
    A random window [1, 1, 32, 32, 32] (N(0, 1), seed 22) and the torch output
    [1, 3, 32, 32, 32]; ONNX Runtime on unet3d.onnx matches it within 1e-4
    (asserted; the difference is in unet.json).
volume.nii.gz / label.nii.gz
    Synthetic CT-like volume, shape (45, 38, 28) float32: background -1, a body
    ellipsoid at 0, organ blobs at +1.0 (label 1) and +1.8 (label 2), a -0.5
    "fat" blob (no label), logistic edges, N(0, 0.05) noise (seed 23), clipped to
    [-1, 2]. Label: uint8, 1 / 2 where the respective blob's logistic mask > 0.5.
    Affine diag(0.8, 0.9, 1.5) with translation AFFINE_T, written as both qform
    and sform with code 1 (scanner), xyz units mm (the header stores the sform
    as float32: 0.8 reads back as 0.80000001).
sw_constant_o25.npy / sw_gaussian_o50.npy / sw_gaussian_o25_s03.npy
    monai.inferers.sliding_window_inference on the volume as a torch tensor
    [1, 1, 45, 38, 28], roi_size (32, 32, 32), sw_batch_size 1, padding_mode
    "constant", cval 0, predictor = unet3d.onnx in ONNX Runtime (CPU, 1 thread,
    default optimisation level); mode / overlap / sigma_scale: constant 0.25 / -,
    gaussian 0.5 / 0.125, gaussian 0.25 / 0.3. Output [1, 3, 45, 38, 28] float32.
    Each case is rerun with the torch model as predictor; the max |difference|
    is in unet.json.
seg_gaussian_o50_lcc.npy
    uint8 [45, 38, 28]: seg = torch.argmax(sw_gaussian_o50[0], dim=0) (first
    maximum wins; no voxel has a tie), then
    monai.transforms.KeepLargestConnectedComponent(applied_labels=[1, 2],
    independent=True, connectivity=None) on seg as a torch uint8 tensor
    [1, 45, 38, 28]. One channel with is_onehot=None means a label map (not
    one-hot): per label c, the voxels == c outside the largest connected component
    of (seg == c) become 0 (background); connectivity None = full, i.e. 26
    neighbours in 3D (skimage.measure.label). Asserted equal to an independent
    scipy.ndimage.label(seg == c, structure=np.ones((3, 3, 3))) version (largest
    component kept, ties -> lowest component id; asserted that there are none).
    unet.json "keep_largest_connected_component" has the voxels per class before
    and after, the number removed, component sizes, Dice per class 1, 2 against
    label.nii.gz before and after, what 6-connectivity would give (information
    only), and the file's size and sha256.
windows.json
    Per case: padding, padded size, scan interval, window count per dim, the
    start positions per dim and every window start (padded and original
    coordinates) in MONAI's iteration order, computed with
    monai.inferers.utils._get_scan_interval and monai.data.utils.dense_patch_slices
    exactly as sliding_window_inference does, and checked against the windows the
    predictor actually received (with_coord=True). Gaussian cases also give the
    importance map min / max, its 1D factors, and the count-map min / max.
window_cases.json
    Placement-only cases for MONAI's sliding-window code (no model, no data):
    {"about": {...}, "cases": [...], "importance_maps": [...]}, one case / map
    per line. 40 cases: 8 fixed (FIXED_WINDOW_CASES: roi equal to the image in
    some dims, overlap 0, int(roi * (1 - 0.9)) truncating to 1 / 2 instead of
    2 / 3, everything smaller than the roi, a 1-voxel dim, a large 2D image)
    and 32 drawn with numpy default_rng(WINDOW_CASE_SEED): 2 or 3 dims, roi
    3..96 per dim, image dim smaller than / equal to / up to 2x / more than 2x
    the roi (at most 300), overlap from {0, 0.1, 0.25, 0.5, 0.75, 0.9}; draws
    with more than MAX_STARTS_PER_DIM starts in a dim are redrawn. Per case:
    id, note, image_size, roi_size, overlap, pad (per spatial dim [lo, hi], as
    sliding_window_inference builds pad_size), padded_size (= max(image, roi)),
    scan_interval (monai.inferers.utils._get_scan_interval on the padded size),
    starts (per dim, the window starts from monai.data.utils.dense_patch_slices
    in padded coordinates, deduplicated, in iteration order; the windows are
    their C-order product, last dim fastest, which is asserted), num_windows,
    and checked_with_sliding_window_inference: the case was rerun through
    sliding_window_inference (with_coord=True, identity predictor on an arange
    image) and the visited windows and every patch matched (all 40 are).
    importance_maps: for roi (5,), (8, 6), (7, 9, 4), (16, 16, 16) and
    sigma_scale 0.125, 0.3: compute_importance_map(roi, mode="gaussian",
    sigma_scale=s, device="cpu") as float32 "values" flattened in C order
    (float() of each float32, so exact), with roi_size, shape, sigma_scale.
    About 190 KB (asserted < 200,000 bytes). Not listed in unet.json "files"
    (the rest of unet.json predates it and is kept unchanged).
unet.json
    Versions, all settings, shapes, ORT-vs-torch differences, the ONNX op lists,
    and, for information only (random weights), the Dice per class 1, 2 of
    argmax(sw_gaussian_o50) against label.nii.gz; "keep_largest_connected_component"
    (see seg_gaussian_o50_lcc.npy) was added last, and "files" leaves out
    window_cases.json and seg_gaussian_o50_lcc.npy (the rest of unet.json
    predates them and is kept byte-identical).
MONAI_SEMANTICS.txt
    Short summary of the installed MONAI's sliding-window semantics, quoting its
    source; the script checks that every quoted line is in the installed source.

Rerun
-----
The base venv (/work/venv: torch, onnx, onnxruntime, numpy 1.26.4, safetensors)
plus, without touching those versions:

    /work/venv/bin/pip install --no-deps monai==1.6.1 nibabel==5.4.2 importlib-resources

    /work/venv/bin/pip install --no-deps scikit-image==0.26.0 imageio==2.38.1 tifffile==2026.3.3 lazy-loader==0.6

(importlib-resources is nibabel's only missing dependency on Python 3.11; scikit-
image, needed by KeepLargestConnectedComponent, found scipy, networkx, pillow and
packaging already there and only lacked imageio, tifffile and lazy-loader; `pip
check` is then clean). Without the safetensors package the .safetensors files
are written by hand in the same format.

    /work/venv/bin/python scripts/make_unet_fixtures.py [--out tests/fixtures/unet]

Takes well under a minute on one thread.
"""
import argparse
import collections
import hashlib
import inspect
import itertools
import json
import platform
import struct
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import onnxruntime as ort
import scipy
import scipy.ndimage
import skimage
import torch

import monai
from monai.data.utils import compute_importance_map, dense_patch_slices, get_valid_patch_size
from monai.inferers import sliding_window_inference
from monai.inferers import utils as monai_inferer_utils
from monai.inferers.utils import _get_scan_interval
from monai.networks.nets import UNet
from monai.transforms import KeepLargestConnectedComponent
from monai.utils import ensure_tuple_rep, fall_back_tuple

try:
    import safetensors
    import safetensors.torch
except ImportError:  # the hand-written format below is used instead
    safetensors = None

ROOT = Path(__file__).resolve().parent.parent

MODEL_SEED = 7
UNET3D_ARGS = dict(spatial_dims=3, in_channels=1, out_channels=3, channels=[8, 16, 32], strides=[2, 2],
                   num_res_units=1, norm="instance", act="prelu")
UNET2D_ARGS = dict(spatial_dims=2, in_channels=1, out_channels=2, channels=[8, 16, 32], strides=[2, 2],
                   num_res_units=2, norm="batch", act="relu")
ROI = (32, 32, 32)
IN2D = (48, 40)
BN_BATCHES = (20, 4, 2.0, 0.5, 20)  # (number of batches, batch size, input std, input mean, generator seed)
INPUT2D_SEED = 21
WINDOW_SEED = 22
NOISE_SEED = 23
NOISE_STD = 0.05
VOL_SHAPE = (45, 38, 28)
SPACING = (0.8, 0.9, 1.5)
AFFINE_T = (-17.6, -16.65, 31.5)
# (name, centre (voxels), semi-axes (voxels), intensity added inside, label or 0)
BLOBS = [
    ("body", (22.0, 18.5, 13.5), (19.0, 16.0, 12.5), 1.0, 0),  # background -1 -> body 0
    ("organ1", (15.0, 16.0, 11.0), (7.0, 6.0, 5.0), 1.0, 1),
    ("organ2", (30.0, 22.0, 16.0), (6.0, 7.0, 6.0), 1.8, 2),
    ("fat", (22.0, 8.0, 20.0), (5.0, 3.5, 3.0), -0.5, 0),
]
BACKGROUND = -1.0
EDGE_K = 8.0  # logistic steepness in units of the normalised radius
CASES = [
    dict(file="sw_constant_o25.npy", overlap=0.25, mode="constant", sigma_scale=0.125),
    dict(file="sw_gaussian_o50.npy", overlap=0.5, mode="gaussian", sigma_scale=0.125),
    dict(file="sw_gaussian_o25_s03.npy", overlap=0.25, mode="gaussian", sigma_scale=0.3),
]
SW_COMMON = dict(roi_size=ROI, sw_batch_size=1, padding_mode="constant", cval=0.0)
ORT_TOL = 1e-4
# window_cases.json (placement only, no model)
WINDOW_CASES_FILE = "window_cases.json"
WINDOW_CASE_SEED = 24
NUM_RANDOM_WINDOW_CASES = 32
OVERLAPS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9)
MAX_IMAGE_DIM = 300
MAX_STARTS_PER_DIM = 32  # random draws with more starts in a dim are redrawn (keeps the JSON small)
# (note, image_size, roi_size, overlap)
FIXED_WINDOW_CASES = [
    ("2D, roi equal to the image in dim 1", (96, 64), (64, 64), 0.25),
    ("3D, roi equal to the image in dims 0 and 2", (40, 160, 24), (40, 96, 24), 0.5),
    ("overlap 0: interval = roi, last start clamped", (100, 77, 50), (32, 32, 32), 0.0),
    ("int(20 * (1 - 0.9)) = 1 (not 2); int(7 * (1 - 0.9)) = 0 -> 1", (45, 23), (20, 7), 0.9),
    ("int(30 * (1 - 0.9)) = 2 (not 3)", (64, 40, 33), (30, 30, 30), 0.9),
    ("all dims smaller than roi, odd padding goes to the end", (20, 15, 9), (32, 32, 32), 0.5),
    ("1-voxel dim padded to the roi", (1, 50, 50), (16, 16, 16), 0.25),
    ("large 2D", (300, 257), (96, 96), 0.75),
]
IMPORTANCE_ROIS = [(5,), (8, 6), (7, 9, 4), (16, 16, 16)]
IMPORTANCE_SIGMAS = (0.125, 0.3)
SWI_CHECK_MAX_WORK = 6e7  # verify through sliding_window_inference when num_windows * roi voxels <= this
# seg_gaussian_o50_lcc.npy: argmax of this case, then KeepLargestConnectedComponent with these arguments
LCC_FILE = "seg_gaussian_o50_lcc.npy"
LCC_SOURCE = "sw_gaussian_o50.npy"
LCC_ARGS = dict(applied_labels=[1, 2], independent=True, connectivity=None)
LCC_KEY = "keep_largest_connected_component"


# --------------------------------------------------------------------------- safetensors

ST_DTYPES = {torch.float32: ("F32", "<f4"), torch.int64: ("I64", "<i8")}


def write_safetensors_by_hand(tensors, path, metadata):
    """8-byte LE header length, JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {str: str}},
    then the raw little-endian data in the header's order."""
    header, blobs, off = {"__metadata__": metadata}, [], 0
    for name, t in tensors.items():
        code, np_dt = ST_DTYPES[t.dtype]
        raw = t.detach().cpu().contiguous().numpy().astype(np_dt).tobytes()
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)  # pad so the data starts 8-aligned (as the reference writer does)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


def canonicalise_metadata_order(path):
    """The safetensors package writes "__metadata__" in hash-map order, which changes from run to run; rewrite
    the header in place with the metadata keys sorted (same bytes otherwise, same length) so reruns are identical."""
    raw = bytearray(Path(path).read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    old = bytes(raw[8:8 + n])
    hdr = json.loads(old.rstrip(b" "), object_pairs_hook=collections.OrderedDict)
    hdr["__metadata__"] = dict(sorted(hdr["__metadata__"].items()))
    new = json.dumps(hdr, separators=(",", ":"), ensure_ascii=False).encode()
    new += b" " * (n - len(new))
    assert len(new) == n and sorted(new) == sorted(old), "header rewrite changed more than the key order"
    raw[8:8 + n] = new
    Path(path).write_bytes(bytes(raw))


def read_safetensors_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def save_state_dict(model, path, ctor_args):
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {"class": "monai.networks.nets.UNet", "constructor": json.dumps(ctor_args, sort_keys=True),
            "torch": torch.__version__, "monai": monai.__version__}
    if safetensors is not None:
        safetensors.torch.save_file(sd, str(path), metadata=meta)
        canonicalise_metadata_order(path)
        with safetensors.safe_open(str(path), "pt") as f:
            assert f.metadata() == meta
        back = safetensors.torch.load_file(str(path))
        assert all(torch.equal(back[k], v) for k, v in sd.items())
    else:
        write_safetensors_by_hand(sd, path, meta)
    path.chmod(0o644)  # safetensors creates the file 0600
    # check: the header has MONAI's names, and the file loads back strictly into a fresh model
    hdr = read_safetensors_header(path)
    assert set(hdr) - {"__metadata__"} == set(sd), "safetensors names differ from the state_dict"
    assert json.loads(hdr["__metadata__"]["constructor"]) == ctor_args
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        data = f.read()[n:]
    back = {}
    for name, e in hdr.items():
        if name == "__metadata__":
            continue
        code = {"F32": "<f4", "I64": "<i8"}[e["dtype"]]
        a, b = e["data_offsets"]
        back[name] = torch.from_numpy(np.frombuffer(data[a:b], dtype=code).reshape(e["shape"]).copy())
    fresh = UNet(**ctor_args)
    fresh.load_state_dict(back, strict=True)
    for k, v in sd.items():
        assert torch.equal(back[k], v.cpu()), k
    tensors = [dict(name=k, shape=list(v.shape), dtype=ST_DTYPES[v.dtype][0]) for k, v in sd.items()]
    return tensors, sum(v.numel() for v in sd.values())


# --------------------------------------------------------------------------- models

def build_unet3d():
    torch.manual_seed(MODEL_SEED)
    return UNet(**UNET3D_ARGS).eval()


def build_unet2d():
    torch.manual_seed(MODEL_SEED)
    m = UNet(**UNET2D_ARGS)
    n, bs, std, mean, seed = BN_BATCHES
    g = torch.Generator().manual_seed(seed)
    m.train()
    with torch.no_grad():
        for _ in range(n):
            m(torch.randn(bs, 1, *IN2D, generator=g) * std + mean)
    return m.eval()


def export_onnx(model, spatial, path):
    x = torch.zeros(1, 1, *spatial)
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=13, do_constant_folding=True,
                      training=torch.onnx.TrainingMode.EVAL, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    return dict(collections.Counter(n.op_type for n in m.graph.node))


def ort_session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- volume

def make_volume():
    grid = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in VOL_SHAPE], indexing="ij")
    vol = np.full(VOL_SHAPE, BACKGROUND, dtype=np.float64)
    label = np.zeros(VOL_SHAPE, dtype=np.uint8)
    for _, c, a, val, lab in BLOBS:
        r = np.sqrt(sum(((g - ci) / ai) ** 2 for g, ci, ai in zip(grid, c, a)))
        mask = 1.0 / (1.0 + np.exp((r - 1.0) * EDGE_K))
        vol += val * mask
        if lab:
            label[mask > 0.5] = lab
    vol += np.random.default_rng(NOISE_SEED).normal(0.0, NOISE_STD, VOL_SHAPE)
    return np.clip(vol, -1.0, 2.0).astype(np.float32), label


def affine():
    a = np.diag([*SPACING, 1.0])
    a[:3, 3] = AFFINE_T
    return a


def save_nifti(data, path):
    img = nib.Nifti1Image(data, affine())
    img.set_data_dtype(data.dtype)
    img.set_qform(affine(), code=1)
    img.set_sform(affine(), code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    back = nib.load(str(path))
    arr = np.asarray(back.dataobj)
    assert arr.dtype == data.dtype and np.array_equal(arr, data), path
    assert np.allclose(back.affine, affine()) and int(back.header["sform_code"]) == 1
    assert int(back.header["qform_code"]) == 1 and np.allclose(back.get_qform(), affine())
    return arr


# --------------------------------------------------------------------------- sliding window

def monai_windows(image_size, case):
    """Windows as sliding_window_inference computes them (non-buffered path)."""
    nd = len(image_size)
    roi = tuple(ROI)
    overlap = (case["overlap"],) * nd
    padded = tuple(max(image_size[i], roi[i]) for i in range(nd))
    pad = []
    for d in range(nd):  # per dim (lo, hi); MONAI builds the F.pad list last-dim first
        diff = max(roi[d] - image_size[d], 0)
        pad.append([diff // 2, diff - diff // 2])
    interval = _get_scan_interval(padded, roi, nd, overlap)
    slices = dense_patch_slices(padded, roi, interval)
    starts = [[int(s.start) for s in w] for w in slices]
    per_dim = [sorted({s[d] for s in starts}) for d in range(nd)]
    out = dict(image_size=list(image_size), padded_size=list(padded), pad_lo_hi=pad,
               scan_interval=list(interval), windows_per_dim=[len(p) for p in per_dim],
               starts_per_dim=per_dim, num_windows=len(starts),
               order="C order over the per-dim starts (numpy meshgrid indexing='ij', last dim fastest)",
               window_starts_padded=starts,
               window_starts_original=[[s[d] - pad[d][0] for d in range(nd)] for s in starts])
    imp = compute_importance_map(get_valid_patch_size(padded, roi), mode=case["mode"],
                                 sigma_scale=case["sigma_scale"], device="cpu", dtype=torch.float32)
    count = torch.zeros(padded)
    for s in slices:
        count[s] += imp
    crop = tuple(slice(p[0], p[0] + n) for p, n in zip(pad, image_size))
    out["count_map_min_max"] = [float(count[crop].min()), float(count[crop].max())]
    if case["mode"] == "gaussian":
        out["importance_map_min_max"] = [float(imp.min()), float(imp.max())]
        out["importance_map_unclamped_min"] = float(np.prod([
            np.exp(((n - 1) / 2.0) ** 2 / (-2 * (case["sigma_scale"] * n) ** 2)) for n in roi]))
        out["importance_map_1d_factors"] = [
            torch.exp(torch.arange(-(n - 1) / 2.0, (n - 1) / 2.0 + 1, dtype=torch.float) ** 2
                      / (-2 * (n * case["sigma_scale"]) ** 2)).tolist() for n in roi]
    return out, starts


def run_sw(vol_t, case, predictor):
    seen = []

    def pred(x, coords):
        seen.extend([[s.start for s in c[2:]] for c in coords])
        return predictor(x)

    with torch.no_grad():
        y = sliding_window_inference(vol_t, predictor=pred, overlap=case["overlap"], mode=case["mode"],
                                     sigma_scale=case["sigma_scale"], with_coord=True, **SW_COMMON)
    return y, seen


def dice(pred, ref, c):
    p, r = pred == c, ref == c
    den = int(p.sum()) + int(r.sum())
    return None if den == 0 else 2.0 * int((p & r).sum()) / den


# --------------------------------------------------------------------------- largest connected component

def lcc_scipy(seg, labels, structure):
    """Independent reference: per label, scipy.ndimage.label of (seg == label) with the given structure; every
    component but the largest (ties -> lowest component id, i.e. first in raster order) is set to 0."""
    out = seg.copy()
    for c in labels:
        comp, n = scipy.ndimage.label(seg == c, structure=structure)
        if n > 1:
            counts = np.bincount(comp.ravel())
            counts[0] = 0
            out[(comp > 0) & (comp != int(np.argmax(counts)))] = 0
    return out


def component_sizes(mask, structure):
    comp, n = scipy.ndimage.label(mask, structure=structure)
    return sorted((int(v) for v in np.bincount(comp.ravel())[1:]), reverse=True)


def keep_largest_cc(sw_logits, lab, path):
    """seg = torch.argmax over channels of sw_logits [1, C, X, Y, Z] (first maximum wins) as uint8 [X, Y, Z];
    MONAI KeepLargestConnectedComponent(**LCC_ARGS) on seg as a [1, X, Y, Z] tensor (one channel -> label map,
    not one-hot); checked against lcc_scipy with full (26-) connectivity; saved as uint8 [X, Y, Z]."""
    src = inspect.getsource(KeepLargestConnectedComponent.__call__)
    for line in ("is_onehot = img.shape[0] > 1 if self.is_onehot is None else self.is_onehot",
                 "foreground = img_[i] > 0 if is_onehot else img_[0] == i",
                 "img_[0][foreground != mask] = 0"):
        assert line in src, f"installed MONAI KeepLargestConnectedComponent differs: {line!r} not found"
    logits = torch.from_numpy(sw_logits[0])
    seg_t = torch.argmax(logits, dim=0)
    seg = seg_t.numpy().astype(np.uint8)
    assert np.array_equal(seg, sw_logits[0].argmax(0)), "torch and numpy argmax disagree"
    top2 = np.sort(sw_logits[0], axis=0)[-2:]
    argmax_ties = int((top2[0] == top2[1]).sum())
    img = torch.from_numpy(seg.copy())[None]  # [1, X, Y, Z] uint8 label map
    post = KeepLargestConnectedComponent(**LCC_ARGS)(img.clone())
    post = np.ascontiguousarray(torch.as_tensor(post).numpy())
    assert post.dtype == np.uint8 and post.shape == (1, *VOL_SHAPE), (post.dtype, post.shape)
    post = post[0]
    full = np.ones((3, 3, 3), dtype=bool)
    ref = lcc_scipy(seg, LCC_ARGS["applied_labels"], full)
    assert np.array_equal(post, ref), "MONAI KeepLargestConnectedComponent and the scipy reference disagree"
    assert np.all((post == seg) | (post == 0)), "post-processing changed a voxel to a non-zero label"
    np.save(path, post)
    back = np.load(path)
    assert back.dtype == np.uint8 and back.shape == VOL_SHAPE and np.array_equal(back, post)
    face = scipy.ndimage.generate_binary_structure(3, 1)
    per_class, removed_6 = {}, {}
    for c in LCC_ARGS["applied_labels"]:
        sizes = component_sizes(seg == c, full)
        assert len(sizes) < 2 or sizes[0] > sizes[1], f"class {c}: tie for the largest component"
        before, after = int((seg == c).sum()), int((post == c).sum())
        per_class[str(c)] = dict(voxels_before=before, voxels_after=after, removed=before - after,
                                 components=len(sizes), largest_components=sizes[:5],
                                 dice_before=dice(seg, lab, c), dice_after=dice(post, lab, c))
        sizes6 = component_sizes(seg == c, face)
        removed_6[str(c)] = dict(components=len(sizes6), removed=before - sizes6[0] if sizes6 else 0)
    raw = Path(path).read_bytes()
    return dict(
        file=Path(path).name, bytes=len(raw), sha256=hashlib.sha256(raw).hexdigest(),
        dtype="uint8", shape=list(VOL_SHAPE), axes="x, y, z (nibabel)",
        argmax=f"torch.argmax({LCC_SOURCE}[0], dim=0) (first maximum wins) -> uint8; "
               f"{argmax_ties} voxels have a tie for the maximum",
        transform="monai.transforms.KeepLargestConnectedComponent(applied_labels=[1, 2], independent=True, "
                  "connectivity=None) on the argmax as a torch uint8 tensor [1, 45, 38, 28] (one channel, so "
                  "is_onehot=None means a label map: each label's voxels outside its largest component -> 0)",
        connectivity="None = full (3 hops): 26-neighbourhood",
        cross_check="equal to scipy.ndimage.label(seg == c, structure=np.ones((3, 3, 3))) keeping the largest "
                    "component per class (ties -> lowest component id; there are no ties here)",
        voxels_before={str(c): int((seg == c).sum()) for c in range(3)},
        voxels_after={str(c): int((post == c).sum()) for c in range(3)},
        removed=int((post != seg).sum()),
        classes=per_class,
        dice={str(c): per_class[str(c)]["dice_after"] for c in LCC_ARGS["applied_labels"]},
        info_if_connectivity_1=dict(note="not in the fixture: what 6-connectivity would give (largest kept)",
                                    classes=removed_6),
        versions=dict(monai=monai.__version__, scikit_image=skimage.__version__, scipy=scipy.__version__),
    )


# --------------------------------------------------------------------------- window cases

def monai_window_case(image_size, roi_size, overlap):
    """Placement for one image / roi / overlap, computed the way sliding_window_inference does (non-buffered)."""
    nd = len(image_size)
    image_size_ = [int(n) for n in image_size]
    roi = fall_back_tuple(tuple(int(r) for r in roi_size), image_size_)
    ov = ensure_tuple_rep(overlap, nd)
    padded = tuple(max(image_size_[i], roi[i]) for i in range(nd))
    pad_size = []  # F.pad order: last spatial dim first, as in sliding_window_inference
    for k in range(nd + 1, 1, -1):  # k indexes the [B, C, *spatial] input shape
        diff = max(roi[k - 2] - image_size_[k - 2], 0)
        half = diff // 2
        pad_size.extend([half, diff - half])
    pad = [[pad_size[2 * (nd - 1 - d)], pad_size[2 * (nd - 1 - d) + 1]] for d in range(nd)]
    interval = _get_scan_interval(padded, roi, nd, ov)
    slices = dense_patch_slices(padded, roi, interval)
    starts = [[int(s.start) for s in w] for w in slices]
    per_dim = []
    for d in range(nd):  # deduplicated, in iteration order
        seen = []
        for w in starts:
            if w[d] not in seen:
                seen.append(w[d])
        per_dim.append(seen)
    assert starts == [list(w) for w in itertools.product(*per_dim)], "windows are not the C-order product"
    case = dict(image_size=image_size_, roi_size=list(roi), overlap=float(overlap), pad=pad,
                padded_size=list(padded), scan_interval=[int(i) for i in interval], starts=per_dim,
                num_windows=len(starts))
    return case, starts, pad_size


def check_with_sliding_window_inference(case, starts, pad_size):
    """Run sliding_window_inference on an arange image with a recording predictor: the windows it visits (padded
    coordinates, in order) must be `starts`, and every patch must equal F.pad(image, pad_size)[window]."""
    shape = case["image_size"]
    img = (torch.arange(int(np.prod(shape)), dtype=torch.float32) + 1).reshape(1, 1, *shape)
    ref = torch.nn.functional.pad(img, pad_size, mode="constant", value=0.0)
    assert list(ref.shape[2:]) == case["padded_size"]
    seen = []

    def pred(x, coords):
        for b, c in enumerate(coords):
            seen.append([int(s.start) for s in c[2:]])
            assert torch.equal(x[b:b + 1], ref[tuple(c)]), "patch differs from the padded image"
        return x

    with torch.no_grad():
        y = sliding_window_inference(img, roi_size=case["roi_size"], sw_batch_size=64, predictor=pred,
                                     overlap=case["overlap"], mode="constant", padding_mode="constant", cval=0.0,
                                     with_coord=True)
    assert seen == starts, "sliding_window_inference visited other windows"
    assert torch.allclose(y, img), "identity predictor did not give the image back"


def random_window_case(rng):
    nd = int(rng.choice([2, 3]))
    image, roi = [], []
    for _ in range(nd):
        r = int(rng.integers(3, 97))
        rel = str(rng.choice(["smaller", "equal", "larger", "much_larger"], p=[0.2, 0.2, 0.3, 0.3]))
        if rel == "smaller":
            n = int(rng.integers(1, r))
        elif rel == "equal":
            n = r
        elif rel == "larger":
            n = r + int(rng.integers(1, r + 1))
        else:
            n = int(rng.integers(min(2 * r + 1, MAX_IMAGE_DIM), MAX_IMAGE_DIM + 1))
        image.append(n)
        roi.append(r)
    return tuple(image), tuple(roi), float(rng.choice(OVERLAPS))


def make_window_cases():
    specs = [(note, img, roi, ov) for note, img, roi, ov in FIXED_WINDOW_CASES]
    rng = np.random.default_rng(WINDOW_CASE_SEED)
    while len(specs) < len(FIXED_WINDOW_CASES) + NUM_RANDOM_WINDOW_CASES:
        img, roi, ov = random_window_case(rng)
        case, _, _ = monai_window_case(img, roi, ov)
        if max(len(s) for s in case["starts"]) <= MAX_STARTS_PER_DIM:
            specs.append(("random", img, roi, ov))
    cases, n_checked = [], 0
    for i, (note, img, roi, ov) in enumerate(specs):
        case, starts, pad_size = monai_window_case(img, roi, ov)
        checked = case["num_windows"] * int(np.prod(case["roi_size"])) <= SWI_CHECK_MAX_WORK
        if checked:
            check_with_sliding_window_inference(case, starts, pad_size)
            n_checked += 1
        cases.append(dict(id=i, note=note, **case, checked_with_sliding_window_inference=checked))
    # coverage the fixture promises
    dims = [(n, r) for c in cases for n, r in zip(c["image_size"], c["roi_size"])]
    assert any(n < r for n, r in dims) and sum(n == r for n, r in dims) >= 2 and any(n >= 2 * r for n, r in dims)
    assert any(n == MAX_IMAGE_DIM for n, _ in dims) or max(n for n, _ in dims) >= 250
    assert {len(c["image_size"]) for c in cases} == {2, 3} and {c["overlap"] for c in cases} == set(OVERLAPS)
    return cases, n_checked


def importance_maps():
    maps = []
    for roi in IMPORTANCE_ROIS:
        for sigma in IMPORTANCE_SIGMAS:
            m = compute_importance_map(roi, mode="gaussian", sigma_scale=sigma, device="cpu")
            assert m.dtype == torch.float32 and tuple(m.shape) == roi
            values = [float(v) for v in m.contiguous().flatten().tolist()]
            assert np.array_equal(np.asarray(values, dtype=np.float32), m.numpy().ravel())
            maps.append(dict(roi_size=list(roi), mode="gaussian", sigma_scale=sigma, dtype="float32",
                             shape=list(m.shape), values=values))
    return maps


def write_window_cases(path):
    cases, n_checked = make_window_cases()
    maps = importance_maps()
    about = dict(
        generator="scripts/make_unet_fixtures.py", monai=monai.__version__,
        cases=("sliding_window_inference placement per case: pad per spatial dim [lo, hi], padded_size, "
               "scan_interval (_get_scan_interval on the padded size), starts per dim (dense_patch_slices, "
               "deduplicated, in iteration order; windows are their C-order product, last dim fastest), "
               "num_windows. Starts are in padded coordinates."),
        seed=WINDOW_CASE_SEED, num_checked_with_sliding_window_inference=n_checked,
        importance_maps=("compute_importance_map(roi_size, mode='gaussian', sigma_scale=s, device='cpu'), "
                         "float32, flattened in C order; values are float() of the float32 (exact)."))
    obj = dict(about=about, cases=cases, importance_maps=maps)
    dump = lambda o: json.dumps(o, separators=(",", ":"))
    text = ("{\n" + dump("about") + ":" + dump(about) + ",\n" + dump("cases") + ":[\n"
            + ",\n".join(dump(c) for c in cases) + "\n],\n" + dump("importance_maps") + ":[\n"
            + ",\n".join(dump(m) for m in maps) + "\n]\n}\n")
    assert json.loads(text) == obj
    path.write_text(text)
    return len(cases), n_checked, len(text.encode())


# --------------------------------------------------------------------------- MONAI semantics

SEMANTICS = """\
MONAI {monai} sliding_window_inference semantics (monai/inferers/utils.py, monai/data/utils.py)
Path used here: buffer_steps=None, process_fn=None, roi_weight_map=None, predictor output has the
same spatial size as its input. Lines starting with "|" are verbatim source (stripped); the
generator checks they exist in the installed MONAI.

1. Padding (only where the image is smaller than the ROI). Per spatial dim d:
   diff = max(roi[d] - size[d], 0); lo = diff // 2; hi = diff - lo (odd extra voxel at the end);
   padded size = max(size, roi). F.pad with padding_mode (default "constant", cval 0.0 -> zeros).
| image_size = tuple(max(image_size_[i], roi_size[i]) for i in range(num_spatial_dims))
| diff = max(roi_size[k - 2] - inputs.shape[k], 0)
| half = diff // 2
| pad_size.extend([half, diff - half])
   (pad_size is in F.pad order, last spatial dim first.) Everything below uses the padded size.

2. Scan interval per dim: roi if roi == padded size, else max(int(roi * (1 - overlap)), 1)
   (int() truncates a double).
| if roi_size[i] == image_size[i]:
| scan_interval.append(int(roi_size[i]))
| interval = int(roi_size[i] * (1 - o))
| scan_interval.append(interval if interval > 0 else 1)

3. Windows per dim (dense_patch_slices; patch = min(padded, roi) = roi after padding):
   n = 1 + smallest d >= 0 with d * interval + roi >= size  (= 1 when size == roi, else
   ceil((size - roi) / interval) + 1); start_k = min(k * interval, size - roi), so only the last
   start is clamped, flush with the end (its step may be shorter than interval).
| num = int(math.ceil(float(image_size[i]) / scan_interval[i]))
| scan_dim = first(d for d in range(num) if d * scan_interval[i] + patch_size[i] >= image_size[i])
| scan_num.append(scan_dim + 1 if scan_dim is not None else 1)
| start_idx = idx * scan_interval[dim]
| start_idx -= max(start_idx + patch_size[dim] - image_size[dim], 0)

4. Window order: Cartesian product of the per-dim starts in C order (first spatial dim slowest,
   last fastest); global index idx over batch * num_win: image idx // num_win, window idx % num_win;
   sw_batch_size consecutive windows are concatenated along the batch axis.
| out = np.asarray([x.flatten() for x in np.meshgrid(*starts, indexing="ij")]).T
| [slice(idx // num_win, idx // num_win + 1), slice(None)] + list(slices[idx % num_win])

5. Importance map over the ROI, computed in float32 (torch.float), then cast to the input dtype.
   constant: all ones. gaussian: sigma_d = sigma_scale * roi_d (python float);
   x_d = -(roi_d - 1)/2 + i, i = 0..roi_d-1 (float32); g_d = exp(x_d^2 / (-2 sigma_d^2));
   w = g_0[:,None,None] * g_1[None,:,None] * g_2[None,None,:] (float32, NOT normalised: for an even
   roi the peak is exp(-0.25/(2 sigma^2)) per dim, < 1).
| sigmas = [i * sigma_s for i, sigma_s in zip(patch_size, sigma_scale)]
| start=-(patch_size[i] - 1) / 2.0, end=(patch_size[i] - 1) / 2.0 + 1, dtype=torch.float, device=device
| x = torch.exp(x**2 / (-2 * sigmas[i] ** 2))  # 1D gaussian
| importance_map = importance_map.unsqueeze(-1) * x[(None,) * i] if i > 0 else x
   Clamp: floor = max(min(w), 1e-3); w = max(w, floor). So values below 1e-3 become exactly 1e-3
   when min(w) < 1e-3; otherwise a no-op (constant map stays 1).
| min_non_zero = max(torch.min(importance_map).item(), 1e-3)
| importance_map = torch.clamp_(importance_map.to(torch.float), min=min_non_zero).to(dtype)

6. Accumulation, all in compute_dtype = the input's dtype (float32 here), over the padded size:
   output = zeros [B, C_out, *padded]; count = zeros [1, 1, *padded]. When the first prediction
   arrives, count[window] += w for every window (in window order); then for each window in order:
   pred *= w (in place), output[b, :, window] += pred. Finally output /= count (broadcast), and
   the padding is cropped: output[..., lo:lo + size] per dim. I.e.
   result = (sum_k w * pred_k) / (sum_k w), float32.
| compute_dtype = inputs.dtype
| count_map_list.append(torch.zeros([1, 1] + output_shape[2:], dtype=compute_dtype, device=device))
| count_map_list[-1][(slice(None), slice(None), *__s)] += w_t_
| sw_device_buffer[ss] *= w_t
| out[ensure_tuple(idx_zm)] += p
| output_image_list[ss] /= count_map_list.pop(0)
| int(round(pad_size[sp * 2] * zoom_scale[si])),
| int(round((pad_size[sp * 2] + image_size_[si]) * zoom_scale[si])),

This fixture: volume (45, 38, 28), roi (32, 32, 32): z padded 2 + 2 with zeros -> (45, 38, 32).
{cases}
"""


def check_quotes(text):
    import monai.data.utils as mdu
    src = set()
    for f in (sliding_window_inference, monai_inferer_utils._get_scan_interval, monai_inferer_utils._compute_coords,
              mdu.dense_patch_slices,
              mdu.compute_importance_map, mdu.get_valid_patch_size):
        src |= {ln.strip() for ln in inspect.getsource(f).splitlines()}
    missing = [ln[1:].strip() for ln in text.splitlines() if ln.startswith("|") and ln[1:].strip() not in src]
    assert not missing, f"quoted lines not in the installed MONAI source: {missing}"


# --------------------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "unet")
    args = ap.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    versions = dict(python=platform.python_version(), torch=torch.__version__, monai=monai.__version__,
                    nibabel=nib.__version__, onnx=onnx.__version__, onnxruntime=ort.__version__,
                    numpy=np.__version__, safetensors=getattr(safetensors, "__version__", "hand-written"))
    report = dict(generator="scripts/make_unet_fixtures.py", versions=versions)

    # ---- 3D UNet: weights, ONNX, one window
    m3 = build_unet3d()
    t3, n3 = save_state_dict(m3, out / "unet3d.safetensors", UNET3D_ARGS)
    ops3 = export_onnx(m3, ROI, out / "unet3d.onnx")
    s3 = ort_session(out / "unet3d.onnx")
    xw = np.random.default_rng(WINDOW_SEED).standard_normal((1, 1, *ROI)).astype(np.float32)
    with torch.no_grad():
        yw = m3(torch.from_numpy(xw)).numpy()
    yw_ort = s3.run(["logits"], {"input": xw})[0]
    d3 = float(np.abs(yw_ort - yw).max())
    assert d3 <= ORT_TOL, d3
    np.save(out / "unet3d_window_input.npy", xw)
    np.save(out / "unet3d_window_torch_output.npy", yw)
    meta3 = dict(class_="monai.networks.nets.UNet", constructor=UNET3D_ARGS, seed=f"torch.manual_seed({MODEL_SEED})",
                 mode="eval", torch=torch.__version__, monai=monai.__version__, num_elements=n3, tensors=t3)
    (out / "unet3d.json").write_text(json.dumps(meta3, indent=1).replace('"class_"', '"class"') + "\n")

    # ---- 2D UNet: weights with BN statistics, ONNX, one input
    m2 = build_unet2d()
    t2, n2 = save_state_dict(m2, out / "unet2d.safetensors", UNET2D_ARGS)
    ops2 = export_onnx(m2, IN2D, out / "unet2d.onnx")
    x2 = (np.random.default_rng(INPUT2D_SEED).standard_normal((1, 1, *IN2D)) + 0.3).astype(np.float32)
    with torch.no_grad():
        y2 = m2(torch.from_numpy(x2)).numpy()
    y2_ort = ort_session(out / "unet2d.onnx").run(["logits"], {"input": x2})[0]
    d2 = float(np.abs(y2_ort - y2).max())
    assert d2 <= ORT_TOL, d2
    np.save(out / "unet2d_input.npy", x2)
    np.save(out / "unet2d_torch_output.npy", y2)
    sd2 = m2.state_dict()
    bn = {k: [float(v.min()), float(v.max())] for k, v in sd2.items() if k.endswith(("running_mean", "running_var"))}
    n_bn, bs, std, mean, seed = BN_BATCHES
    meta2 = dict(class_="monai.networks.nets.UNet", constructor=UNET2D_ARGS, seed=f"torch.manual_seed({MODEL_SEED})",
                 bn_statistics=f"{n_bn} batches of torch.randn({bs}, 1, {IN2D[0]}, {IN2D[1]}, generator seed {seed})"
                               f" * {std} + {mean} in train mode (momentum 0.1), then eval",
                 bn_running_stat_ranges=bn, mode="eval", torch=torch.__version__, monai=monai.__version__,
                 num_elements=n2, tensors=t2, input="unet2d_input.npy [1, 1, 48, 40]",
                 output="unet2d_torch_output.npy [1, 2, 48, 40]", max_abs_ort_minus_torch=d2)
    (out / "unet2d.json").write_text(json.dumps(meta2, indent=1).replace('"class_"', '"class"') + "\n")

    # ---- volume and label
    vol, lab = make_volume()
    vol = save_nifti(vol, out / "volume.nii.gz")
    lab = save_nifti(lab, out / "label.nii.gz")

    # ---- sliding window references
    vol_t = torch.from_numpy(vol)[None, None]

    def ort_pred(x):
        return torch.from_numpy(s3.run(["logits"], {"input": np.ascontiguousarray(x.numpy())})[0])

    def torch_pred(x):
        return m3(x)

    windows, sw_report, case_lines = {}, [], []
    for case in CASES:
        win, starts = monai_windows(VOL_SHAPE, case)
        y_ort, seen_ort = run_sw(vol_t, case, ort_pred)
        y_pt, seen_pt = run_sw(vol_t, case, torch_pred)
        assert seen_ort == starts and seen_pt == starts, (case, seen_ort, starts)
        y_ort = y_ort.numpy().astype(np.float32)
        assert y_ort.shape == (1, 3, *VOL_SHAPE)
        np.save(out / case["file"], y_ort)
        key = case["file"][:-4]
        windows[key] = dict(case, **win)
        sw_report.append(dict(case, shape=list(y_ort.shape), num_windows=len(starts),
                              max_abs_ort_minus_torch=float(np.abs(y_ort - y_pt.numpy()).max())))
        case_lines.append(f"  {key}: overlap {case['overlap']}, {case['mode']}"
                          + (f" sigma_scale {case['sigma_scale']}" if case["mode"] == "gaussian" else "")
                          + f": interval {tuple(win['scan_interval'])}, starts {win['starts_per_dim']}"
                          + f" -> {win['num_windows']} windows"
                          + ("" if case["mode"] != "gaussian" else
                             "; importance min %.9g (unclamped %.3g) max %.9g"
                             % (*win["importance_map_min_max"][:1], win["importance_map_unclamped_min"],
                                win["importance_map_min_max"][1])))
    (out / "windows.json").write_text(json.dumps(windows) + "\n")
    n_wc, n_wc_checked, wc_bytes = write_window_cases(out / WINDOW_CASES_FILE)
    assert wc_bytes < 200_000, wc_bytes

    pred = np.load(out / "sw_gaussian_o50.npy")[0].argmax(0)
    lcc = keep_largest_cc(np.load(out / LCC_SOURCE), lab, out / LCC_FILE)
    report.update(
        seeds=dict(model=MODEL_SEED, bn=BN_BATCHES[4], input2d=INPUT2D_SEED, window=WINDOW_SEED, noise=NOISE_SEED),
        unet3d=dict(constructor=UNET3D_ARGS, num_elements=n3, onnx_ops=ops3,
                    onnx_input="input [batch, 1, 32, 32, 32]", onnx_output="logits [batch, 3, 32, 32, 32]",
                    window_max_abs_ort_minus_torch=d3),
        unet2d=dict(constructor=UNET2D_ARGS, num_elements=n2, onnx_ops=ops2,
                    onnx_input="input [batch, 1, 48, 40]", onnx_output="logits [batch, 2, 48, 40]",
                    max_abs_ort_minus_torch=d2),
        onnx_export=dict(exporter="torch.onnx.export(dynamo=False)", opset=13, do_constant_folding=True,
                         training="EVAL", dynamic_axes="batch only"),
        onnxruntime=dict(providers=["CPUExecutionProvider"], intra_op_num_threads=1, inter_op_num_threads=1,
                         graph_optimization_level="default (ORT_ENABLE_ALL)"),
        volume=dict(file="volume.nii.gz", label="label.nii.gz", shape=list(VOL_SHAPE), axes="x, y, z (nibabel)",
                    dtype="float32", label_dtype="uint8", affine=affine().tolist(), qform_code=1, sform_code=1,
                    background=BACKGROUND, blobs=[dict(name=b[0], centre=b[1], semi_axes=b[2], add=b[3], label=b[4])
                                                  for b in BLOBS],
                    edge="mask = 1 / (1 + exp((r - 1) * %g)), r = normalised ellipsoid radius" % EDGE_K,
                    label_rule="label = blob's label where its mask > 0.5",
                    noise=f"N(0, {NOISE_STD}), numpy default_rng({NOISE_SEED}); then clip to [-1, 2]",
                    min=float(vol.min()), max=float(vol.max()),
                    label_counts={str(c): int((lab == c).sum()) for c in range(3)}),
        sliding_window=dict(input="volume as torch tensor [1, 1, 45, 38, 28] float32", common=SW_COMMON,
                            predictor="unet3d.onnx in onnxruntime, returns torch.from_numpy(logits)",
                            cases=sw_report, windows="windows.json"),
        dice_info=dict(note="random weights: informational only", prediction="argmax(sw_gaussian_o50, channel)",
                       dice={str(c): dice(pred, lab, c) for c in (1, 2)},
                       pred_counts={str(c): int((pred == c).sum()) for c in range(3)}),
    )
    text = SEMANTICS.format(monai=monai.__version__, cases="\n".join(case_lines))
    report[LCC_KEY] = lcc  # added after the rest of unet.json; "files" below leaves its file out
    check_quotes(text)
    (out / "MONAI_SEMANTICS.txt").write_text(text)
    report["files"] = {p.name: dict(bytes=p.stat().st_size, sha256=hashlib.sha256(p.read_bytes()).hexdigest())
                       for p in sorted(out.iterdir())
                       if p.name not in ("unet.json", WINDOW_CASES_FILE, LCC_FILE)}  # these predate those two
    (out / "unet.json").write_text(json.dumps(report, indent=1) + "\n")
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {len(list(out.iterdir()))} files, {total / 1e6:.2f} MB to {out}")
    print(f"{WINDOW_CASES_FILE}: {n_wc} cases ({n_wc_checked} rerun through sliding_window_inference), "
          f"{len(IMPORTANCE_ROIS) * len(IMPORTANCE_SIGMAS)} importance maps, {wc_bytes} bytes")
    print(json.dumps(dict(ops3=ops3, ops2=ops2, d3=d3, d2=d2, sw=sw_report, dice=report["dice_info"],
                                lcc={k: lcc[k] for k in ("voxels_before", "voxels_after", "removed", "classes",
                                                         "dice")}), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
