"""Filter covariance and block-diagonality on real Fashion-MNIST responses."""

import keras
import numpy as np
import pytest

from keras_priors import analysis, data
from keras_priors.layers import RootConv2D


@pytest.fixture(scope="module")
def batches():
    fm = data.load("fashion_mnist", limit_train=1, limit_test=512)
    return data.eval_batches(fm, 128)


def _model(groups, channels=16):
    inputs = keras.Input((8, 8, channels))
    x = keras.layers.Identity(name="probe")(inputs)
    y = RootConv2D(16, 1, groups=groups, name="root")(x)
    return keras.Model(inputs, y)


def test_root_layer_responses_are_block_diagonal(tmp_path):
    """With independent input channels (synthetic noise, named as such), a root layer's
    outputs correlate only with their own group's inputs."""
    noise = [np.random.default_rng(i).normal(size=(64, 8, 8, 16)).astype("float32")
             for i in range(4)]
    keras.utils.set_random_seed(0)
    grouped = analysis.filter_covariance(_model(4), "probe", "root", noise,
                                         png=tmp_path / "cov.png")
    keras.utils.set_random_seed(0)
    plain = analysis.filter_covariance(_model(1), "probe", "root", noise, groups=4)
    assert grouped.groups == 4 and grouped.corr.shape == (16, 16)
    assert np.all(np.abs(grouped.corr) <= 1 + 1e-9)
    assert grouped.score > 0.99  # exactly block-diagonal up to sampling noise
    assert 0.15 < plain.score < 0.4  # about chance (1/4) without groups
    assert (tmp_path / "cov.png").stat().st_size > 1000


def test_real_responses_to_fashion_mnist(batches):
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inputs)
    model = keras.Model(inputs, RootConv2D(16, 3, groups=4, padding="same", name="root")(x))
    result = analysis.filter_covariance(model, "stem", "root", batches)
    assert result.corr.shape == (16, 16) and 0 < result.score <= 1


def test_block_diagonality_score():
    eye = np.eye(8)
    assert analysis.block_diagonality(eye, 4) == 1.0
    assert analysis.block_diagonality(np.ones((8, 8)), 4) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="groups=3 must divide both dimensions"):
        analysis.block_diagonality(eye, 3)


def test_unknown_layer_is_named(batches):
    with pytest.raises(ValueError, match="has no layer 'conv9'"):
        analysis.filter_covariance(_model(2), "probe", "conv9", batches)


def test_plot_error_vs_cost(tmp_path):
    rows = [{"name": "a", "macs": 2e7, "params": 1e5, "error_mean": 10.0, "error_std": 0.3},
            {"name": "b", "macs": 1e7, "params": 5e4, "error_mean": 10.5, "error_std": 0.2}]
    analysis.plot_error_vs_cost(rows, tmp_path / "p.png", "params")
    assert (tmp_path / "p.png").stat().st_size > 1000
