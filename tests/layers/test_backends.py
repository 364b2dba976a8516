"""The layers build and run on the JAX and torch backends (when installed), and give the
same numbers as on TensorFlow for the same weights. Each backend runs in a subprocess,
since Keras picks its backend once per process."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = r"""
import sys
import numpy as np
import keras
from keras_priors.layers import GroupNormalization, LowRankConv2D, LowRankConv3D, RootConv2D, RootConv3D

cases = [
    (LowRankConv2D, dict(filters=8, kernel_size=3, basis="lr_join_wfull", padding="same", strides=2), (2, 9, 10, 4)),
    (LowRankConv2D, dict(filters=8, kernel_size=3, basis="sf", padding="valid"), (2, 9, 10, 4)),
    (LowRankConv3D, dict(filters=6, kernel_size=3, basis="lr_join", padding="same"), (1, 5, 6, 7, 4)),
    (RootConv2D, dict(filters=8, kernel_size=3, groups=4, padding="same", implementation="grouped"), (2, 9, 10, 4)),
    (RootConv2D, dict(filters=8, kernel_size=3, groups=4, padding="same", implementation="split"), (2, 9, 10, 4)),
    (RootConv3D, dict(filters=8, kernel_size=3, groups=2, padding="valid", implementation="auto"), (1, 5, 6, 7, 4)),
    (LowRankConv3D, dict(filters=6, kernel_size=3, basis="lr_join", padding="same", recompute=True), (1, 5, 6, 7, 4)),
    (GroupNormalization, dict(groups=-1), (2, 5, 6, 7, 4)),
]
out = {}
for i, (cls, kwargs, shape) in enumerate(cases):
    rng = np.random.default_rng(i)
    x = rng.normal(size=shape).astype("float32")
    layer = cls(**kwargs)
    layer.build(shape)
    layer.set_weights([rng.normal(size=w.shape).astype("float32") for w in layer.weights])
    training = kwargs.get("recompute") is True  # the recomputing training path (keras.remat)
    out[f"case{i}"] = keras.ops.convert_to_numpy(layer(x, training=training))
np.savez(sys.argv[1], backend=keras.backend.backend(), **out)
"""


def _run(backend, path):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path)], env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(path)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_layers_run_on_other_backends(backend, tmp_path):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"the {backend} backend is not installed")
    reference = _run("tensorflow", tmp_path / "tf.npz")
    other = _run(backend, tmp_path / f"{backend}.npz")
    assert str(other["backend"]) == backend
    for key in reference.files:
        if key != "backend":
            np.testing.assert_allclose(other[key], reference[key], rtol=1e-4, atol=1e-4, err_msg=key)
