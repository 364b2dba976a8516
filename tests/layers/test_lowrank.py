"""LowRankConv2D / LowRankConv3D against plain Keras convs with the embedded kernel."""

import keras
import numpy as np
import pytest

from keras_priors.layers import PRESETS, CompositeHeNormal, LowRankConv2D, LowRankConv3D

from .harness import (
    composed_kernel,
    embedded_kernel,
    reference_combine,
    reference_conv,
    run_layer_checks,
    set_random_weights,
)

LAYERS = {2: LowRankConv2D, 3: LowRankConv3D}
SPATIAL = {2: (9, 10), 3: (5, 6, 7)}
PARALLEL = [(r, name) for r in (2, 3) for name, p in PRESETS[r].items() if not p.sequential]
SEQUENTIAL = [(r, name) for r in (2, 3) for name, p in PRESETS[r].items() if p.sequential]


def _check_parallel(layer, x, activation=None):
    set_random_weights(layer, x.shape)
    y = keras.ops.convert_to_numpy(layer(x))
    kernel, bias = embedded_kernel(layer, x.shape[-1])
    ref = reference_conv(x, kernel, bias, layer.strides, layer.padding, layer.dilation_rate)
    if layer.combine:
        ref = reference_combine(ref, layer)
    if activation is not None:
        ref = keras.ops.convert_to_numpy(keras.activations.get(activation)(ref))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rank,basis", PARALLEL)
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("strides", [1, 2])
def test_parallel_presets_equal_embedded_full_conv(rank, basis, padding, strides, rng):
    x = rng.normal(size=(2, *SPATIAL[rank], 5)).astype("float32")
    layer = LAYERS[rank](12, 3, basis=basis, padding=padding, strides=strides)
    _check_parallel(layer, x)


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_dilated_and_kernel5_equal_embedded_full_conv(rank, padding, rng):
    x = rng.normal(size=(1, *(s + 6 for s in SPATIAL[rank]), 3)).astype("float32")
    _check_parallel(LAYERS[rank](12, 3, basis="lr_join_wfull", padding=padding, dilation_rate=2), x)
    _check_parallel(LAYERS[rank](12, 5, basis="lr_join", padding=padding, strides=2), x)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("strides", [1, 2, (1, 2)])
def test_explicit_mixed_basis_equals_embedded_full_conv(padding, strides, rng):
    x = rng.normal(size=(2, 11, 8, 4)).astype("float32")
    layer = LowRankConv2D(
        10, basis=[("5x1", 4), ((1, 3), 3), ("3x3", 3)], padding=padding, strides=strides
    )
    assert layer.bounding_kernel_size == (5, 3)
    _check_parallel(layer, x)


def test_explicit_3d_basis_with_planar_and_full_members(rng):
    x = rng.normal(size=(1, 6, 7, 8, 3)).astype("float32")
    basis = [("3x1x1", 2), ("1x3x1", 2), ("1x1x3", 2), ("1x3x3", 2), ("3x3x3", 2)]
    _check_parallel(LowRankConv3D(8, basis=basis, combine=True, padding="same", strides=2), x)


def test_activation_only_after_the_whole_composite(rng):
    x = rng.normal(size=(2, 7, 7, 4)).astype("float32")
    layer = LowRankConv2D(8, 3, basis="lr_join", padding="same", activation="relu")
    _check_parallel(layer, x, activation="relu")


@pytest.mark.parametrize("rank,basis", SEQUENTIAL)
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("strides", [1, 2])
def test_sequential_separable_equals_composed_full_conv(rank, basis, padding, strides, rng):
    x = rng.normal(size=(2, *SPATIAL[rank], 4)).astype("float32")
    layer = LAYERS[rank](6, 3, basis=basis, padding=padding, strides=strides, use_bias=False)
    set_random_weights(layer, x.shape, scale=0.5)  # three stages of products: keep f32 tame
    y = keras.ops.convert_to_numpy(layer(x))
    kernel = composed_kernel(layer)
    assert kernel.shape[:rank] == (3,) * rank
    ref = reference_conv(x, kernel, None, layer.strides, padding, 1)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "rank,basis,filters,expected",
    [
        (2, "lr", 64, [((3, 1), 32), ((1, 3), 32)]),
        (2, "lr_lde", 32, [((3, 1), 64), ((1, 3), 64)]),
        (2, "lr_join_wfull", 64, [((3, 1), 24), ((1, 3), 24), ((3, 3), 16)]),
        (2, "sf", 64, [((1, 3), 64), ((3, 1), 64)]),
        (3, "lr", 32, [((3, 1, 1), 11), ((1, 3, 1), 11), ((1, 1, 3), 10)]),
        (3, "lr_planar_join", 30, [((1, 3, 3), 10), ((3, 1, 3), 10), ((3, 3, 1), 10)]),
    ],
)
def test_preset_members(rank, basis, filters, expected):
    assert list(LAYERS[rank](filters, 3, basis=basis).members) == expected


