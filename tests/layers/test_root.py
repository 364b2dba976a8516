"""RootConv2D / RootConv3D against plain Keras convs with the block-diagonal kernel."""

import keras
import numpy as np
import pytest

from keras_priors.layers import RootConv2D, RootConv3D, choose_implementation, native_grouped_conv
from keras_priors.layers import root as root_module

from .harness import (
    block_diagonal_kernel,
    reference_combine,
    reference_conv,
    run_layer_checks,
    set_random_weights,
)

LAYERS = {2: RootConv2D, 3: RootConv3D}
SPATIAL = {2: (9, 10), 3: (5, 6, 7)}


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("implementation", ["grouped", "split"])
def test_root_equals_block_diagonal_full_conv(rank, groups, padding, strides, implementation, rng):
    x = rng.normal(size=(2, *SPATIAL[rank], 8)).astype("float32")
    layer = LAYERS[rank](
        12, 3, groups=groups, padding=padding, strides=strides, implementation=implementation
    )
    set_random_weights(layer, x.shape)
    y = keras.ops.convert_to_numpy(layer(x))
    bias = keras.ops.convert_to_numpy(layer.bias)
    ref = reference_conv(x, block_diagonal_kernel(layer, 8), bias, layer.strides, padding, 1)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rank", [2, 3])
def test_root_with_combination_and_dilation(rank, rng):
    x = rng.normal(size=(1, *(s + 4 for s in SPATIAL[rank]), 8)).astype("float32")
    layer = LAYERS[rank](
        6, 3, groups=4, combine=True, spatial_filters=16, dilation_rate=2, padding="same",
        activation="relu",
    )
    set_random_weights(layer, x.shape)
    y = keras.ops.convert_to_numpy(layer(x))
    bias = keras.ops.convert_to_numpy(layer.bias)
    ref = reference_conv(x, block_diagonal_kernel(layer, 8), bias, 1, "same", 2)
    ref = np.maximum(reference_combine(ref, layer), 0)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("groups", [2, 8])
