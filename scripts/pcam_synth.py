#!/usr/bin/env python3
"""Procedural PCam-like H&E patches (96x96 RGB uint8) with PCam's labelling rule.

Label 1 ("metastatic") iff tumour tissue touches the central 32x32 region
(pixels 32..63 on both axes); otherwise 0. The patches are rendered in optical
density (Beer-Lambert) space and converted to RGB with jittered H&E stain vectors:

* stroma: eosin field made of oriented collagen fibres (anisotropic band-pass
  noise), low-frequency intensity variation and, in some patches, white space;
* normal nuclei: small, round, regular lymphocytes (sparse, or dense sheets as in a
  lymph node) plus thin spindle-shaped fibroblasts aligned with the fibres;
* tumour cells: crowded nests of large, pleomorphic (irregular-ellipse),
  hyperchromatic nuclei with coarse chromatin, a thick rim and often a nucleolus,
  each in a pale amphophilic cytoplasm.

Hard cases are deliberate: negatives may carry tumour nests in the periphery
(kept clear of the central region by a margin so labels stay exact), positives may
hold a nest of only one or a few cells, and every patch gets random orientations,
stain colour jitter, blur and sensor noise.

API:  generate(n, seed) -> (images uint8 [n, 96, 96, 3], labels int64 [n])
CLI:  pcam_synth.py --samples DIR --n 100 --seed 7    (PNGs + DIR/labels.csv)
      pcam_synth.py --h5 PREFIX --n K --seed 7        (PREFIX_x.h5, PREFIX_y.h5)
"""

import argparse
import os
import sys

import numpy as np
from scipy import fft

P = 96  # patch side
C0, C1 = 32, 64  # central region [C0, C1) that decides the label
CHUNK = 256  # patches rendered at once (bounds memory, ~100 MB per chunk)

# Macenko's reference H&E optical-density vectors (RGB), jittered per patch.
H_REF = np.array([0.5626, 0.7201, 0.4062])
E_REF = np.array([0.2159, 0.8012, 0.5581])

# Frequency grids of an rfft2 over a P x P image (cycles per pixel).
_FY = np.fft.fftfreq(P)[:, None]
_FX = np.fft.rfftfreq(P)[None, :]
_FR = np.sqrt(_FX**2 + _FY**2)


def _sigmoid(x):
    return 0.5 + 0.5 * np.tanh(0.5 * x)  # overflow-free logistic


def _unit_std(field):
    """Zero-mean, unit-std normalisation of each [B, P, P] field."""
    field = field - field.mean(axis=(1, 2), keepdims=True)
    return field / (field.std(axis=(1, 2), keepdims=True) + 1e-6)


def _filtered_noise(rng, b, transfer):
    """White noise shaped by a transfer function [B or 1, P, P//2 + 1], unit std."""
    return _unit_std(_apply_transfer(rng.standard_normal((b, P, P), dtype=np.float32), transfer))


def _apply_transfer(images, transfer):
    """Filters [B, P, P] float32 images by a real transfer function, in float32."""
    spec = fft.rfft2(images, workers=-1) * transfer.astype(np.float32)
    return fft.irfft2(spec, s=(P, P), workers=-1)


def _dist_to_centre_box(x, y):
    """Euclidean distance from (x, y) to the centre region (pixel centres 32..63)."""
    dx = np.maximum(np.maximum(C0 - x, x - (C1 - 1)), 0.0)
    dy = np.maximum(np.maximum(C0 - y, y - (C1 - 1)), 0.0)
    return np.hypot(dx, dy)


class _Nuclei:
    """A flat list of nuclei over a chunk of patches; every field is a 1-D array."""

    def __init__(self, patch, x, y, **fields):
        self.patch, self.x, self.y = patch, x, y
        self.fields = fields

    def __getattr__(self, name):
        try:
            return self.__dict__["fields"][name]
        except KeyError:
            raise AttributeError(name) from None

    def select(self, keep):
        return _Nuclei(self.patch[keep], self.x[keep], self.y[keep], **{k: v[keep] for k, v in self.fields.items()})

    def __len__(self):
        return len(self.patch)

    @staticmethod
    def concat(p, q):
        return _Nuclei(*(np.concatenate([getattr(p, f), getattr(q, f)]) for f in ("patch", "x", "y")),
                       **{f: np.concatenate([p.fields[f], q.fields[f]]) for f in p.fields})


