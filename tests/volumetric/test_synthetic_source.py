"""Training on cases generated on the fly (generator v2): no files written, deterministic per
(seed, epoch), exact resume, a held-out set on another random stream or brain."""

import json

import numpy as np
import pytest

from keras_priors import cli
from keras_priors import volumetric as seg
from keras_priors.volumetric import pipeline
from keras_priors.volumetric.synthetic import SyntheticSource

SMALL = dict(cases=2, seed=3, downsample=4)


def _patches(source, epoch):
    return list(pipeline.epoch_patches(source, (16, 16, 16), seed=3, epoch=epoch, per_case=2))


def test_epochs_draw_fresh_cases_deterministically():
    a, b = SyntheticSource(**SMALL), SyntheticSource(**SMALL)  # separate caches
    e0, again, e1 = _patches(a, 0), _patches(b, 0), _patches(a, 1)
    assert not np.array_equal(e0[0][0], e1[0][0])
    assert len(e0) == 4 and e0[0][0].shape == (16, 16, 16, 4) and e0[0][1].shape == (16, 16, 16, 3)
    for (x, y), (x2, y2) in zip(e0, again):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
    case = a.case_ids[0]
    assert not np.array_equal(a.for_epoch(0).targets(case), a.for_epoch(1).targets(case))
    held = SyntheticSource(**SMALL, epoch=None)
    assert held.for_epoch(5) is held  # the held-out cases never change
    assert not np.array_equal(held.targets(case), a.for_epoch(0).targets(case))


def test_source_looks_like_a_prepared_brats_case():
    src = SyntheticSource(cases=1, seed=0, downsample=4, anatomies=("colin27",))
    case = src.case_ids[0]
    x, y = src.images(case), src.targets(case)
    brain = x[..., 0] != 0
    assert abs(x[..., 0][brain].mean()) < 1e-3 and abs(x[..., 0][brain].std() - 1) < 1e-2
    assert y.dtype == np.uint8 and y.shape[-1] == 3 and list(src.regions) == ["WT", "TC", "ET"]
    assert (y[..., 2] <= y[..., 1]).all() and (y[..., 1] <= y[..., 0]).all()  # ET in TC in WT
    fg = src.foreground_samples(case)
    assert len(fg) == 3 and len(fg[0]) == int(y[..., 0].sum())
    assert src.spacing(case) == (4.0, 4.0, 4.0)
    with pytest.raises(KeyError, match="is not one of this source's 1 cases"):
        src.images("BraTS2021_00000")
    with pytest.raises(ValueError, match="anatomies must be"):
        SyntheticSource(anatomies=("macaque",))


class Interrupted(Exception):
    pass


def test_train_on_the_fly_resumes_exactly(tmp_path, monkeypatch):
    from keras_priors import runs

    args = ["seg", "train", "--data", "synthetic", "--synth-cases", "2", "--synth-val-cases",
            "1", "--synth-downsample", "4", "--synth-val-brains", "colin27", "--synth-brains",
            "mni152", "--epochs", "2", "--batch-size", "2", "--steps-per-epoch", "2",
            "--patch", "16", "16", "16", "--widths", "8", "16", "--quiet"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert cli.main([*args, "--out", str(whole)]) == 0
    commit = runs.RunKeeper.on_epoch_end

    def crash_after_the_first_epoch(self, epoch, logs=None):
        commit(self, epoch, logs)
        raise Interrupted  # the process dies right after epoch 1 is committed

    monkeypatch.setattr(runs.RunKeeper, "on_epoch_end", crash_after_the_first_epoch)
    with pytest.raises(Interrupted):
        cli.main([*args, "--out", str(part)])
    monkeypatch.setattr(runs.RunKeeper, "on_epoch_end", commit)
    assert json.loads((part / "state.json").read_text())["epoch"] == 1
    assert cli.main([*args, "--out", str(part), "--resume"]) == 0
    a, b = (seg.model_for_inference(r).get_weights() for r in (whole, part))
    for wa, wb in zip(a, b):  # the resumed run generated the same epoch-2 cases
        np.testing.assert_array_equal(wa, wb)
    split = json.loads((whole / "split.json").read_text())
    assert split["prepared"].startswith("synthetic generator v2, ranges train, per-epoch")
    assert "held-out cases x1" in split["held_out"] and "colin27" in split["held_out"]
    result = json.loads((whole / "result.json").read_text())
    assert result["val_cases"] == ["synthetic_00000"] and set(result["dice"]) == {"WT", "TC", "ET"}
    assert not list(whole.rglob("*.nii.gz"))  # no case was written
