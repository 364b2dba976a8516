"""The shipped Fashion-MNIST weights reproduce their model cards on the real test set."""

import json
from pathlib import Path

import pytest

from keras_priors import training, zoo

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "keras_priors" / "zoo" / "weights" / "fashion_mnist" / "manifest.json"
ENTRIES = json.loads(MANIFEST.read_text())


def test_the_study_models_are_shipped():
    assert {"nin", "nin_root8"} <= set(ENTRIES)
    assert "nin_root8" in zoo.list_models(pretrained=True)


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_card_accuracy_is_reproduced(name):
    entry = ENTRIES[name]
    card = (ROOT / entry["card"]).read_text()
    assert entry["sha256"] in card and f"{100 * entry['accuracy']:.2f}%" in card
    result = training.evaluate(name, "fashion_mnist", "fashion_mnist")
    assert result["test_examples"] == 10000
    assert abs(result["accuracy"] - entry["accuracy"]) <= 0.001  # within 0.1 points
    assert result["macs"] == entry["macs"] and result["params"] == entry["params"]


def test_fashion_weights_refuse_another_width():
    with pytest.raises(ValueError, match="are for width=0.333"):
        zoo.load("nin_root8", weights="fashion_mnist", width=0.5)