def _windows(nuc, half):
    """Pixel offsets of a (2*half) x (2*half) window around each nucleus.

    Returns flat pixel indices into a [B*P*P] image (or -1 outside the patch) and
    the rotated nucleus-frame coordinates (u, v) of every window pixel.
    """
    off = np.arange(-half + 1, half + 1, dtype=np.float32)
    ix, iy = np.floor(nuc.x).astype(np.int64), np.floor(nuc.y).astype(np.int64)
    px = ix[:, None, None] + off[None, None, :].astype(np.int64)
    py = iy[:, None, None] + off[None, :, None].astype(np.int64)
    dx = (px - nuc.x[:, None, None]).astype(np.float32)
    dy = (py - nuc.y[:, None, None]).astype(np.float32)
    c, s = np.cos(nuc.theta)[:, None, None], np.sin(nuc.theta)[:, None, None]
    u, v = dx * c + dy * s, -dx * s + dy * c
    inside = (px >= 0) & (px < P) & (py >= 0) & (py < P)
    flat = np.where(inside, nuc.patch[:, None, None] * P * P + py * P + px, -1)
    return flat, u, v


def _shape_alpha(nuc, u, v, edge_px=0.45):
    """Soft mask of an irregular ellipse: radius modulated by 2nd/3rd harmonics."""
    a, b = nuc.a[:, None, None], nuc.b[:, None, None]
    x, y = u / a, v / b
    r2 = x * x + y * y + 1e-6
    r = np.sqrt(r2)
    # cos/sin(k*phi) from the coordinates directly (cheaper than atan2).
    xx, yy, r3 = x * x, y * y, r2 * r
    c2, s2 = (xx - yy) / r2, 2 * x * y / r2
    c3, s3 = x * (xx - 3 * yy) / r3, y * (3 * xx - yy) / r3
    p2, p3 = nuc.p2[:, None, None], nuc.p3[:, None, None]
    bound = 1 + nuc.e2[:, None, None] * (c2 * np.cos(p2) - s2 * np.sin(p2)) + nuc.e3[:, None, None] * (c3 * np.cos(p3) - s3 * np.sin(p3))
    # (1 - r / bound) * a is roughly the signed distance to the boundary in pixels.
    return _sigmoid((1 - r / bound) * a / edge_px), r


def _splat(flat, values, b):
    keep = flat >= 0
    return np.bincount(flat[keep], weights=values[keep], minlength=b * P * P).reshape(b, P, P).astype(np.float32)


def _uniform_nuclei(rng, counts, lo=-4.0, hi=P + 4.0):
    patch = np.repeat(np.arange(len(counts)), counts)
    m = len(patch)
    return patch, rng.uniform(lo, hi, m).astype(np.float32), rng.uniform(lo, hi, m).astype(np.float32)


def _shape_params(rng, m, a, aspect, e2, e3, theta=None):
    a = a.astype(np.float32)
    return dict(
        a=a,
        b=(a * rng.uniform(*aspect, m)).astype(np.float32),
        theta=(rng.uniform(0, np.pi, m) if theta is None else theta).astype(np.float32),
        e2=rng.uniform(*e2, m).astype(np.float32),
        e3=rng.uniform(*e3, m).astype(np.float32),
        p2=rng.uniform(0, 2 * np.pi, m).astype(np.float32),
        p3=rng.uniform(0, 2 * np.pi, m).astype(np.float32),
    )


def _tumour_cells(rng, patch, x, y, mean_a):
    """Large, pleomorphic, hyperchromatic nuclei around a patch-level mean size."""
    m = len(patch)
    a = np.clip(mean_a[patch] * rng.lognormal(0, 0.15, m), 3.5, 6.0)
    return _Nuclei(
        patch, x.astype(np.float32), y.astype(np.float32),
        **_shape_params(rng, m, a, aspect=(0.6, 0.95), e2=(0.04, 0.18), e3=(0.03, 0.12)),
        od=rng.uniform(1.5, 2.1, m).astype(np.float32),
        nucleolus=(0.9 * (rng.random(m) < 0.65)).astype(np.float32),  # its extra optical density
        nu=rng.uniform(-0.35, 0.35, m).astype(np.float32),  # nucleolus offset, in semi-axes
        nv=rng.uniform(-0.35, 0.35, m).astype(np.float32),
    )


