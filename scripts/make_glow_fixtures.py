#!/usr/bin/env python3
"""Reference fixtures for edgemed's 3-D GLOW (openai/glow semantics extended to 3-D)
and its temporal latent model, written to tests/fixtures/glow/.

The reference is an independent float64 numpy implementation (no torch in the
math; torch, when importable, is only used afterwards to cross-check conv3d).
Every random draw comes from np.random.default_rng(seed) with the fixed seeds
below, the safetensors header is canonicalised (metadata keys sorted), so a rerun
rewrites identical bytes.

Conventions
-----------
Tensors are NCXYZ [N, C, X, Y, Z]. conv3d is cross-correlation exactly like
torch.nn.functional.conv3d: weight [out, in, k, k, k], bias [out], stride 1;
3x3x3 convolutions use zero padding 1, 1x1x1 convolutions none.

Config (safetensors string metadata, all values strings): arch="glow3d",
in_channels="1", levels="3" (L), steps="2" (K flow steps per level), width="8"
(coupling hidden width), temporal_widths="8,8,8", temporal_depths="2,2,2" (one
per level). Fixture grid 16x16x16, batch 2.

Channels C_0 = 8 * in_channels, C_{l+1} = 4 * C_l (8, 32, 128); level l works
at spatial size grid / 2^(l+1) (8^3, 4^3, 2^3), V_l = its number of voxels.

squeeze (factor 2): y[n, c*8 + a*4 + b*2 + d, i, j, k] = x[n, c, 2i+a, 2j+b, 2k+d]
(unsqueeze is its exact inverse).

Encoder G (x -> packed latent, logdet):
    z = squeeze(x); logdet = 0
    for l in 0..L-1:
        for k in 0..K-1: z = step(l, k, z)
        if l < L-1:
            z1, z2 = z[:, :C_l/2], z[:, C_l/2:]
            h = conv3x3x3(z1, prior.{l}.weight, prior.{l}.bias)     # C_l channels
            mean, logs = h[:, 0::2], h[:, 1::2]
            eps_l = (z2 - mean) * exp(-logs)
            z = squeeze(z1)
        else:
            eps_l = (z - prior.top.mean[c]) * exp(-prior.top.logs[c])
    logdet is the flow steps' terms only (no prior terms).
step(l, k, z), in this order:
    actnorm:  z = (z + bias[c]) * exp(logs[c]);       logdet += V_l * sum(logs)
    invconv:  W = P @ Lo @ (Up + diag(sign_s * exp(log_s))),
              Lo = tril(lower, -1) + I, Up = triu(upper, 1) (the stored
              diagonal / other triangle of `lower` and `upper` hold nonzero random
              garbage that must be ignored); z[c] = sum_j W[c, j] z[j];
              logdet += V_l * sum(log_s)
    coupling: z1, z2 = z[:, :C/2], z[:, C/2:]
              h = conv2(relu(conv1(relu(conv0(z1)))))   # conv0 3x3x3 C/2->width,
                                                        # conv1 1x1x1, conv2 3x3x3 width->C
              shift = h[:, 0::2]; scale = sigmoid(h[:, 1::2] + 2)
              z2 = (z2 + shift) * scale;  logdet += sum_{c,voxels} log(scale)
              z = concat(z1, z2)
Decoder G^-1 is the exact inverse: top eps -> z = mean + exp(logs) * eps; per
level from the top down: (l < L-1) z1 = unsqueeze(z), h = prior(z1),
z2 = mean + exp(logs) * eps_l, z = concat(z1, z2); then steps k = K-1..0:
z2 = z2 / scale - shift, z = W^-1 z, z = z * exp(-logs) - bias; finally
x = unsqueeze(z).

Packed latent: for each batch item, concat over l = 0..L-1 of eps_l[n] flattened
in C order ([C, X, Y, Z]) -> [N, T]; T = 4*512 + 16*64 + 128*8 = 4096 here.

Temporal model P on a packed latent: per level unpack eps_l (c_l = C_l/2 for
l < L-1, C_{L-1} for the top), out_l = eps_l + stack_l(eps_l), stack_l = conv0
(c_l -> w), relu, conv1 (w -> w), relu, ..., conv_{d-1} (w -> c_l), all 3x3x3
pad 1, no relu after the last conv (d = 1: one conv c_l -> c_l); repack.

Files
-----
glow.safetensors
    All tensors float32 (names below), metadata = the config above.
      flow.{l}.{k}.actnorm.bias / .actnorm.logs                [C_l]
      flow.{l}.{k}.invconv.p                                    [C_l, C_l] permutation
      flow.{l}.{k}.invconv.lower / .invconv.upper               [C_l, C_l] (garbage
                                                                outside strict triangle)
      flow.{l}.{k}.invconv.log_s / .invconv.sign_s (+1/-1)      [C_l]
      flow.{l}.{k}.coupling.conv0.weight [width, C_l/2, 3,3,3], .conv0.bias [width]
      flow.{l}.{k}.coupling.conv1.weight [width, width, 1,1,1], .conv1.bias [width]
      flow.{l}.{k}.coupling.conv2.weight [C_l, width, 3,3,3],   .conv2.bias [C_l]
      prior.{l}.weight [C_l, C_l/2, 3,3,3], prior.{l}.bias [C_l]        (l < L-1)
      prior.top.mean / prior.top.logs [C_{L-1}]
      temporal.{l}.conv{j}.weight [out, in, 3,3,3], temporal.{l}.conv{j}.bias [out]
    Init: W = random orthogonal (QR of a Gaussian, sign-fixed), LU with partial
    pivoting (A = P L U) gives p, lower, upper, sign_s, log_s; log_s then gets
    N(0, LOG_S_JITTER) added so that sum(log_s) != 0 (an orthogonal W alone has
    log|det| = 0 and would not test the invconv logdet term). actnorm bias/logs
    N(0, 0.1). Coupling conv0 / conv1 N(0, COUPLING_GAIN / sqrt(fan_in)), conv2
    N(0, CONV2_GAIN / sqrt(fan_in)) (scaled down: shift ~0.1, scale ~0.8..0.95);
    biases N(0, 0.1) (conv2: N(0, 0.1 * CONV2_GAIN)).
    Split priors N(0, PRIOR_GAIN/sqrt(fan_in)), bias N(0, 0.1); top prior mean and
    logs N(0, 0.1). Temporal: every conv N(0, 0.05 / sqrt(fan_in)) (TEMPORAL_*_GAIN), hidden
    biases N(0, 0.05), last bias N(0, 0.05 * 0.05), so P is near identity
    (|P(u) - u| ~ 1e-3 .. 1e-2, i.e. ~0.1 latent units after * 48).
input.npy     float32 [2, 1, 16, 16, 16]: Gaussian-blurred noise plus a Gaussian
              blob per volume, in [-0.5, 0.5] (seed INPUT_SEED).
latent.npy    float32 [2, 4096]: packed G(input), float64 math on the float32
              input and the float32 weights as read back from glow.safetensors.
logdet.npy    float64 [2]: the encoder logdet (flow-step terms only).
temporal_in.npy   float32 [2, 4096] = clip((latent + 24) / 48, 0, 1), computed in
                  float64 from the stored float32 latent.
temporal_out.npy  float32 [2, 4096] = P(temporal_in) (float64 math on the stored
                  float32 temporal_in).
decoded.npy   float32 [2, 1, 16, 16, 16] = G^-1(temporal_out * 48 - 24), float64
              math on the stored float32 temporal_out (a perturbed latent, so the
              decoder is exercised away from G(x)).
glow.json     config, tensor list (name, shape, dtype), seeds, gains, versions, a
              semantics string, the float64 round-trip error max|G^-1(G(x)) - x|
              (asserted < 1e-10), a finite-difference check of the logdet and the
              value ranges of each output.

Each stage's input is the float32 array written by the previous stage, so every
pair of files is self-consistent when a test reads only those two.

Self-checks (asserted): f64 round trip < 1e-10; log|det dG/dx| from a central
finite-difference Jacobian on an 8^3 volume equals logdet minus the prior logs
terms; squeeze matches its index formula; the stored lower / upper really hold
nonzero garbage outside their strict triangles. When torch is importable, conv3d
is compared with torch.nn.functional.conv3d on random data (float64); nothing
written depends on torch.

Size: glow.safetensors is ~1.19 MB (294,948 float32 parameters, dominated by the
level-2 128x128 invconv matrices, couplings and temporal stack); the directory is
~1.37 MB in all. The config is fixed by the spec, so this is not trimmed.

Rerun: /work/venv/bin/python scripts/make_glow_fixtures.py
"""
import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np
import safetensors
from safetensors.numpy import load_file, save

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "glow"

