#!/usr/bin/env python3
"""A small real brain for edgemed's brain-age tests: the MNI152 (ICBM 2009a, symmetric)
T1 template that nilearn ships in its wheel (1 mm, 197x233x189, skull-stripped,
intensities 0..1), averaged over 3x3x3 blocks to 3 mm (65x77x63) and stored as
uint8 (x255) with the matching affine, so `edgemed-run brain-age` has to resample it to
1 mm. Written to tests/fixtures/bagnet3d/mni152_t1_3mm.nii.gz (about 150 KB).

The template file: nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz
inside the nilearn wheel (`pip download --no-deps nilearn` and unzip it, or an installed
nilearn). Rerun:
    /work/main/.venv/bin/python scripts/make_mni_fixture.py PATH/TO/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz
(nibabel, numpy). The full 1 mm file is what the benchmark in README runs on.
"""
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "bagnet3d" / "mni152_t1_3mm.nii.gz"
F = 3


def main():
    img = nib.load(sys.argv[1])
    d = np.asarray(img.dataobj, dtype=np.float32)
    assert d.shape == (197, 233, 189), d.shape
    n = [s // F * F for s in d.shape]
    blocks = d[:n[0], :n[1], :n[2]].reshape(n[0] // F, F, n[1] // F, F, n[2] // F, F).mean(axis=(1, 3, 5))
    # Block (i, j, k) is centred on 1 mm voxel F*i + (F-1)/2.
    scale = np.diag([F, F, F, 1.0])
    scale[:3, 3] = (F - 1) / 2
    affine = img.affine @ scale
    q = np.clip(np.round(blocks / max(blocks.max(), 1e-6) * 255), 0, 255).astype(np.uint8)
    out = nib.Nifti1Image(q, affine)
    out.header.set_xyzt_units("mm")
    out.set_qform(affine, 1)
    out.set_sform(affine, 1)
    nib.save(out, str(OUT))
    print(OUT, q.shape, "non-zero", int((q > 0).sum()), "voxels,", round((q > 0).sum() * F ** 3 / 1000), "mL")


if __name__ == "__main__":
    main()
