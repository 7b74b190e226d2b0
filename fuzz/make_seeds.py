"""Writes tiny ONNX seed models for the onnx_model and converter_passes fuzz targets
(fuzz/seeds/*.onnx): an inverted-residual block in the shapes the converter handles
(Conv + BatchNorm + Clip, depthwise, Add, GlobalAveragePool, Gemm), a QDQ variant and
one with a circular-mask Mul, at 4-8 channels on 9x9 inputs, so mutations reach the
graph structure rather than megabytes of weights. Needs numpy and onnx.

    python fuzz/make_seeds.py
"""
import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(0)
out = pathlib.Path(__file__).parent / "seeds"
out.mkdir(exist_ok=True)


def init(name, shape, scale=0.5):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def bn(prefix, c):
    return [
        numpy_helper.from_array(rng.uniform(0.5, 1.5, c).astype(np.float32), f"{prefix}.g"),
        numpy_helper.from_array(rng.normal(0, 0.1, c).astype(np.float32), f"{prefix}.b"),
        numpy_helper.from_array(rng.normal(0, 0.1, c).astype(np.float32), f"{prefix}.m"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, c).astype(np.float32), f"{prefix}.v"),
    ]


def block(opset, qdq=False, mask=False):
    c, e = 4, 8
    inits = [init("w1", [e, 3, 3, 3]), init("wd", [e, 1, 3, 3]), init("w2", [c, e, 1, 1]), init("fc.w", [2, c]), init("fc.b", [2])]
    inits += bn("bn1", e) + bn("bnd", e) + bn("bn2", c)
    inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"), numpy_helper.from_array(np.array(6, np.float32), "hi")]
    nodes = []
    x = "input"
    if mask:
        m = np.zeros([1, 1, 9, 9], np.float32)
        yy, xx = np.mgrid[:9, :9]
        m[0, 0][(yy - 4) ** 2 + (xx - 4) ** 2 <= 20.25] = 1
        inits.append(numpy_helper.from_array(m, "mask"))
        nodes.append(helper.make_node("Mul", ["input", "mask"], ["masked"]))
        x = "masked"
    if qdq:
        inits += [numpy_helper.from_array(np.array(0.02, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
        nodes += [helper.make_node("QuantizeLinear", [x, "s", "z"], ["xq"]), helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"])]
        x = "xd"
    nodes += [
        helper.make_node("Conv", [x, "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn1.g", "bn1.b", "bn1.m", "bn1.v"], ["b1"]),
        helper.make_node("Clip", ["b1", "lo", "hi"], ["r1"]),
        helper.make_node("Conv", ["r1", "wd"], ["cd"], group=e, pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["cd", "bnd.g", "bnd.b", "bnd.m", "bnd.v"], ["bd"]),
        helper.make_node("Relu", ["bd"], ["rd"]),
        helper.make_node("Conv", ["rd", "w2"], ["c2"]),
        helper.make_node("BatchNormalization", ["c2", "bn2.g", "bn2.b", "bn2.m", "bn2.v"], ["b2"]),
        helper.make_node("Add", ["b2", "b2"], ["sum"]),
        helper.make_node("GlobalAveragePool", ["sum"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "seed",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 9, 9])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


for name, m in {
    "block_opset13.onnx": block(13),
    "block_opset17_mask.onnx": block(17, mask=True),
    "block_qdq.onnx": block(13, qdq=True),
}.items():
    onnx.save(m, out / name)
    print(out / name, (out / name).stat().st_size, "bytes")

# NIfTI seeds for the nifti_volume target: uncompressed, so mutations reach the header
# fields (dims, datatype, scaling, qform/sform) directly. Needs nibabel.
import nibabel as nib  # noqa: E402

rng = np.random.default_rng(3)
affine = np.array([[0.8, 0, 0, -10], [0, 0.9, 0, -8], [0, 0, 1.5, 4], [0, 0, 0, 1]])
for name, data in {
    "tiny_f32.nii": rng.standard_normal((6, 5, 4)).astype(np.float32),
    "tiny_u8.nii": rng.integers(0, 3, (5, 4, 3)).astype(np.uint8),
    "tiny_i16.nii": rng.integers(-1000, 1000, (4, 4, 4)).astype(np.int16),
}.items():
    nib.save(nib.Nifti1Image(data, affine), str(out / name))
    print(out / name, (out / name).stat().st_size, "bytes")