# ---------------------------------------------------------------- configuration
IN_CHANNELS = 1
LEVELS = 3
STEPS = 2
WIDTH = 8
TEMPORAL_WIDTHS = (8, 8, 8)
TEMPORAL_DEPTHS = (2, 2, 2)
GRID = 16
BATCH = 2

WEIGHT_SEED = 20240611
INPUT_SEED = 20240612
CHECK_SEED = 20240613          # only for self-checks, nothing written depends on it

LOG_S_JITTER = 0.1
COUPLING_GAIN = 2.0
CONV2_GAIN = 0.3
PRIOR_GAIN = 0.5
TEMPORAL_HIDDEN_GAIN = 0.05
TEMPORAL_LAST_GAIN = 0.05
LATENT_OFFSET = 24.0
LATENT_RANGE = 48.0

METADATA = {
    "arch": "glow3d",
    "in_channels": str(IN_CHANNELS),
    "levels": str(LEVELS),
    "steps": str(STEPS),
    "width": str(WIDTH),
    "temporal_widths": ",".join(map(str, TEMPORAL_WIDTHS)),
    "temporal_depths": ",".join(map(str, TEMPORAL_DEPTHS)),
}


def level_channels(l):
    """C_l: channels inside the flow at level l."""
    return 8 * IN_CHANNELS * 4 ** l


