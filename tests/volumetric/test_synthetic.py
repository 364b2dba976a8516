"""Synthetic lesions painted on the real Colin27 and MNI152 brains, written as BraTS 2021."""

import re

import numpy as np
import pytest

from keras_priors import volumetric
from keras_priors.volumetric import synthetic


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_brats")
    synthetic.write_cases(root, n=4, seed=0, downsample=3)
    return root, volumetric.discover(root)


def test_written_as_real_brats2021_cases(cases):
    root, found = cases
    assert volumetric.detect(root) == "brats2021" and len(found) == 4
    assert all((root / c.case_id / "SYNTHETIC.txt").exists() for c in found)
    shapes = set()
    for case in found:
        images, label, ref = volumetric.load_case(case)
        assert images.shape[-1] == 4 and set(np.unique(label)) <= {0, 1, 2, 4}
        assert {1, 2, 4} <= set(np.unique(label))
        shapes.add(images.shape[:3])
    assert len(shapes) == 2  # both anatomies are used (Colin27 and MNI152 grids differ)


def test_modality_contrasts(cases):
    _, found = cases
    images, label, _ = volumetric.load_case(found[0])
    flair, t1, t1ce, t2 = (images[..., i] for i in range(4))
    brain = (images.sum(-1) > 0) & (label == 0)
    oedema, enhancing, necrotic = label == 2, label == 4, label == 1
    assert flair[oedema].mean() > 1.5 * flair[brain].mean()
    assert t1ce[enhancing].mean() > 1.3 * t1ce[oedema].mean()
    assert t1ce[enhancing].mean() > 1.3 * t1[enhancing].mean()
    assert t2[necrotic].mean() > t2[brain].mean() and t1[necrotic].mean() < t1[brain].mean()


def test_cases_differ_and_are_never_overwritten(cases):
    root, found = cases
    a = volumetric.load_case(found[0])[1]
    c = volumetric.load_case(found[2])[1]
    assert a.shape == c.shape and not np.array_equal(a, c)
    with pytest.raises(FileExistsError, match="BraTS2021_00000 exists"):
        synthetic.write_cases(root, n=1, seed=1, downsample=3)


def test_unknown_anatomy():
    with pytest.raises(ValueError, match="anatomy must be one of"):
        synthetic.load_anatomy("macaque")


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 0}, "n must be a positive integer, received n=0"),
    ({"n": -1}, "n must be a positive integer, received n=-1"),
    ({"downsample": 0}, "downsample must be a positive integer, received downsample=0"),
    ({"seed": -2}, "seed must be an integer >= 0, received seed=-2"),
    ({"anatomies": ("macaque",)}, "anatomies must be a non-empty selection of"),
])
def test_bad_arguments_are_refused_before_writing(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        synthetic.write_cases(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_other_files_and_taken_cases_are_refused_before_writing(tmp_path):
    small = dict(n=1, downsample=4, anatomies=("colin27",))
    data = tmp_path / "data"
    data.mkdir()
    (data / "real_case").mkdir()
    with pytest.raises(FileExistsError, match=re.escape(
            f"{data} holds files that are not synthetic cases (real_case); synthetic cases go")):
        synthetic.write_cases(data, **small)
    assert sorted(p.name for p in data.iterdir()) == ["real_case"]
    synthetic.write_cases(data, allow_other_files=True, **small)
    assert (data / "BraTS2021_00000" / "SYNTHETIC.txt").is_file()

    synth = tmp_path / "synth"
    synthetic.write_cases(synth, start=1, **small)
    with pytest.raises(FileExistsError, match=re.escape(
            f"{synth / 'BraTS2021_00001'} exists; synthetic cases never overwrite data")):
        synthetic.write_cases(synth, n=2, downsample=4, anatomies=("colin27",))
    assert not (synth / "BraTS2021_00000").exists()  # checked before the first case
    synthetic.write_cases(synth, start=2, **small)  # a folder of synthetic cases takes more
    assert len(volumetric.discover(synth)) == 2


@pytest.mark.parametrize("flag, value, kind", [("--downsample", "0", "a positive integer"),
                                               ("--cases", "-1", "a positive integer"),
                                               ("--seed", "-1", "an integer >= 0")])
def test_synth_command_refuses_bad_numbers(capsys, tmp_path, flag, value, kind):
    from keras_priors import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["seg", "synth", str(tmp_path / "out"), flag, value])
    assert e.value.code == 2
    assert capsys.readouterr().err == (f"keras-priors seg synth: error: argument {flag}: expected "
                                       f"{kind}, received '{value}' (see keras-priors seg synth -h)\n")
    assert not (tmp_path / "out").exists()
