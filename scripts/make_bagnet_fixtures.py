#!/usr/bin/env python3
"""Reference fixtures for edgemed's 3-D BagNet (models/BAGNET3D.md), written to
tests/fixtures/bagnet3d/. A torch implementation of the architecture, written from the
reference BagNet (bagnets/pytorchnet.py: Bottleneck blocks, kernel3 per stage, valid
convolutions, residuals cropped at the end) with Conv3d and InstanceNorm3d, small
widths and inputs, seeded; a rerun rewrites the same values.

Files, for each case NAME below
    NAME.safetensors   the state_dict (torch's module names, fc split into fc_age /
                       fc_sex), metadata receptive_field
    NAME.input.npy     float32 [B, 1, X, Y, Z]
    NAME.output.npy    float32 [B, K]: the prediction (age, then the sex logits)
    NAME.map.npy       float32 [B, K, x, y, z]: the heads applied at each location
                       before the average (its mean over x, y, z is the output)

Rerun: /work/main/.venv/bin/python scripts/make_bagnet_fixtures.py (torch, numpy, safetensors).
"""
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "bagnet3d"
KERNEL3 = {9: [1, 1, 0, 0], 17: [1, 1, 1, 0], 33: [1, 1, 1, 1]}


def norm(c, running):
    return nn.InstanceNorm3d(c, affine=True, track_running_stats=running)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride, downsample, k, running):
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, 1, bias=False)
        self.bn1 = norm(planes, running)
        self.conv2 = nn.Conv3d(planes, planes, k, stride=stride, padding=0, bias=False)
        self.bn2 = norm(planes, running)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = norm(planes * 4, running)
        self.downsample = downsample

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        d = [r - o for r, o in zip(residual.shape[2:], out.shape[2:])]
        if any(d):
            residual = residual[:, :, :residual.shape[2] - d[0], :residual.shape[3] - d[1], :residual.shape[4] - d[2]]
        return torch.relu(out + residual)


class BagNet3D(nn.Module):
    def __init__(self, rf, width, age, sex, running):
        super().__init__()
        self.conv1 = nn.Conv3d(1, width, 1, bias=False)
        self.conv2 = nn.Conv3d(width, width, 3, bias=False)
        self.bn1 = norm(width, running)
        self.inplanes = width
        for i, (depth, stride) in enumerate(zip([3, 4, 6, 3], [2, 2, 2, 1])):
            setattr(self, f"layer{i + 1}", self._make_layer(width << i, depth, stride, KERNEL3[rf][i], running))
        self.fc_age = nn.Linear(width * 32, 1) if age else None
        self.fc_sex = nn.Linear(width * 32, 2) if sex else None

    def _make_layer(self, planes, blocks, stride, kernel3, running):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv3d(self.inplanes, planes * 4, 1, stride=stride, bias=False), norm(planes * 4, running))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, 1 if kernel3 == 0 else 3, running)]
        self.inplanes = planes * 4
        for i in range(1, blocks):
            layers.append(Bottleneck(self.inplanes, planes, 1, None, 1 if kernel3 <= i else 3, running))
        return nn.Sequential(*layers)

    def features(self, x):
        x = torch.relu(self.bn1(self.conv2(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def heads(self, f):
        """Linear heads on the last axis of f [..., C] -> [..., K]."""
        outs = [h(f) for h in (self.fc_age, self.fc_sex) if h is not None]
        return torch.cat(outs, dim=-1)

    def forward(self, x):
        return self.heads(self.features(x).mean(dim=(2, 3, 4)))

    def local_map(self, x):
        return self.heads(self.features(x).permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


CASES = [
    # name, receptive field, width, age, sex, running statistics, input shape
    ("b9_instance_age", 9, 2, True, False, False, (1, 1, 20, 18, 19)),
    ("b17_running_both", 17, 2, True, True, True, (2, 1, 27, 25, 26)),
    ("b33_instance_both", 33, 2, True, True, False, (1, 1, 41, 40, 42)),
]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    meta_all = {}
    for k, (name, rf, width, age, sex, running, shape) in enumerate(CASES):
        torch.manual_seed(100 + k)
        net = BagNet3D(rf, width, age, sex, running)
        with torch.no_grad():
            for mname, m in net.named_modules():
                if isinstance(m, nn.InstanceNorm3d):
                    m.weight.normal_(0.3 if mname.endswith("bn3") else 1.0, 0.1)
                    m.bias.normal_(0.0, 0.1)
                    if running:
                        m.running_mean.normal_(0.0, 0.2)
                        m.running_var.uniform_(0.5, 2.0)
            if age:
                net.fc_age.bias.fill_(0.5)
        net.eval()
        sd = {n: t.detach().contiguous() for n, t in net.state_dict().items() if not n.endswith("num_batches_tracked")}
        save_file(sd, str(OUT / f"{name}.safetensors"), metadata={"arch": "bagnet3d", "receptive_field": str(rf)})
        x = torch.from_numpy(np.random.default_rng(200 + k).standard_normal(shape).astype(np.float32))
        with torch.no_grad():
            y = net(x).numpy()
            m = net.local_map(x).numpy()
        np.save(OUT / f"{name}.input.npy", x.numpy())
        np.save(OUT / f"{name}.output.npy", y)
        np.save(OUT / f"{name}.map.npy", m)
        assert np.allclose(m.mean(axis=(2, 3, 4)), y, rtol=1e-5, atol=1e-4), "map mean differs from the prediction"
        meta_all[name] = dict(receptive_field=rf, width=width, age=age, sex=sex, running=running, input=shape, map=list(m.shape))
        print(name, "output", y.ravel()[:4], "map", m.shape)
    (OUT / "bagnet3d.json").write_text(json.dumps(dict(generator="scripts/make_bagnet_fixtures.py", torch=torch.__version__,
                                                       cases=meta_all), indent=1) + "\n")


if __name__ == "__main__":
    main()
