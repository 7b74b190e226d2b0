#!/usr/bin/env python3
"""Trains edgemed's bundled demonstration model: a C4-equivariant MobileNetV2
(width 0.5) on synthetic PCam-like patches from scripts/pcam_synth.py.

The torch module implements models/EQ_MOBILENET_V2.md exactly: its parameters are
the base tensors named there, expanded into convolution weights on every forward
(rotated copies for the lifting and depthwise filters, cyclic shifts for the
pointwise ones), batch norm shared within each field, group pooling by max over
the N channels of a field. `edgemed export eq-mobilenet-v2 --weights` turns the
saved safetensors into the ONNX model; scripts/make_fixtures.py checks that the
two agree on the sample patches.

Usage:
  python scripts/train_pcam.py [--train 16000] [--val 2000] [--epochs 4] [--out models/bundled/pcam-c4-demo]
Writes OUT.safetensors and OUT.train.json (settings, wall time, held-out accuracy and AUC).
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pcam_synth  # noqa: E402

STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 1), (6, 320, 1, 1)]
MEAN, STD = 0.5, 0.25
S = 95


def circular_mask(s):
    c = (s - 1) / 2
    yy, xx = np.mgrid[0:s, 0:s]
    return torch.from_numpy(((yy - c) ** 2 + (xx - c) ** 2 <= (s / 2) ** 2).astype(np.float32))


class EqLayer(torch.nn.Module):
    """One convolution of the spec (lifting, pointwise or depthwise) + field-shared batch norm."""

    def __init__(self, kind, n, f_in, f_out, stride, relu6):
        super().__init__()
        self.kind, self.n, self.stride, self.relu6 = kind, n, stride, relu6
        if kind == "lifting":
            fan_in = 3 * 9
            self.weight = torch.nn.Parameter(torch.empty(f_out, 3, 3, 3))
        elif kind == "pointwise":
            fan_in = f_in * n
            self.weight = torch.nn.Parameter(torch.empty(f_out, f_in, n))
        else:
            fan_in = 9
            self.weight = torch.nn.Parameter(torch.empty(f_out, 3, 3))
        torch.nn.init.uniform_(self.weight, -math.sqrt(6 / fan_in), math.sqrt(6 / fan_in))
        self.bn = torch.nn.BatchNorm2d(f_out)

    def expanded(self):
        n, w = self.n, self.weight
        if self.kind == "lifting":  # W[o*N + r, c] = rot_r(base[o, c])
            return torch.stack([torch.rot90(w, r * 4 // n, dims=(-2, -1)) for r in range(n)], 1).reshape(-1, 3, 3, 3)
        if self.kind == "pointwise":  # W[o*N + r, i*N + s] = base[o, i, (s - r) mod N]
            fo, fi, _ = w.shape
            return torch.stack([torch.roll(w, r, dims=2) for r in range(n)], 1).reshape(fo * n, fi * n, 1, 1)
        return torch.stack([torch.rot90(w, r * 4 // n, dims=(-2, -1)) for r in range(n)], 1).reshape(-1, 1, 3, 3)

    def forward(self, x):
        w = self.expanded()
        pad = 0 if self.kind == "pointwise" or self.stride == 2 else 1
        groups = w.shape[0] if self.kind == "depthwise" else 1
        y = F.conv2d(x, w, stride=self.stride, padding=pad, groups=groups)
        b, c, h, wd = y.shape
        # Statistics shared within a field: batch norm over the [B, F, N*H, W] view.
        y = self.bn(y.reshape(b, c // self.n, self.n * h, wd)).reshape(b, c, h, wd)
        return F.relu6(y) if self.relu6 else y


class EqMobileNetV2(torch.nn.Module):
    def __init__(self, group_order=4, width=0.5, num_classes=2):
        super().__init__()
        assert group_order in (1, 2, 4), "this trainer implements the grid-rotation groups"
        self.n, self.width, self.num_classes = group_order, width, num_classes
        fields = lambda c: max(1, int(math.floor(c * width / group_order + 0.5)))  # noqa: E731
        self.stem = EqLayer("lifting", group_order, 1, fields(32), 2, True)
        f_in, blocks = self.stem.bn.num_features, []
        for t, c, reps, s in STAGES:
            f_out = fields(c)
            for i in range(reps):
                stride = s if i == 0 else 1
                block = torch.nn.Module()
                hidden = f_in * t
                if t != 1:
                    block.expand = EqLayer("pointwise", group_order, f_in, hidden, 1, True)
                block.dw = EqLayer("depthwise", group_order, hidden, hidden, stride, True)
                block.project = EqLayer("pointwise", group_order, hidden, f_out, 1, False)
                block.residual = stride == 1 and f_in == f_out
                blocks.append(block)
                f_in = f_out
        self.blocks = torch.nn.ModuleList(blocks)
        self.head = EqLayer("pointwise", group_order, f_in, fields(1280), 1, True)
        self.classifier = torch.nn.Linear(fields(1280), num_classes)
        self.register_buffer("input_mask", circular_mask(S), persistent=False)
        self.register_buffer("pool_mask", circular_mask(5), persistent=False)

    def forward(self, x):
        """x: [B, 3, 95, 95] normalised; the input mask is applied here (the runtime does it before ONNX)."""
        x = self.stem(x * self.input_mask)
        for b in self.blocks:
            y = b.expand(x) if hasattr(b, "expand") else x
            y = b.project(b.dw(y))
            x = x + y if b.residual else y
        x = self.head(x) * self.pool_mask
        bsz, c, h, w = x.shape
        x = x.reshape(bsz, c // self.n, self.n, h, w).amax(2).mean((2, 3))
        return self.classifier(x)

    def metadata(self):
        return {"arch": "eq_mobilenet_v2", "group_order": str(self.n), "width": str(self.width), "num_classes": str(self.num_classes),
                "class_names": "normal,metastatic", "mean": f"{MEAN},{MEAN},{MEAN}", "std": f"{STD},{STD},{STD}"}


def state_for_safetensors(model):
    """The spec's tensor names: `blocks.{i}.dw.weight`, `*.bn.running_mean`, `classifier.weight`, ..."""
    return {k: v.detach().float().contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def load_model(path):
    path = Path(path)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        md = f.metadata()
    model = EqMobileNetV2(int(md["group_order"]), float(md["width"]), int(md["num_classes"]))
    model.load_state_dict(load_file(str(path)), strict=False)
    return model.eval()


def to_input(images):
    """uint8 [B, 96, 96, 3] patches -> normalised [B, 3, 95, 95] (crop offset 0, as the runtime)."""
    x = torch.from_numpy(np.ascontiguousarray(images[:, :S, :S, :])).permute(0, 3, 1, 2).float() / 255.0
    return (x - MEAN) / STD


def auc(scores, labels):
    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    pos = labels == 1
    return (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())


def evaluate(model, images, labels, batch=256):
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(to_input(images[i:i + batch])) for i in range(0, len(images), batch)])
    p = torch.softmax(logits, 1)[:, 1].numpy()
    return float(((p >= 0.5) == (labels == 1)).mean()), float(auc(p, labels))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=16000)
    ap.add_argument("--val", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "models/bundled/pcam-c4-demo"))
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    xtr, ytr = pcam_synth.generate(args.train, seed=1000 + args.seed)
    xva, yva = pcam_synth.generate(args.val, seed=2000 + args.seed)
    print(f"generated {args.train} + {args.val} patches in {time.time() - t0:.0f} s", flush=True)
    model = EqMobileNetV2(4, 0.5, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * (args.train // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    rng = np.random.default_rng(args.seed)
    history = []
    t1 = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = rng.permutation(args.train)
        for k in range(args.train // args.batch):
            idx = order[k * args.batch:(k + 1) * args.batch]
            imgs = xtr[idx]
            # Mirror half the batch: reflections are not in C4, so the model has to learn them.
            flip = rng.random(len(idx)) < 0.5
            imgs = np.where(flip[:, None, None, None], imgs[:, :, ::-1, :], imgs)
            loss = F.cross_entropy(model(to_input(imgs)), torch.from_numpy(ytr[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if k % 50 == 0:
                print(f"epoch {epoch} step {k} loss {loss.item():.4f} ({time.time() - t1:.0f} s)", flush=True)
        acc, a = evaluate(model, xva, yva)
        history.append({"epoch": epoch, "val_accuracy": acc, "val_auc": a, "seconds": round(time.time() - t1)})
        print(f"epoch {epoch}: held-out accuracy {acc:.4f}, AUC {a:.4f}", flush=True)
    model.eval()
    out = Path(args.out)
    save_file(state_for_safetensors(model), str(out.with_suffix(".safetensors")), metadata=model.metadata())
    samples = Path(__file__).resolve().parent.parent / "examples/data/pcam"
    sample_acc = None
    if (samples / "labels.csv").exists():
        from PIL import Image

        rows = [line.split(",") for line in (samples / "labels.csv").read_text().split()[1:]]
        imgs = np.stack([np.asarray(Image.open(samples / f).convert("RGB")) for f, _ in rows])
        sample_acc, _ = evaluate(model, imgs, np.array([int(y) for _, y in rows]))
    report = {"seed": args.seed, "train_patches": args.train, "held_out_patches": args.val, "epochs": args.epochs, "batch": args.batch,
              "max_lr": args.lr, "train_seconds": round(time.time() - t1), "threads": args.threads, "history": history,
              "held_out_accuracy": history[-1]["val_accuracy"], "held_out_auc": history[-1]["val_auc"], "sample_patch_accuracy": sample_acc,
              "generator": "scripts/pcam_synth.py generate(n, seed=1000+seed) for training, seed=2000+seed held out", "torch": torch.__version__}
    out.with_suffix(".train.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("held_out_accuracy", "held_out_auc", "sample_patch_accuracy", "train_seconds")}))


if __name__ == "__main__":
    main()
