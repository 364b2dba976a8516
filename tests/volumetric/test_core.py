"""Losses, metrics and sliding-window inference, checked against direct computations."""

import re

import keras
import numpy as np
import pytest

from keras_priors import zoo
from keras_priors.volumetric import inference, metrics
from keras_priors.volumetric.losses import DiceCELoss, soft_dice


def test_soft_dice_and_loss():
    y = np.zeros((2, 6, 6, 6, 3), "float32")
    y[:, 1:4, 1:4, 1:4] = 1
    np.testing.assert_allclose(keras.ops.convert_to_numpy(soft_dice(y, y)), 1.0, rtol=1e-5)
    half = y.copy()
    half[:, 1:4, 1:4, 1:2] = 0  # predicts 2/3 of each region
    expected = 2 * 18 / (27 + 18)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(soft_dice(y, half)), expected, rtol=1e-4)
    loss = DiceCELoss()
    assert float(loss(y, y * 0.98 + 0.01)) < float(loss(y, np.full_like(y, 0.5)))
    assert DiceCELoss.from_config(loss.get_config()).mode == "sigmoid"
    with pytest.raises(ValueError, match="mode must be 'sigmoid' or 'softmax'"):
        DiceCELoss(mode="relu")


def test_dice_and_hd95_against_hand_computed_values():
    a = np.zeros((20, 20, 20), bool)
    b = np.zeros((20, 20, 20), bool)
    a[5:10, 5:10, 5:10] = True
    b[7:12, 5:10, 5:10] = True  # shifted by 2 voxels along x
    assert metrics.dice(a, b) == pytest.approx(2 * 75 / 250)
    assert metrics.hd95(a, b) == pytest.approx(2.0)
    assert metrics.hd95(a, b, spacing=(2.0, 1.0, 1.0)) == pytest.approx(4.0)
    assert metrics.dice(a, a) == 1.0 and metrics.hd95(a, a) == 0.0
    empty = np.zeros_like(a)
    assert metrics.dice(empty, empty) == 1.0 and metrics.hd95(empty, empty) == 0.0
    assert metrics.dice(a, empty) == 0.0 and metrics.hd95(a, empty) == metrics.HD95_EMPTY
    scores = metrics.region_scores(np.stack([a, a], -1), np.stack([a, b], -1), ["WT", "TC"])
    assert scores["WT"]["dice"] == 1.0 and scores["TC"]["hd95"] == pytest.approx(2.0)


def test_sliding_window_equals_whole_volume_for_a_translation_equivariant_net():
    """A 1x1x1-conv network gives the same answer per voxel however it is windowed."""
    inputs = keras.Input((8, 8, 8, 2))
    model = keras.Model(inputs, keras.layers.Conv3D(3, 1, activation="sigmoid")(inputs))
    volume = np.random.default_rng(0).normal(size=(19, 13, 10, 2)).astype("float32")
    out = inference.sliding_window(volume, model, (8, 8, 8), overlap=0.5, batch_size=3)
    conv = model.layers[-1]
    direct = keras.ops.convert_to_numpy(conv(volume[None]))[0]
    np.testing.assert_allclose(out, direct, rtol=1e-5, atol=1e-6)


def test_windows_cover_and_small_volumes_pad():
    assert inference.window_starts(10, 4, 0.5) == [0, 2, 4, 6]
    assert inference.window_starts(11, 4, 0.5) == [0, 2, 4, 6, 7]
    assert inference.window_starts(3, 4, 0.5) == [0]
    calls = []
    out = inference.sliding_window(np.ones((3, 5, 2, 1)), lambda b: calls.append(b.shape) or b,
                                   (4, 4, 4))
    assert out.shape == (3, 5, 2, 1) and calls[0][1:] == (4, 4, 4, 1)
    w = inference.gaussian_importance((9, 9, 9))
    assert w[4, 4, 4] == 1.0 and w[0, 0, 0] < 0.01 and w.min() >= 1e-3
    with pytest.raises(ValueError, match=r"volume must be \(X, Y, Z, C\)"):
        inference.sliding_window(np.ones((4, 4, 4)), lambda b: b, (2, 2, 2))


def test_blend_modes_are_gaussian_or_constant():
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(12, 8, 8, 1)).astype("float32")
    offset = {"n": 0}

    def predict(batch):  # each window's output differs, so the weighting shows
        offset["n"] += 1
        return batch + np.arange(len(batch), dtype="float32")[:, None, None, None, None] + offset["n"]

    kwargs = dict(window=(8, 8, 8), overlap=0.5, batch_size=1)
    offset["n"] = 0
    constant = inference.sliding_window(volume, predict, blend="constant", **kwargs)
    # windows start at x = 0, 4; the middle slab x in [4, 8) is the plain mean of 1 and 2
    np.testing.assert_allclose(constant[4:8] - volume[4:8], 1.5, rtol=1e-6)
    offset["n"] = 0
    gaussian = inference.sliding_window(volume, predict, blend="gaussian", **kwargs)
    assert not np.allclose(gaussian[4:8] - volume[4:8], 1.5)
    np.testing.assert_allclose(gaussian[:4] - volume[:4], 1.0, rtol=1e-6)
    for bad in ("Gaussian", "linear", None):
        with pytest.raises(ValueError, match=re.escape(
                f"blend must be one of ('gaussian', 'constant'), received blend={bad!r}")):
            inference.sliding_window(volume, predict, blend=bad, **kwargs)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, received batch_size=0"):
        inference.sliding_window(volume, predict, (8, 8, 8), batch_size=0)
    with pytest.raises(ValueError, match="sigma_scale must be positive, received sigma_scale=0"):
        inference.sliding_window(volume, predict, (8, 8, 8), sigma_scale=0)


@pytest.mark.parametrize("name", ["unet3d", "unet3d_lowrank", "unet3d_root"])
def test_unet3d_family(name):
    model = zoo.load(name, input_shape=(16, 16, 16, 4), widths=(8, 16))
    assert model.output_shape == (None, 16, 16, 16, 3)
    assert model.layers[-1].activation.__name__ == "sigmoid"
    with pytest.raises(ValueError, match="spatial sizes must be divisible by 8"):
        zoo.load(name, input_shape=(20, 16, 16, 4))


def test_lowrank_unet_costs_less_than_a_third():
    full = zoo.info("unet3d")["build"]["macs"]
    lowrank = zoo.info("unet3d_lowrank")["build"]["macs"]
    assert lowrank < full / 3
