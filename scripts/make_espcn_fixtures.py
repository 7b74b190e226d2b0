#!/usr/bin/env python3
"""Reference fixtures for edgemed's 3-D ESPCN (super-resolution as in low-memory image
quality transfer: valid 3-D convolutions, then a 3-D pixel shuffle with rate r = 2),
written to tests/fixtures/espcn/. Seeded; a rerun rewrites the same bytes.

Files
-----
shuffle_input.npy / shuffle_output.npy
    float32 [1, 16, 3, 4, 5] -> [1, 2, 6, 8, 10]: the 3-D pixel shuffle in numpy
    (reshape [N, C, r, r, r, D, H, W], transpose to [N, C, D, r, H, r, W, r], reshape),
    checked equal to monai.networks.utils.pixelshuffle when MONAI is importable.
espcn.safetensors
    Seeded weights with the names the models crate reads: conv{i}.weight
    [out, in, k, k, k] and conv{i}.bias [out] for kernels (3, 1, 3) and widths
    1 -> 16 -> 8 -> 8 (= 1 * 2^3); metadata: kernels, channels, scale.
espcn_input.npy / espcn_torch_output.npy
    float32 [1, 1, 14, 12, 10] (valid convolutions lose 2 voxels per side) and
    torch's output [1, 1, 20, 16, 12]: conv3d (no padding) + ReLU between layers,
    none after the last, then the pixel shuffle.

Rerun: /work/venv/bin/python scripts/make_espcn_fixtures.py (torch, numpy, safetensors;
monai optional).
"""
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "espcn"
R = 2
KERNELS = (3, 1, 3)
CHANNELS = (1, 16, 8, 1 * R ** 3)


def shuffle_np(x, r):
    n, c, d, h, w = x.shape
    co = c // r ** 3
    y = x.reshape(n, co, r, r, r, d, h, w).transpose(0, 1, 5, 2, 6, 3, 7, 4)
    return np.ascontiguousarray(y.reshape(n, co, d * r, h * r, w * r))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(31)
    x = rng.standard_normal((1, 16, 3, 4, 5)).astype(np.float32)
    y = shuffle_np(x, R)
    try:
        from monai.networks.utils import pixelshuffle
        assert np.array_equal(pixelshuffle(torch.from_numpy(x), 3, R).numpy(), y), "numpy and MONAI shuffles differ"
        checked = "monai.networks.utils.pixelshuffle"
    except ImportError:
        checked = "numpy only (MONAI not importable)"
    np.save(OUT / "shuffle_input.npy", x)
    np.save(OUT / "shuffle_output.npy", y)

    torch.manual_seed(32)
    tensors = {}
    for i, k in enumerate(KERNELS):
        conv = torch.nn.Conv3d(CHANNELS[i], CHANNELS[i + 1], k)
        tensors[f"conv{i}.weight"] = conv.weight.detach().contiguous()
        tensors[f"conv{i}.bias"] = conv.bias.detach().contiguous()
    meta = {"arch": "espcn3d", "kernels": ",".join(map(str, KERNELS)),
            "channels": ",".join(map(str, CHANNELS[1:-1])), "scale": str(R), "in_channels": "1"}
    save_file(tensors, str(OUT / "espcn.safetensors"), metadata=meta)

    xin = torch.from_numpy(rng.standard_normal((1, 1, 14, 12, 10)).astype(np.float32))
    h = xin
    with torch.no_grad():
        for i in range(len(KERNELS)):
            h = torch.nn.functional.conv3d(h, tensors[f"conv{i}.weight"], tensors[f"conv{i}.bias"])
            if i + 1 < len(KERNELS):
                h = torch.relu(h)
    out = shuffle_np(h.numpy(), R)
    np.save(OUT / "espcn_input.npy", xin.numpy())
    np.save(OUT / "espcn_torch_output.npy", out)
    (OUT / "espcn.json").write_text(json.dumps(dict(
        generator="scripts/make_espcn_fixtures.py", torch=torch.__version__, numpy=np.__version__,
        shuffle_checked_against=checked, kernels=KERNELS, channels=CHANNELS, scale=R,
        espcn_input=list(xin.shape), espcn_output=list(out.shape)), indent=2) + "\n")
    print("wrote", OUT, checked)


if __name__ == "__main__":
    main()