def test_vgg_variant_parameter_counts():
    """The paper's per-layer counts for a conv with c_in=256, c=512 (biases included)."""
    cin, c = 256, 512
    cases = {
        "lr": 3 * cin * c + c,
        "lr_join": 3 * cin * c + c + c * c + c,
        "lr_lde": 3 * cin * 2 * c * 2 + 4 * c + 4 * c * c + c,  # basis 2c || 2c -> 1x1 c
        "lr_join_wfull": 2 * (3 * cin * 3 * c // 8) + 9 * cin * c // 4 + c + c * c + c,
        "sf": 3 * cin * c + c + 3 * c * c + c,
    }
    for basis, params in cases.items():
        layer = LowRankConv2D(c, 3, basis=basis, padding="same")
        layer.build((None, 14, 14, cin))
        assert layer.count_params() == params, basis


def test_composite_he_init_std():
    layer = LowRankConv2D(256, 3, basis="lr_join_wfull")
    layer.build((None, 8, 8, 128))
    fan = 3 * 96 + 3 * 96 + 9 * 64
    kernels = np.concatenate(
        [keras.ops.convert_to_numpy(k).ravel() for k in layer.basis_kernels]
    )
    assert abs(kernels.std() / np.sqrt(2 / fan) - 1) < 0.03
    assert abs(kernels.mean()) < 0.01
    combine = keras.ops.convert_to_numpy(layer.combine_kernel)
    assert abs(combine.std() / np.sqrt(2 / 256) - 1) < 0.03
    assert CompositeHeNormal.from_config(CompositeHeNormal(10, seed=3).get_config()).fan == 10


def test_user_initializer_is_used():
    layer = LowRankConv2D(8, 3, kernel_initializer="zeros")
    layer.build((None, 5, 5, 2))
    assert all(not np.any(keras.ops.convert_to_numpy(k)) for k in layer.basis_kernels)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(filters=16, kernel_size=3, basis="lr_join", padding="same", activation="relu"),
        dict(filters=16, kernel_size=3, basis="lr_join_wfull", strides=2, padding="same",
             kernel_regularizer="l2", bias_constraint="non_neg"),
        dict(filters=9, basis=[("5x1", 3), ("1x5", 3), ("3x3", 3)], padding="valid"),
        dict(filters=8, kernel_size=3, basis="sf", use_bias=False, dilation_rate=2),
    ],
)
def test_harness_2d(kwargs, tmp_path):
    run_layer_checks(LowRankConv2D, kwargs, (2, 11, 12, 4), tmp_path)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(filters=12, kernel_size=3, basis="lr_join", padding="same"),
        dict(filters=6, basis=[("3x1x1", 2), ("1x3x1", 2), ("1x1x3", 2)], strides=2,
             padding="same", activation="relu"),
        dict(filters=6, kernel_size=3, basis="sf", padding="valid"),
    ],
)
def test_harness_3d(kwargs, tmp_path):
    run_layer_checks(LowRankConv3D, kwargs, (1, 6, 7, 8, 3), tmp_path)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(filters=0), "filters must be a positive integer, received filters=0"),
        (dict(filters=16, kernel_size=-3), "kernel_size must be a positive integer, received kernel_size=-3"),
        (dict(filters=16, basis="lr_jion"), "Unknown basis preset basis='lr_jion' for a 2D low-rank layer; did you mean 'lr_join'"),
        (dict(filters=16, basis="lr_planar_join"), "basis='lr_planar_join' is a 3D-only preset; a 2D low-rank layer has lr, lr_join, lr_join_wfull, lr_lde, sf$"),
        (dict(filters=16, basis="lr_lde", combine=False), r"basis='lr_lde' with combine=False would produce 64 channels, not filters=16; leave combine unset \(this preset ends with a 1x1 combination\)$"),
        (dict(filters=16, basis=[("3x1", 8), ("1x3", 4)]), "basis counts add up to 12 channels but filters=16"),
        (dict(filters=16, basis=[("3x1", 8), ("1x3", 0)]), "basis member filters must be a positive integer, received 0"),
        (dict(filters=16, basis=[("3x1x1", 16)]), "basis member shape must be 2 positive ints"),
        (dict(filters=16, basis=[("3x1", 16)], kernel_size=5), "kernel_size=5 does not match the explicit basis"),
        (dict(filters=16, strides=0), r"strides entries must be positive integers, received strides=\(0, 0\)"),
        (dict(filters=16, padding="causal"), "padding must be 'valid' or 'same', received padding='causal'"),
        (dict(filters=16, strides=2, dilation_rate=2), "strides > 1 cannot be combined with dilation_rate > 1"),
        (dict(filters=1, basis="lr_join_wfull"), "filters=1 is too small for basis='lr_join_wfull'"),
        (dict(filters=16, basis=[]), r"basis must have at least one member, received basis=\[\]"),
        (dict(filters=16, basis="lr", combine="yes"), "combine must be True or False, received combine='yes'"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LowRankConv2D(**kwargs)


def test_valid_padding_input_too_small():
    layer = LowRankConv2D(4, 5, basis="lr")
    with pytest.raises(ValueError, match="smaller than the kernel extent"):
        layer.compute_output_shape((1, 3, 9, 2))


@pytest.mark.parametrize("rank,basis,activation,recompute", [
    (2, "lr_join", "relu", True), (3, "lr_join", "relu", True), (2, "lr_lde", "relu", True),
    (3, "lr_join_wfull", "relu", True), (3, "lr_join", None, True), (2, "lr", None, True),
    (3, "sf", None, True), (3, "lr_join", "relu", "per_sample"), (2, "lr", None, "per_sample")])
def test_recompute_gives_the_same_outputs_and_gradients(rank, basis, activation, recompute):
    """The memory-lean training path (only the input kept, member convs recomputed in the
    backward pass one member at a time where they add up through the 1x1 combination, and
    with "per_sample" one sample at a time) equals the plain one, eagerly and inside a
    tf.function, with bias and activation."""
    import tensorflow as tf

    from keras_priors.layers import LowRankConv2D, LowRankConv3D

    cls = LowRankConv2D if rank == 2 else LowRankConv3D
    shape = (2, 9, 8, 5)[: rank + 1] + (3,) if rank == 2 else (2, 7, 6, 5, 3)
    x = tf.constant(np.random.default_rng(0).normal(size=shape), tf.float32)
    lean = cls(6, 3, basis=basis, padding="same", strides=1, activation=activation,
               recompute=recompute)
    plain = cls(6, 3, basis=basis, padding="same", strides=1, activation=activation,
                recompute=False)
    lean.build(x.shape)
    plain.build(x.shape)
    plain.set_weights(lean.get_weights())
    probe = tf.constant(np.random.default_rng(1).normal(size=lean(x).shape), tf.float32)

    def grads(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * probe)
        return [y, *tape.gradient(loss, [x, *layer.trainable_variables])]

    for run in (grads, tf.function(grads)):
        for a, b in zip(run(lean), run(plain)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_recompute_is_in_the_config_and_checked():
    from keras_priors.layers import LowRankConv2D

    layer = LowRankConv2D(8, 3, basis="lr_join", recompute=True)
    assert layer.get_config()["recompute"] is True
    assert LowRankConv2D.from_config(layer.get_config()).recompute is True
    assert LowRankConv2D(8, 3, basis="lr_join").recompute is False  # the default
    assert LowRankConv2D.from_config(
        LowRankConv2D(8, 3, recompute="per_sample").get_config()).recompute == "per_sample"
    with pytest.raises(ValueError, match="recompute must be True, False or 'per_sample', "
                                         "received recompute='yes'"):
        LowRankConv2D(8, 3, recompute="yes")
