#!/usr/bin/env python3
"""Full-int8 .tflite of Keras' MobileNetV2 for the LiteRT peer of scripts/bench-peers.sh: the same architecture
and width as the torchvision model edgemed and the ONNX peers run (tf_keras.applications.MobileNetV2(alpha=WIDTH,
input_shape=(SIZE, SIZE, 3), classes=2, weights=None): the same channel counts, strides and head), random
weights (seed 0), converted by TFLiteConverter with a representative dataset of 16 seeded N(0, 1) images,
TFLITE_BUILTINS_INT8 only, int8 input and output (int8 activations, per-channel int8 weights: TFLite's scheme).

  target/peers-venv/tf/bin/python scripts/make_keras_tflite.py WIDTH SIZE OUT.tflite   (tensorflow, tf_keras)
"""
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402


def main():
    width, size, out = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    tf.random.set_seed(0)
    model = tf_keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=width, weights=None, classes=2,
                                              classifier_activation=None)
    rng = np.random.default_rng(1)

    def rep():
        for _ in range(16):
            yield [rng.standard_normal((1, size, size, 3)).astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    data = conv.convert()
    with open(out, "wb") as f:
        f.write(data)
    macs = sum(int(np.prod(l.output.shape[1:])) * int(np.prod(l.kernel.shape[:-1]))
               for l in model.layers if isinstance(l, tf_keras.layers.Conv2D) and not isinstance(l, tf_keras.layers.DepthwiseConv2D))
    macs += sum(int(np.prod(l.output.shape[1:])) * int(np.prod(l.depthwise_kernel.shape[:2]))
                for l in model.layers if isinstance(l, tf_keras.layers.DepthwiseConv2D))
    print(f"{out}: {len(data)} bytes, keras MobileNetV2 alpha {width} @ {size}, {model.count_params()} params, "
          f"conv MACs {macs / 1e6:.1f} M")


if __name__ == "__main__":
    main()
