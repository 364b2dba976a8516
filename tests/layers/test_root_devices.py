"""RootConv `devices`: groups placed round-robin on devices give the same output as one
device (real placement on 2 logical CPU devices, in a subprocess so that TensorFlow splits
the CPU before it initialises), the argument round-trips and bad values are named."""

import os
import subprocess
import sys

import numpy as np
import pytest

from keras_priors.layers import RootConv2D, RootConv3D

from .harness import run_layer_checks

PLACED = r'''
import numpy as np
import tensorflow as tf
from keras_priors import distribute
distribute.configure_logical_cpus(2)
import keras
from keras_priors.layers import RootConv2D, RootConv3D
assert len(tf.config.list_logical_devices("CPU")) == 2
for cls, shape in ((RootConv2D, (2, 9, 9, 8)), (RootConv3D, (1, 5, 6, 7, 8))):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    plain = cls(12, 3, groups=4, padding="same", implementation="split")
    placed = cls(12, 3, groups=4, padding="same", devices=["/CPU:0", "/CPU:1"])
    plain.build(shape); placed.build(shape)
    placed.set_weights(plain.get_weights())
    assert placed.resolved_implementation == "split"
    np.testing.assert_array_equal(np.asarray(plain(x)), np.asarray(placed(x)))
    step = tf.function(lambda v: placed(v))  # graph mode too
    np.testing.assert_array_equal(np.asarray(plain(x)), np.asarray(step(x)))
    graph = step.get_concrete_function(tf.TensorSpec(shape, tf.float32)).graph
    convs = [op.device for op in graph.get_operations() if op.type.startswith("Conv")]
    assert len(convs) == 4 and sum("CPU:1" in d for d in convs) == 2, convs
    print("conv devices", convs)
print("PLACED OK")
'''


def test_groups_on_two_logical_cpus_equal_one_device(tmp_path):
    script = tmp_path / "placed.py"
    script.write_text(PLACED)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "PLACED OK" in done.stdout


@pytest.mark.parametrize("cls, shape", [(RootConv2D, (2, 7, 7, 8)), (RootConv3D, (1, 4, 5, 6, 8))])
def test_devices_round_trip_and_equal(cls, shape, tmp_path):
    layer = run_layer_checks(cls, dict(filters=8, kernel_size=3, groups=4, padding="same",
                                       devices=["/CPU:0"]), shape, tmp_path)
    assert layer.get_config()["devices"] == ["/CPU:0"]
    plain = cls(8, 3, groups=4, padding="same", implementation="split")
    plain.build(shape)
    layer.set_weights(plain.get_weights())
    x = np.random.default_rng(2).normal(size=shape).astype("float32")
    np.testing.assert_array_equal(np.asarray(plain(x)), np.asarray(layer(x)))


def test_bad_devices():
    with pytest.raises(ValueError, match=r"devices must be None or a non-empty list .* "
                                         r"received devices='/GPU:0'"):
        RootConv2D(8, 3, groups=2, devices="/GPU:0")
    with pytest.raises(ValueError, match=r"devices entries must be device strings .* "
                                         r"received 'gpu0' in devices=\['/CPU:0', 'gpu0'\]"):
        RootConv2D(8, 3, groups=2, devices=["/CPU:0", "gpu0"])
    with pytest.raises(ValueError, match="devices places the per-group convs of "
                                         "implementation='split'"):
        RootConv2D(8, 3, groups=2, devices=["/CPU:0"], implementation="grouped")
