"""The shipped Fashion-MNIST weights reproduce their model cards on the real test set."""

import json
from pathlib import Path

import pytest

from keras_priors import training, zoo

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "keras_priors" / "zoo" / "weights"
TAGS = ("fashion_mnist", "fashion_mnist_wide")  # NiN width 1/3 (all models), 2/3 (nin, nin_root8)
ENTRIES = {(tag, model): entry for tag in TAGS
           for model, entry in json.loads((WEIGHTS / tag / "manifest.json").read_text()).items()}


def test_the_study_models_are_shipped():
    for tag in TAGS:
        assert {(tag, "nin"), (tag, "nin_root8")} <= set(ENTRIES)
    assert "nin_root8" in zoo.list_models(pretrained=True)


def test_wide_root_model_is_within_a_point_of_its_baseline():
    nin, root8 = ENTRIES["fashion_mnist_wide", "nin"], ENTRIES["fashion_mnist_wide", "nin_root8"]
    assert nin["recipe"]["width"] == root8["recipe"]["width"] > 0.5
    assert root8["accuracy"] >= 0.90 and nin["accuracy"] - root8["accuracy"] <= 0.01


@pytest.mark.parametrize("tag, name", sorted(ENTRIES))
def test_card_accuracy_is_reproduced(tag, name):
    entry = ENTRIES[tag, name]
    card = (ROOT / entry["card"]).read_text()
    assert entry["sha256"] in card and f"{100 * entry['accuracy']:.2f}%" in card
    assert f'weight tag "{tag}"' in card
    result = training.evaluate(name, tag, "fashion_mnist")
    assert result["test_examples"] == 10000
    assert abs(result["accuracy"] - entry["accuracy"]) <= 0.001  # within 0.1 points
    assert result["macs"] == entry["macs"] and result["params"] == entry["params"]


def test_fashion_weights_refuse_another_width():
    with pytest.raises(ValueError, match="are for width=0.333"):
        zoo.load("nin_root8", weights="fashion_mnist", width=0.5)
    with pytest.raises(ValueError, match="are for width=0.666"):
        zoo.load("nin_root8", weights="fashion_mnist_wide", width=1 / 3)