def _tumour_nuclei(rng, labels):
    """Nests of crowded tumour cells; exact control over what touches the centre."""
    b = len(labels)
    pos = labels == 1
    # Nest placement: positives centred near the middle, 35% of negatives in the periphery.
    peripheral = ~pos & (rng.random(b) < 0.35)
    ang = rng.uniform(0, 2 * np.pi, b)
    rad = rng.uniform(36, 60, b)
    ncx = np.where(pos, 48 + rng.uniform(-14, 14, b), 48 + rad * np.cos(ang))
    ncy = np.where(pos, 48 + rng.uniform(-14, 14, b), 48 + rad * np.sin(ang))
    # Log-uniform nest size: small nests hold a single or a handful of cells.
    na = np.exp(rng.uniform(np.log(5), np.log(48), b))
    nb = na * rng.uniform(0.5, 1.0, b)
    nth = rng.uniform(0, np.pi, b)
    nph = rng.uniform(0, 2 * np.pi, b)
    fill = rng.uniform(0.75, 1.0, b)
    mean_a = rng.uniform(4.2, 5.4, b)  # patch-level nuclear size

    # Candidate cells on a jittered 9 px grid; a nest is a wobbly ellipse.
    g = np.arange(-4, P + 5, 9, dtype=np.float32)
    gx, gy = np.meshgrid(g, g)
    k = gx.size
    cx = gx.ravel()[None, :] + rng.uniform(-2.5, 2.5, (b, k))
    cy = gy.ravel()[None, :] + rng.uniform(-2.5, 2.5, (b, k))
    du, dv = cx - ncx[:, None], cy - ncy[:, None]
    c, s = np.cos(nth)[:, None], np.sin(nth)[:, None]
    u, v = du * c + dv * s, -du * s + dv * c
    phi = np.arctan2(v, u)
    in_nest = (u / na[:, None]) ** 2 + (v / nb[:, None]) ** 2 <= (1 + 0.2 * np.cos(3 * phi + nph[:, None])) ** 2
    keep = in_nest & (rng.random((b, k)) < fill[:, None]) & (pos | peripheral)[:, None]
    patch, idx = np.nonzero(keep)
    nuc = _tumour_cells(rng, patch, cx[patch, idx], cy[patch, idx], mean_a)
    # Tumour extent = nucleus grown by its cytoplasm (1.35 a) plus the soft edge.
    extent = 1.35 * nuc.a * (1 + nuc.e2 + nuc.e3) + 2.5
    # Negatives: drop any cell whose tissue could reach the centre region.
    nuc = nuc.select(pos[nuc.patch] | (_dist_to_centre_box(nuc.x, nuc.y) > extent))
    # Positives: make sure at least one tumour cell sits inside the centre region.
    has = np.zeros(b, bool)
    has[nuc.patch[_dist_to_centre_box(nuc.x, nuc.y) == 0]] = True
    need = np.nonzero(pos & ~has)[0]
    extra = _tumour_cells(rng, need, rng.uniform(36, 60, len(need)), rng.uniform(36, 60, len(need)), mean_a)
    nuc = _Nuclei.concat(nuc, extra)
    return nuc


def _clear_of(field, nuc, level=0.5):
    """True for nuclei whose centre pixel has field < level (e.g. not inside tumour cytoplasm)."""
    ix = np.clip(np.rint(nuc.x).astype(np.int64), 0, P - 1)
    iy = np.clip(np.rint(nuc.y).astype(np.int64), 0, P - 1)
    return field[nuc.patch, iy, ix] < level