def latent_channels(l):
    """Channels of eps_l (the split half below the top, all channels at the top)."""
    return level_channels(l) if l == LEVELS - 1 else level_channels(l) // 2


def latent_shapes(grid):
    """[(C, X, Y, Z)] of eps_l for l = 0..L-1 for a cubic grid."""
    return [(latent_channels(l),) + (grid // 2 ** (l + 1),) * 3 for l in range(LEVELS)]


# ---------------------------------------------------------------- primitives
def squeeze(x):
    """y[n, c*8 + a*4 + b*2 + d, i, j, k] = x[n, c, 2i+a, 2j+b, 2k+d]."""
    n, c, X, Y, Z = x.shape
    y = x.reshape(n, c, X // 2, 2, Y // 2, 2, Z // 2, 2)      # n c i a j b k d
    y = y.transpose(0, 1, 3, 5, 7, 2, 4, 6)                   # n c a b d i j k
    return y.reshape(n, c * 8, X // 2, Y // 2, Z // 2)


def unsqueeze(y):
    """Inverse of squeeze."""
    n, c8, X, Y, Z = y.shape
    x = y.reshape(n, c8 // 8, 2, 2, 2, X, Y, Z)               # n c a b d i j k
    x = x.transpose(0, 1, 5, 2, 6, 3, 7, 4)                   # n c i a j b k d
    return x.reshape(n, c8 // 8, 2 * X, 2 * Y, 2 * Z)


def conv3d(x, w, b):
    """Cross-correlation, stride 1, zero padding (k-1)/2 (k odd): torch conv3d."""
    k = w.shape[2]
    p = (k - 1) // 2
    n, _, X, Y, Z = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p), (p, p)))
    out = np.zeros((n, w.shape[0], X, Y, Z), dtype=np.float64)
    for dx in range(k):
        for dy in range(k):
            for dz in range(k):
                patch = xp[:, :, dx:dx + X, dy:dy + Y, dz:dz + Z]
                out += np.einsum("oi,nixyz->noxyz", w[:, :, dx, dy, dz], patch)
    return out + b[None, :, None, None, None]


def relu(x):
    return np.maximum(x, 0.0)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def bcast(v):
    """Per-channel vector -> [1, C, 1, 1, 1]."""
    return v[None, :, None, None, None]


def voxels(z):
    return z.shape[2] * z.shape[3] * z.shape[4]


def actnorm(z, p, reverse=False):
    if reverse:
        return z * bcast(np.exp(-p["logs"])) - bcast(p["bias"]), 0.0
    return (z + bcast(p["bias"])) * bcast(np.exp(p["logs"])), voxels(z) * p["logs"].sum()


def invconv_matrix(p):
    """W = P @ Lo @ (Up + diag(sign_s * exp(log_s))), ignoring out-of-triangle entries."""
    c = p["p"].shape[0]
    lo = np.tril(p["lower"], -1) + np.eye(c)
    up = np.triu(p["upper"], 1) + np.diag(p["sign_s"] * np.exp(p["log_s"]))
    return p["p"] @ lo @ up


def invconv(z, p, reverse=False):
    w = invconv_matrix(p)
    if reverse:
        return np.einsum("cj,njxyz->ncxyz", np.linalg.inv(w), z), 0.0
    return np.einsum("cj,njxyz->ncxyz", w, z), voxels(z) * p["log_s"].sum()


def coupling_net(z1, p):
    h = relu(conv3d(z1, p["conv0.weight"], p["conv0.bias"]))
    h = relu(conv3d(h, p["conv1.weight"], p["conv1.bias"]))
    h = conv3d(h, p["conv2.weight"], p["conv2.bias"])
    return h[:, 0::2], sigmoid(h[:, 1::2] + 2.0)              # shift, scale


def coupling(z, p, reverse=False):
    c = z.shape[1]
    z1, z2 = z[:, :c // 2], z[:, c // 2:]
    shift, scale = coupling_net(z1, p)
    if reverse:
        return np.concatenate([z1, z2 / scale - shift], axis=1), 0.0
    ld = np.log(scale).reshape(z.shape[0], -1).sum(axis=1)
    return np.concatenate([z1, (z2 + shift) * scale], axis=1), ld


def sub(params, prefix):
    """Parameters under `prefix.` with the prefix stripped."""
    return {k[len(prefix) + 1:]: v for k, v in params.items() if k.startswith(prefix + ".")}


def step(z, params, l, k, reverse=False):
    an = sub(params, f"flow.{l}.{k}.actnorm")
    ic = sub(params, f"flow.{l}.{k}.invconv")
    cp = sub(params, f"flow.{l}.{k}.coupling")
    if reverse:
        z, _ = coupling(z, cp, reverse=True)
        z, _ = invconv(z, ic, reverse=True)
        z, _ = actnorm(z, an, reverse=True)
        return z, 0.0
    z, a = actnorm(z, an)
    z, b = invconv(z, ic)
    z, c = coupling(z, cp)
    return z, a + b + c


def split_prior(z1, params, l):
    h = conv3d(z1, params[f"prior.{l}.weight"], params[f"prior.{l}.bias"])
    return h[:, 0::2], h[:, 1::2]                             # mean, logs


# ---------------------------------------------------------------- flow
def encode(x, params, diag=None):
    """x [N, in, G, G, G] -> (list of eps_l, logdet [N], prior_logdet [N]).

    prior_logdet = -sum of the prior logs terms (only used by the Jacobian check).
    diag, when a list, receives per-step coupling shift/scale statistics.
    """
    n = x.shape[0]
    z = squeeze(x)
    logdet = np.zeros(n)
    prior_ld = np.zeros(n)
    eps = []
    for l in range(LEVELS):
        for k in range(STEPS):
            if diag is not None:
                zz, _ = actnorm(z, sub(params, f"flow.{l}.{k}.actnorm"))
                zz, _ = invconv(zz, sub(params, f"flow.{l}.{k}.invconv"))
                shift, scale = coupling_net(zz[:, :zz.shape[1] // 2],
                                            sub(params, f"flow.{l}.{k}.coupling"))
                diag.append({"step": f"{l}.{k}", "shift_std": float(shift.std()),
                             "scale_min": float(scale.min()), "scale_max": float(scale.max())})
            z, ld = step(z, params, l, k)
            logdet = logdet + ld
        if l < LEVELS - 1:
            c = z.shape[1]
            z1, z2 = z[:, :c // 2], z[:, c // 2:]
            mean, logs = split_prior(z1, params, l)
            eps.append((z2 - mean) * np.exp(-logs))
            prior_ld -= logs.reshape(n, -1).sum(axis=1)
            z = squeeze(z1)
        else:
            mean, logs = params["prior.top.mean"], params["prior.top.logs"]
            eps.append((z - bcast(mean)) * bcast(np.exp(-logs)))
            prior_ld -= voxels(z) * logs.sum()
    return eps, logdet, prior_ld


def decode(eps, params):
    """Exact inverse of encode: list of eps_l -> x."""
    top = eps[LEVELS - 1]
    z = bcast(params["prior.top.mean"]) + bcast(np.exp(params["prior.top.logs"])) * top
    for l in reversed(range(LEVELS)):
        if l < LEVELS - 1:
            z1 = unsqueeze(z)
            mean, logs = split_prior(z1, params, l)
            z = np.concatenate([z1, mean + np.exp(logs) * eps[l]], axis=1)
        for k in reversed(range(STEPS)):
            z, _ = step(z, params, l, k, reverse=True)
    return unsqueeze(z)


def pack(eps):
    n = eps[0].shape[0]
    return np.concatenate([e.reshape(n, -1) for e in eps], axis=1)


def unpack(flat, grid):
    n = flat.shape[0]
    out, o = [], 0
    for shape in latent_shapes(grid):
        size = int(np.prod(shape))
        out.append(flat[:, o:o + size].reshape((n,) + shape))
        o += size
    assert o == flat.shape[1], (o, flat.shape)
    return out


def temporal(flat, params, grid):
    """P: per level out_l = eps_l + stack_l(eps_l), on a packed latent."""
    outs = []
    for l, e in enumerate(unpack(flat, grid)):
        h = e
        d = TEMPORAL_DEPTHS[l]
        for j in range(d):
            h = conv3d(h, params[f"temporal.{l}.conv{j}.weight"], params[f"temporal.{l}.conv{j}.bias"])
            if j < d - 1:
                h = relu(h)
        outs.append(e + h)
    return pack(outs)


# ---------------------------------------------------------------- weights
def lu_partial_pivot(a):
    """A = P @ L @ U, L unit lower, U upper (Doolittle with partial pivoting)."""
    n = a.shape[0]
    u = a.astype(np.float64).copy()
    lo = np.eye(n)
    perm = np.arange(n)
    for k in range(n):
        piv = k + int(np.argmax(np.abs(u[k:, k])))
        if piv != k:
            u[[k, piv]] = u[[piv, k]]
            perm[[k, piv]] = perm[[piv, k]]
            lo[[k, piv], :k] = lo[[piv, k], :k]
        f = u[k + 1:, k] / u[k, k]
        lo[k + 1:, k] = f
        u[k + 1:, k:] -= np.outer(f, u[k, k:])
        u[k + 1:, k] = 0.0
    p = np.eye(n)[perm].T                                     # A[perm] = L U -> A = P L U
    assert np.allclose(p @ lo @ u, a, atol=1e-12)
    return p, lo, u


def random_orthogonal(rng, n):
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))[None, :]


def conv_init(rng, out_c, in_c, k, gain, bias_std):
    fan_in = in_c * k ** 3
    w = rng.standard_normal((out_c, in_c, k, k, k)) * gain / np.sqrt(fan_in)
    b = rng.standard_normal(out_c) * bias_std
    return w, b


def make_weights(seed):
    """Ordered dict name -> float64 array (cast to float32 when written)."""
    rng = np.random.default_rng(seed)
    t = {}
    for l in range(LEVELS):
        c = level_channels(l)
        for k in range(STEPS):
            pre = f"flow.{l}.{k}"
            t[f"{pre}.actnorm.bias"] = rng.normal(0.0, 0.1, c)
            t[f"{pre}.actnorm.logs"] = rng.normal(0.0, 0.1, c)
            p, lo, up = lu_partial_pivot(random_orthogonal(rng, c))
            d = np.diag(up)
            garbage_l = rng.normal(0.0, 1.0, (c, c)) + 0.5     # nonzero outside strict lower
            garbage_u = rng.normal(0.0, 1.0, (c, c)) - 0.5     # nonzero outside strict upper
            t[f"{pre}.invconv.p"] = p
            t[f"{pre}.invconv.lower"] = np.tril(lo, -1) + np.triu(garbage_l)
            t[f"{pre}.invconv.upper"] = np.triu(up, 1) + np.tril(garbage_u)
            t[f"{pre}.invconv.log_s"] = np.log(np.abs(d)) + rng.normal(0.0, LOG_S_JITTER, c)
            t[f"{pre}.invconv.sign_s"] = np.sign(d)
            w, b = conv_init(rng, WIDTH, c // 2, 3, COUPLING_GAIN, 0.1)
            t[f"{pre}.coupling.conv0.weight"], t[f"{pre}.coupling.conv0.bias"] = w, b
            w, b = conv_init(rng, WIDTH, WIDTH, 1, COUPLING_GAIN, 0.1)
            t[f"{pre}.coupling.conv1.weight"], t[f"{pre}.coupling.conv1.bias"] = w, b
            w, b = conv_init(rng, c, WIDTH, 3, CONV2_GAIN, 0.1 * CONV2_GAIN)
            t[f"{pre}.coupling.conv2.weight"], t[f"{pre}.coupling.conv2.bias"] = w, b
    for l in range(LEVELS - 1):
        c = level_channels(l)
        t[f"prior.{l}.weight"], t[f"prior.{l}.bias"] = conv_init(rng, c, c // 2, 3, PRIOR_GAIN, 0.1)
    ctop = level_channels(LEVELS - 1)
    t["prior.top.mean"] = rng.normal(0.0, 0.1, ctop)
    t["prior.top.logs"] = rng.normal(0.0, 0.1, ctop)
    for l in range(LEVELS):
        cl, w_, d = latent_channels(l), TEMPORAL_WIDTHS[l], TEMPORAL_DEPTHS[l]
        for j in range(d):
            cin = cl if j == 0 else w_
            cout = cl if j == d - 1 else w_
            last = j == d - 1
            gain = TEMPORAL_LAST_GAIN if last else TEMPORAL_HIDDEN_GAIN
            bstd = 0.05 * (TEMPORAL_LAST_GAIN if last else 1.0)
            w, b = conv_init(rng, cout, cin, 3, gain, bstd)
            t[f"temporal.{l}.conv{j}.weight"], t[f"temporal.{l}.conv{j}.bias"] = w, b
    return t


def canonical_safetensors(tensors, metadata):
    """safetensors.numpy.save with the header's metadata keys sorted.

    The Rust writer keeps __metadata__ in a HashMap, so its key order changes from
    run to run; reordering keys keeps the header length (and data offsets) intact.
    """
    raw = save(tensors, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    canon = {"__metadata__": dict(sorted(header.pop("__metadata__").items()))}
    canon.update(header)
    text = json.dumps(canon, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert len(text) <= n, (len(text), n)
    text = text + b" " * (n - len(text))
    return raw[:8] + text + raw[8 + n:]


# ---------------------------------------------------------------- input
def make_input(seed):
    rng = np.random.default_rng(seed)
    g = GRID
    f = np.fft.fftfreq(g)
    fx, fy, fz = np.meshgrid(f, f, f, indexing="ij")
    sigma = 1.5                                               # voxels
    kernel = np.exp(-2.0 * np.pi ** 2 * sigma ** 2 * (fx ** 2 + fy ** 2 + fz ** 2))
    ax = np.arange(g, dtype=np.float64)
    X, Y, Z = np.meshgrid(ax, ax, ax, indexing="ij")
    vols = []
    for _ in range(BATCH):
        noise = np.real(np.fft.ifftn(np.fft.fftn(rng.standard_normal((g, g, g))) * kernel))
        noise *= 0.15 / noise.std()
        cx, cy, cz = rng.uniform(4.0, g - 4.0, 3)
        r = rng.uniform(2.0, 4.0)
        amp = rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.3)
        blob = amp * np.exp(-((X - cx) ** 2 + (Y - cy) ** 2 + (Z - cz) ** 2) / (2 * r ** 2))
        vols.append(np.clip(noise + blob, -0.5, 0.5))
    return np.stack(vols)[:, None].astype(np.float32)


# ---------------------------------------------------------------- self-checks
def check_conv_against_torch(rng):
    try:
        import torch
        import torch.nn.functional as F
    except Exception:                                         # pragma: no cover
        return None
    errs = []
    for k in (1, 3):
        x = rng.standard_normal((2, 3, 5, 4, 6))
        w = rng.standard_normal((4, 3, k, k, k))
        b = rng.standard_normal(4)
        ref = F.conv3d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                       padding=(k - 1) // 2).numpy()
        errs.append(float(np.abs(conv3d(x, w, b) - ref).max()))
    err = max(errs)
    assert err < 1e-12, err
    return {"torch": torch.__version__, "max_abs_diff": err}


def check_squeeze(rng):
    x = rng.standard_normal((2, 3, 4, 6, 2))
    y = squeeze(x)
    n, c, a, b, d, i, j, k = 1, 2, 1, 0, 1, 1, 2, 0
    assert y[n, c * 8 + a * 4 + b * 2 + d, i, j, k] == x[n, c, 2 * i + a, 2 * j + b, 2 * k + d]
    for c in range(3):
        for a in range(2):
            for b in range(2):
                for d in range(2):
                    assert np.array_equal(y[:, c * 8 + a * 4 + b * 2 + d],
                                          x[:, c, a::2, b::2, d::2])
    assert np.array_equal(unsqueeze(y), x)


def check_logdet_fd(params, rng, grid=8, h=1e-5):
    """log|det d pack(G(x))/dx| by central differences vs logdet + prior terms."""
    x0 = rng.uniform(-0.5, 0.5, (1, IN_CHANNELS, grid, grid, grid))
    dim = x0.size
    eps0, ld0, pld0 = encode(x0, params)
    jac = np.zeros((dim, dim))
    chunk = 128
    for s in range(0, dim, chunk):
        idx = np.arange(s, min(s + chunk, dim))
        e = np.zeros((len(idx), dim))
        e[np.arange(len(idx)), idx] = h
        xp = (x0.reshape(1, -1) + e).reshape((len(idx),) + x0.shape[1:])
        xm = (x0.reshape(1, -1) - e).reshape((len(idx),) + x0.shape[1:])
        jac[:, idx] = ((pack(encode(xp, params)[0]) - pack(encode(xm, params)[0])) / (2 * h)).T
    sign, fd = np.linalg.slogdet(jac)
    expected = float(ld0[0] + pld0[0])
    assert sign != 0 and abs(fd - expected) < 1e-5 * max(1.0, abs(expected)), (fd, expected)
    return {"grid": grid, "finite_difference": float(fd), "logdet_plus_prior": expected,
            "abs_diff": float(abs(fd - expected))}


# ---------------------------------------------------------------- main
def stats(a):
    return {"min": float(a.min()), "max": float(a.max()), "mean": float(a.mean()),
            "std": float(a.std())}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng_check = np.random.default_rng(CHECK_SEED)
    check_squeeze(rng_check)
    conv_check = check_conv_against_torch(rng_check)

    # weights: generate, round to float32, write, read back exactly as stored
    weights = make_weights(WEIGHT_SEED)
    w32 = {k: np.ascontiguousarray(v.astype(np.float32)) for k, v in weights.items()}
    blob = canonical_safetensors(w32, METADATA)
    (OUT / "glow.safetensors").write_bytes(blob)
    params = {k: v.astype(np.float64) for k, v in load_file(str(OUT / "glow.safetensors")).items()}
    assert set(params) == set(w32)
    for name in params:                                       # garbage really is present
        if name.endswith("invconv.lower"):
            assert np.all(params[name][np.triu_indices(len(params[name]))] != 0)
        if name.endswith("invconv.upper"):
            assert np.all(params[name][np.tril_indices(len(params[name]))] != 0)

    x32 = make_input(INPUT_SEED)
    x = x32.astype(np.float64)

    coupling_diag = []
    eps, logdet, prior_ld = encode(x, params, coupling_diag)
    latent = pack(eps)
    T = latent.shape[1]
    assert T == sum(int(np.prod(s)) for s in latent_shapes(GRID))

    roundtrip = float(np.abs(decode(unpack(latent, GRID), params) - x).max())
    assert roundtrip < 1e-10, roundtrip

    latent32 = latent.astype(np.float32)
    t_in = np.clip((latent32.astype(np.float64) + LATENT_OFFSET) / LATENT_RANGE, 0.0, 1.0)
    t_in32 = t_in.astype(np.float32)
    t_out = temporal(t_in32.astype(np.float64), params, GRID)
    t_out32 = t_out.astype(np.float32)
    perturbed = t_out32.astype(np.float64) * LATENT_RANGE - LATENT_OFFSET
    decoded = decode(unpack(perturbed, GRID), params)
    decoded32 = decoded.astype(np.float32)
    assert np.all(np.isfinite(decoded))

    fd_check = check_logdet_fd(params, rng_check)

    np.save(OUT / "input.npy", x32)
    np.save(OUT / "latent.npy", latent32)
    np.save(OUT / "logdet.npy", logdet.astype(np.float64))
    np.save(OUT / "temporal_in.npy", t_in32)
    np.save(OUT / "temporal_out.npy", t_out32)
    np.save(OUT / "decoded.npy", decoded32)

    sign_s = np.concatenate([params[k] for k in params if k.endswith("sign_s")])
    info = {
        "config": dict(METADATA, grid=GRID, batch=BATCH),
        "channels": [level_channels(l) for l in range(LEVELS)],
        "latent_shapes": [list(s) for s in latent_shapes(GRID)],
        "T": T,
        "tensors": [{"name": k, "shape": list(v.shape), "dtype": "float32"} for k, v in w32.items()],
        "n_params": int(sum(v.size for v in w32.values())),
        "seeds": {"weights": WEIGHT_SEED, "input": INPUT_SEED, "checks": CHECK_SEED},
        "init": {"log_s_jitter": LOG_S_JITTER, "coupling_gain": COUPLING_GAIN,
                 "conv2_gain": CONV2_GAIN, "prior_gain": PRIOR_GAIN,
                 "temporal_hidden_gain": TEMPORAL_HIDDEN_GAIN,
                 "temporal_last_gain": TEMPORAL_LAST_GAIN,
                 "sign_s_counts": {"+1": int((sign_s > 0).sum()), "-1": int((sign_s < 0).sum())}},
        "latent_map": {"temporal_in": "clip((latent + 24) / 48, 0, 1)",
                       "decoded": "decode(temporal_out * 48 - 24)"},
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "safetensors": safetensors.__version__},
        "semantics": (
            "NCXYZ; conv3d = torch cross-correlation, 3x3x3 pad 1, 1x1x1 pad 0; "
            "squeeze y[n,c*8+a*4+b*2+d,i,j,k]=x[n,c,2i+a,2j+b,2k+d]; "
            "step = actnorm (z+b)*exp(logs) -> invconv W=P@(tril(lower,-1)+I)@(triu(upper,1)"
            "+diag(sign_s*exp(log_s))) -> affine coupling h=conv2(relu(conv1(relu(conv0(z1))))), "
            "shift=h[:,0::2], scale=sigmoid(h[:,1::2]+2), z2=(z2+shift)*scale; "
            "split l<L-1: h=prior.l(z1), mean=h[:,0::2], logs=h[:,1::2], eps=(z2-mean)*exp(-logs), "
            "z=squeeze(z1); top eps=(z-mean)*exp(-logs); logdet = flow steps only; "
            "packed latent = per item concat of eps_l flattened [C,X,Y,Z]; "
            "temporal out_l = eps_l + stack_l(eps_l), convs 3x3x3 pad 1 with relu between."),
        "checks": {"roundtrip_f64_max_abs": roundtrip,
                   "logdet_finite_difference": fd_check,
                   "conv3d_vs_torch": conv_check},
        "ranges": {"input": stats(x32), "latent": stats(latent32),
                   "latent_per_level": [stats(e.astype(np.float32)) for e in eps],
                   "logdet": logdet.tolist(),
                   "prior_logdet": prior_ld.tolist(),
                   "temporal_in": stats(t_in32), "temporal_out": stats(t_out32),
                   "temporal_delta_latent_units": stats((t_out - t_in32) * LATENT_RANGE),
                   "decoded": stats(decoded32),
                   "decoded_minus_input": stats(decoded32 - x32),
                   "coupling": coupling_diag},
        "safetensors_sha256": hashlib.sha256(blob).hexdigest(),
    }
    (OUT / "glow.json").write_text(json.dumps(info, indent=1) + "\n")

    print(f"wrote {OUT}")
    for p in sorted(OUT.iterdir()):
        print(f"  {p.name:22s} {p.stat().st_size:9d} bytes")
    print(f"  total {sum(p.stat().st_size for p in OUT.iterdir())} bytes; "
          f"{info['n_params']} params; T = {T}")
    print(f"round trip f64 max|G^-1(G(x)) - x| = {roundtrip:.3e}")
    print(f"logdet = {logdet.tolist()}; finite-difference check diff = {fd_check['abs_diff']:.2e}")
    for name in ("input", "latent", "temporal_in", "temporal_out",
                 "temporal_delta_latent_units", "decoded", "decoded_minus_input"):
        s = info["ranges"][name]
        print(f"  {name:28s} min {s['min']:+.4f} max {s['max']:+.4f} std {s['std']:.4f}")
    for l, s in enumerate(info["ranges"]["latent_per_level"]):
        print(f"  latent level {l}: min {s['min']:+.4f} max {s['max']:+.4f} std {s['std']:.4f}")
    for d in coupling_diag:
        print(f"  coupling {d['step']}: shift std {d['shift_std']:.3f} "
              f"scale [{d['scale_min']:.3f}, {d['scale_max']:.3f}]")
    if conv_check:
        print(f"conv3d vs torch: {conv_check['max_abs_diff']:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
