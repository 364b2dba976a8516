"""The shipped synthetic_brats weights segment a synthetic case they never saw, out of the
box, through `keras-priors seg predict --model unet3d_lowrank --weights synthetic_brats`."""

import json

import nibabel as nib
import numpy as np

from keras_priors import cli, zoo
from keras_priors.volumetric import synthetic


def test_shipped_lowrank_model_segments_a_new_case(tmp_path, capsys):
    data = tmp_path / "brats"
    synthetic.write_cases(data, n=2, seed=321, downsample=2)  # one case on each brain
    case = data / "BraTS2021_00000"
    preds = tmp_path / "preds"
    assert cli.main(["seg", "predict", "--model", "unet3d_lowrank", "--weights",
                     "synthetic_brats", "--input", str(case), "--out", str(preds)]) == 0
    written = preds / "BraTS2021_00000_seg.nii.gz"
    assert nib.load(written).shape == nib.load(case / "BraTS2021_00000_seg.nii.gz").shape
    capsys.readouterr()
    assert cli.main(["seg", "evaluate", "--pred", str(preds), "--data", str(data),
                     "--json", "-"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["cases"] == 1  # only the case that was predicted is scored
    assert min(scores["dice"].values()) > 0.9, scores["dice"]  # its card: held-out 0.97 / 0.96 / 0.98


def test_shipped_seg_weights_are_registered_with_their_card():
    info = zoo.info("unet3d_lowrank")
    text = json.dumps(info, default=str)
    assert "synthetic_brats" in text
    entry = zoo.registry.get("unet3d_lowrank").weights["synthetic_brats"]
    assert entry.extra["regions"] == ["WT", "TC", "ET"] and entry.build_kwargs["widths"] == (16, 32, 64)
    assert entry.card.endswith("unet3d_lowrank_synthetic_brats.md")
    assert np.prod(entry.input_shape) == 48 ** 3 * 4


def test_shipped_model_holds_its_cards_out_of_distribution_figures(tmp_path):
    """Fresh cases from the card's out-of-distribution setting (seeds the card's set never
    used) score within the card's mean Dice, give or take three standard errors of the
    card's per-case spread for this test's case count, plus 0.05."""
    from keras_priors import volumetric as seg
    from keras_priors.volumetric.evaluation import evaluate_cases
    from keras_priors.zoo.catalog import WEIGHTS_DIR

    entry = json.loads((WEIGHTS_DIR / "synthetic_brats" / "manifest.json").read_text())
    gen = entry["unet3d_lowrank"]["generalisation"]
    card, setting = gen["sets"]["ood"], dict(gen["settings"]["ood"])
    setting["seed"] += 777  # fresh cases, same generator settings
    n = 3
    synthetic.write_cases(tmp_path / "ood", n=n, downsample=2, **setting)
    model = seg.model_for_inference("unet3d_lowrank", "synthetic_brats")
    got = evaluate_cases(model, seg.discover(tmp_path / "ood"))
    assert len(got["per_case"]) == n
    for region, mean in card["dice"].items():
        margin = 3 * card["dice_std"][region] / np.sqrt(n) + 0.05
        assert abs(got["dice"][region] - mean) <= margin, (region, got["dice"], card["dice"])