def _render_chunk(rng, labels):
    b = len(labels)

    # --- Stroma (eosin) ----------------------------------------------------------
    fibre_dir = rng.uniform(0, np.pi, b)
    ca, sa = np.cos(fibre_dir)[:, None, None], np.sin(fibre_dir)[:, None, None]
    f_along = _FX * ca + _FY * sa
    f_across = -_FX * sa + _FY * ca
    f0 = rng.uniform(0.05, 0.12, b)[:, None, None]
    # Fibres run along fibre_dir: little variation along them, a band of frequencies across.
    fibres = _filtered_noise(rng, b, np.exp(-0.5 * (f_along / 0.02) ** 2 - 0.5 * ((np.abs(f_across) - f0) / 0.04) ** 2))
    lowfreq = _filtered_noise(rng, b, np.exp(-0.5 * (_FR / 0.02) ** 2)[None])
    fine = rng.standard_normal((b, P, P), dtype=np.float32)
    e_level = rng.uniform(0.35, 0.75, b).astype(np.float32)[:, None, None]
    eosin = e_level * np.clip(0.75 + 0.25 * fibres + 0.15 * lowfreq + 0.05 * fine, 0.05, None)
    # White space (fat, vessel lumen, tears) in 30% of the patches.
    holes = _filtered_noise(rng, b, np.exp(-0.5 * (_FR / 0.03) ** 2)[None])
    thr = rng.uniform(1.0, 1.8, b).astype(np.float32)[:, None, None]
    white = _sigmoid((holes - thr) * 8) * (rng.random(b) < 0.3)[:, None, None]

    # --- Nuclei ------------------------------------------------------------------
    tum = _tumour_nuclei(rng, labels)
    hema_tumour = np.zeros((b, P, P), np.float32)
    cyto = np.zeros((b, P, P), np.float32)
    if len(tum):
        flat, u, v = _windows(tum, 12)
        alpha, r = _shape_alpha(tum, u, v)
        rim = np.exp(-(((r - 0.9) / 0.15) ** 2))  # thick, dark nuclear membrane
        du = u - tum.nu[:, None, None] * tum.a[:, None, None]
        dv = v - tum.nv[:, None, None] * tum.b[:, None, None]
        nucleolus = tum.nucleolus[:, None, None] * np.exp(-(du * du + dv * dv) / (2 * 0.9**2))
        hema_tumour = _splat(flat, tum.od[:, None, None] * alpha * (1 + 0.3 * rim) + nucleolus * alpha, b)
        cyto_alpha = _sigmoid((1.35 * tum.a[:, None, None] - np.sqrt(u * u + v * v)) / 0.7)
        cyto = np.minimum(_splat(flat, cyto_alpha, b), 1.0)

    dense = rng.random(b) < 0.3  # lymph-node-like sheets of lymphocytes
    lam = np.where(dense, rng.uniform(60, 140, b), rng.uniform(10, 40, b))
    patch, x, y = _uniform_nuclei(rng, rng.poisson(lam))
    m = len(patch)
    lym = _Nuclei(patch, x, y,
                  **_shape_params(rng, m, np.clip(rng.normal(3.0, 0.3, m), 2.3, 3.8), aspect=(0.85, 1.0), e2=(0, 0.05), e3=(0, 0.03)),
                  od=rng.uniform(1.0, 1.5, m).astype(np.float32))
    # A few lymphocytes infiltrate the tumour; the rest stay out of it.
    lym = lym.select(_clear_of(cyto, lym) | (rng.random(m) < 0.1))

    patch, x, y = _uniform_nuclei(rng, rng.poisson(rng.uniform(3, 15, b)))
    m = len(patch)
    fib = _Nuclei(patch, x, y,
                  **_shape_params(rng, m, rng.uniform(4.0, 6.0, m), aspect=(0.2, 0.3), e2=(0, 0.05), e3=(0, 0.05),
                                  theta=fibre_dir[patch] + rng.normal(0, 0.2, m)),
                  od=rng.uniform(0.8, 1.3, m).astype(np.float32))
    fib = fib.select(_clear_of(cyto, fib))

    hema_normal = np.zeros((b, P, P), np.float32)
    for nuc, half in ((lym, 7), (fib, 9)):
        if len(nuc):
            flat, u, v = _windows(nuc, half)
            hema_normal += _splat(flat, nuc.od[:, None, None] * _shape_alpha(nuc, u, v)[0], b)

    # Chromatin texture, in image space: coarse in tumour nuclei, fine-grained elsewhere.
    chromatin = rng.standard_normal((b, P, P), dtype=np.float32)
    hema_tumour *= 1 + 0.25 * chromatin
    hema_normal *= 1 + 0.08 * chromatin

    # --- Composition in optical density -------------------------------------------
    keep = 1 - white
    h_scale = rng.lognormal(0, 0.15, b).astype(np.float32)[:, None, None]
    hema = h_scale * (hema_normal * keep + hema_tumour + 0.18 * cyto)
    eos = eosin * keep * (1 - 0.5 * cyto) + 0.2 * cyto

    # Per-patch Gaussian blur (focus), in the frequency domain.
    sigma = rng.uniform(0.4, 1.3, b)[:, None, None]
    blur = np.exp(-2 * np.pi**2 * sigma**2 * _FR[None] ** 2)
    hema, eos = _apply_transfer(hema, blur), _apply_transfer(eos, blur)

    # Stain colour jitter: perturbed, renormalised stain vectors and a tinted light source.
    h_vec = np.abs(H_REF[None] + rng.normal(0, 0.06, (b, 3)))
    e_vec = np.abs(E_REF[None] + rng.normal(0, 0.06, (b, 3)))
    h_vec /= np.linalg.norm(h_vec, axis=1, keepdims=True)
    e_vec /= np.linalg.norm(e_vec, axis=1, keepdims=True)
    light = rng.uniform(232, 252, (b, 3))
    od = hema[..., None] * h_vec[:, None, None, :].astype(np.float32) + eos[..., None] * e_vec[:, None, None, :].astype(np.float32)
    rgb = light[:, None, None, :].astype(np.float32) * np.exp(-np.maximum(od, 0))
    rgb += rng.uniform(1, 4, b).astype(np.float32)[:, None, None, None] * rng.standard_normal(rgb.shape, dtype=np.float32)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def generate(n, seed):
    """n patches with balanced labels (n // 2 positives), deterministic in (n, seed)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation((np.arange(n) < n // 2).astype(np.int64))
    images = np.empty((n, P, P, 3), np.uint8)
    for start in range(0, n, CHUNK):
        images[start:start + CHUNK] = _render_chunk(rng, labels[start:start + CHUNK])
    return images, labels


def write_samples(directory, images, labels):
    from PIL import Image

    os.makedirs(directory, exist_ok=True)
    rows = ["file,label"]
    for i, (img, lab) in enumerate(zip(images, labels)):
        name = f"patch_{i:03d}.png"
        Image.fromarray(img).save(os.path.join(directory, name), optimize=True)
        rows.append(f"{name},{lab}")
    with open(os.path.join(directory, "labels.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")


def write_h5(prefix, images, labels):
    """PCam's camelyonpatch_level_2_split_*_{x,y}.h5 layout, one patch per chunk."""
    import h5py

    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    with h5py.File(f"{prefix}_x.h5", "w") as f:
        f.create_dataset("x", data=images, chunks=(1, P, P, 3), compression="gzip")
    with h5py.File(f"{prefix}_y.h5", "w") as f:
        f.create_dataset("y", data=labels.astype(np.uint8).reshape(-1, 1, 1, 1), chunks=(1, 1, 1, 1), compression="gzip")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", metavar="DIR", help="write patch_NNN.png files and DIR/labels.csv")
    ap.add_argument("--h5", metavar="PREFIX", help="write PREFIX_x.h5 and PREFIX_y.h5 (PCam layout)")
    ap.add_argument("--n", type=int, default=100, help="number of patches (default 100)")
    ap.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    args = ap.parse_args(argv)
    if not args.samples and not args.h5:
        ap.error("give --samples DIR and/or --h5 PREFIX")
    images, labels = generate(args.n, args.seed)
    if args.samples:
        write_samples(args.samples, images, labels)
        print(f"wrote {args.n} patches ({labels.sum()} metastatic) to {args.samples}")
    if args.h5:
        write_h5(args.h5, images, labels)
        print(f"wrote {args.h5}_x.h5 and {args.h5}_y.h5 ({args.n} patches)")


if __name__ == "__main__":
    sys.exit(main())
