"""Ablations of the lean low-rank U-Net's training path, one process per call: peak
training memory (rise of ru_maxrss over 3 steps) and step time at a P^3 x 4 patch, batch 2,
widths 16-128, AdamW, Dice + BCE.

    python benchmarks/unet_ablation.py unet3d_lowrank rec 96          # the zoo default
    python benchmarks/unet_ablation.py unet3d_lowrank rec_no2d 96     # axis members as 3D convs
    python benchmarks/unet_ablation.py unet3d_lowrank rec_nomark 96   # the norm keeps its input
    python benchmarks/unet_ablation.py unet3d_lowrank norec 96        # no recompute at all
    python benchmarks/unet_ablation.py unet3d full 96

The variant is a name holding any of: "norec", "no2d", "nomark".
"""

import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras_priors  # noqa: F401,E402  (before TensorFlow: turns oneDNN on)
import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_priors import zoo  # noqa: E402
from keras_priors.layers import base, lowrank  # noqa: E402
from keras_priors.volumetric.losses import DiceCELoss  # noqa: E402


def main(model_name, variant, patch):
    if "nomark" in variant:
        lowrank.mark_recomputable = lambda *a: None
    if "no2d" in variant:
        base._axis_conv_as_2d = lambda *a: None
    extra = {"recompute": False} if "norec" in variant else {}
    p = patch
    model = zoo.load(model_name, input_shape=(p, p, p, 4), classes=3,
                     classifier_activation="sigmoid", widths=(16, 32, 64, 128), **extra)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=DiceCELoss())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, p, p, p, 4)).astype("float32")
    y = (rng.random((2, p, p, p, 3)) > 0.9).astype("float32")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model.train_on_batch(x, y)
    t0 = time.perf_counter()
    for _ in range(2):
        model.train_on_batch(x, y)
    step = (time.perf_counter() - t0) / 2
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"| {model_name} | {variant} | {p}^3 | {round((peak - before) / 1024)} MB | "
          f"{step:.3f} s |")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
