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


def _model(groups):
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inputs)
    y = RootConv2D(16, 3, groups=groups, padding="same", name="root")(x)
    return keras.Model(inputs, y)


def test_root_layer_responses_are_block_diagonal(batches, tmp_path):
    keras.utils.set_random_seed(0)
    grouped = analysis.filter_covariance(_model(4), "stem", "root", batches,
                                         png=tmp_path / "cov.png")
    keras.utils.set_random_seed(0)
    plain = analysis.filter_covariance(_model(1), "stem", "root", batches, groups=4)
    assert grouped.groups == 4 and grouped.corr.shape == (16, 16)
    assert np.all(np.abs(grouped.corr) <= 1 + 1e-9)
    # outputs of group k depend only on input block k: the energy sits in the blocks
    assert grouped.score > plain.score + 0.1
    assert grouped.score > 0.4 > 0.25  # well above chance (1/4)
    assert (tmp_path / "cov.png").stat().st_size > 1000


def test_block_diagonality_score():
    eye = np.eye(8)
    assert analysis.block_diagonality(eye, 4) == 1.0
    assert analysis.block_diagonality(np.ones((8, 8)), 4) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="groups=3 must divide both dimensions"):
        analysis.block_diagonality(eye, 3)


def test_unknown_layer_is_named(batches):
    with pytest.raises(ValueError, match="has no layer 'conv9'"):
        analysis.filter_covariance(_model(2), "stem", "conv9", batches)


def test_plot_error_vs_cost(tmp_path):
    rows = [{"name": "a", "macs": 2e7, "params": 1e5, "error_mean": 10.0, "error_std": 0.3},
            {"name": "b", "macs": 1e7, "params": 5e4, "error_mean": 10.5, "error_std": 0.2}]
    analysis.plot_error_vs_cost(rows, tmp_path / "p.png", "params")
    assert (tmp_path / "p.png").stat().st_size > 1000