def test_implementations_share_weights_and_results(rank, groups, rng):
    x = rng.normal(size=(2, *SPATIAL[rank], 16)).astype("float32")
    outputs = {}
    weights = None
    for impl in ("grouped", "split", "auto"):
        layer = LAYERS[rank](16, 3, groups=groups, padding="same", implementation=impl)
        layer.build(x.shape)
        if weights is None:
            set_random_weights(layer)
            weights = layer.get_weights()
        layer.set_weights(weights)
        outputs[impl] = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(outputs["grouped"], outputs["split"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outputs["auto"], outputs["split"], rtol=1e-5, atol=1e-5)


def test_weight_layout_is_keras_grouped_conv(rng):
    """A RootConv2D's weights load into keras' Conv2D(groups=g) unchanged."""
    x = rng.normal(size=(2, 8, 8, 8)).astype("float32")
    layer = RootConv2D(12, 3, groups=4, padding="same", implementation="split")
    layer.build(x.shape)
    set_random_weights(layer)
    conv = keras.layers.Conv2D(12, 3, groups=4, padding="same")
    conv.build(x.shape)
    conv.set_weights(layer.get_weights())
    np.testing.assert_allclose(layer(x), conv(x), rtol=1e-5, atol=1e-5)


def test_auto_rules(monkeypatch):
    assert choose_implementation(1, backend="tensorflow", accelerator=False) == "grouped"
    assert choose_implementation(4, backend="jax", accelerator=False) == "split"
    assert choose_implementation(4, backend="tensorflow", accelerator=True) == "grouped"
    assert choose_implementation(4, backend="torch", accelerator=False) == "grouped"
    # on a TensorFlow CPU the probe decides, asked for the layer's rank and dtype
    asked = []
    for native in (True, False):
        monkeypatch.setattr(root_module, "native_grouped_conv",
                            lambda rank, dtype, n=native: asked.append((rank, dtype)) or n)
        want = "grouped" if native else "split"
        assert choose_implementation(4, backend="tensorflow", accelerator=False, rank=3,
                                     dtype="float64") == want
        monkeypatch.setattr(root_module, "_has_accelerator", lambda: False)
        assert RootConv2D(8, 3, groups=4, dtype="float64").resolved_implementation == want
    assert asked == [(3, "float64"), (2, "float64")] * 2
    # devices force the split form; one group is always a plain conv; explicit choices stay
    assert RootConv2D(8, 3, groups=4, devices=["/CPU:0"]).resolved_implementation == "split"
    assert RootConv2D(8, 3, groups=1).resolved_implementation == "grouped"
    assert RootConv2D(8, 3, groups=4, implementation="split").resolved_implementation == "split"


@pytest.mark.parametrize(
    "cls,kwargs,shape",
    [
        (RootConv2D, dict(filters=16, kernel_size=3, groups=4, padding="same"), (2, 9, 9, 8)),
        (RootConv2D, dict(filters=8, kernel_size=(3, 5), groups=2, combine=True,
                          spatial_filters=12, strides=2, activation="relu",
                          kernel_regularizer="l2", implementation="split"), (2, 9, 9, 8)),
        (RootConv3D, dict(filters=8, kernel_size=3, groups=4, padding="same",
                          implementation="grouped"), (1, 5, 6, 7, 8)),
    ],
)
def test_harness(cls, kwargs, shape, tmp_path):
    layer = run_layer_checks(cls, kwargs, shape, tmp_path)
    width = kwargs.get("spatial_filters", kwargs["filters"])
    k = kwargs["kernel_size"]
    volume = np.prod(k) if isinstance(k, tuple) else k ** (len(shape) - 2)
    expected = volume * shape[-1] // kwargs["groups"] * width + width
    if kwargs.get("combine"):
        expected += width * kwargs["filters"] + kwargs["filters"]
    assert layer.count_params() == expected


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(filters=30, kernel_size=3, groups=4), "filters=30 is not divisible by groups=4"),
        (dict(filters=8, kernel_size=3, groups=4, combine=True, spatial_filters=30),
         "spatial_filters=30 is not divisible by groups=4"),
        (dict(filters=8, kernel_size=3, groups=0), "groups must be a positive integer, received groups=0"),
        (dict(filters=8, kernel_size=0), "kernel_size entries must be positive integers"),
        (dict(filters=8, kernel_size=3, implementation="fast"),
         r"implementation must be one of \('auto', 'grouped', 'split'\), received implementation='fast'"),
        (dict(filters=8, kernel_size=3, spatial_filters=16),
         "spatial_filters=16 differs from filters=8 but combine=False"),
        (dict(filters=8, kernel_size=(3, 3, 3)), "kernel_size must be an int or a tuple of 2 ints"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RootConv2D(**kwargs)


def test_input_channels_not_divisible_at_build():
    layer = RootConv2D(8, 3, groups=4, name="root_a")
    with pytest.raises(ValueError, match="input channels=6 of layer 'root_a' are not divisible by groups=4"):
        layer.build((None, 8, 8, 6))


@pytest.mark.parametrize("kwargs", [dict(strides=2), dict(dilation_rate=2)])
def test_grouped_and_split_gradients_agree(kwargs, rng):
    """Training through the grouped path (TensorFlow's native grouped conv where the probe
    finds one) gives the split path's gradients."""
    import tensorflow as tf

    x = tf.constant(rng.normal(size=(2, 9, 9, 8)).astype("float32"))
    grads, weights = {}, None
    for impl in ("grouped", "split"):
        layer = RootConv2D(12, 3, groups=4, padding="same", implementation=impl, **kwargs)
        layer.build(x.shape)
        if weights is None:
            set_random_weights(layer)
            weights = layer.get_weights()
        layer.set_weights(weights)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(layer(x)))
        grads[impl] = [g.numpy() for g in tape.gradient(loss, [x, *layer.trainable_variables])]
    for g, s in zip(grads["grouped"], grads["split"]):
        np.testing.assert_allclose(g, s, rtol=1e-4, atol=1e-4)


def test_native_probe_matches_this_tensorflow():
    """The probe says what TensorFlow on this machine really does: TF 2.21 with oneDNN runs
    2D grouped convs natively on CPU and 3D ones not at all."""
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        assert not native_grouped_conv(2)
        return
    x, k = tf.zeros((1, 5, 5, 4)), tf.zeros((3, 3, 2, 4))
    try:
        tf.nn.convolution(x, k, padding="SAME")
        works = True
    except tf.errors.OpError:
        works = False
    assert native_grouped_conv(2) == works


def test_float64_falls_back_where_tensorflow_has_no_native_kernel(rng):
    """oneDNN has no float64 convs: a float64 root layer takes the portable path and still
    trains (the gradient of TensorFlow's own grouped conv would fail there)."""
    import tensorflow as tf

    layer = RootConv2D(8, 3, groups=4, padding="same", dtype="float64")
    x = tf.constant(rng.normal(size=(1, 6, 6, 8)))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x) ** 2)
    assert tape.gradient(loss, x).dtype == tf.float64
    if not native_grouped_conv(2, "float64"):
        assert layer.resolved_implementation == "split"
