"""Synthetic lesions painted on the real Colin27 and MNI152 brains, written as BraTS 2021."""

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
