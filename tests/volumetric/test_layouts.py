"""Case layouts (BraTS 2021 / 2023, MSD, manifests) on small crops of the real Colin27
brain; the lesion labels painted here are synthetic (no tumour data exists offline)."""

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from keras_priors import volumetric
from keras_priors.volumetric import from_regions, load_case, to_regions

COLIN = Path("/usr/share/mricron/templates/ch2.nii.gz")


@pytest.fixture(scope="module")
def brain():
    img = nib.load(COLIN)
    data = np.asarray(img.dataobj, np.float32)[60:92, 80:112, 70:86]
    affine = img.affine.copy()
    return data, affine


def _label(shape, values):
    lab = np.zeros(shape, np.uint8)
    lab[8:24, 8:24, 4:12] = values[0]  # oedema
    lab[12:20, 12:20, 6:10] = values[1]  # necrotic core
    lab[14:18, 14:18, 7:9] = values[2]  # enhancing
    return lab


def _write(path, data, affine):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)


def _brats(root, brain, names, sep, mods, values):
    data, affine = brain
    for name in names:
        for i, m in enumerate(mods):
            _write(root / name / f"{name}{sep}{m}.nii.gz", data * (1 + 0.1 * i), affine)
        _write(root / name / f"{name}{sep}seg.nii.gz", _label(data.shape, values), affine)


def test_brats2021(tmp_path, brain):
    _brats(tmp_path, brain, ["BraTS2021_00000", "BraTS2021_00002"], "_",
           ("flair", "t1", "t1ce", "t2"), (2, 1, 4))
    assert volumetric.detect(tmp_path) == "brats2021"
    cases = volumetric.discover(tmp_path, layout="brats")
    assert [c.case_id for c in cases] == ["BraTS2021_00000", "BraTS2021_00002"]
    images, label, ref = load_case(cases[0])
    assert images.shape == (32, 32, 16, 4) and set(np.unique(label)) == {0, 1, 2, 4}
    masks = to_regions(label, cases[0].regions)
    assert masks.shape[-1] == 3 and masks[..., 0].sum() > masks[..., 1].sum() > masks[..., 2].sum()
    np.testing.assert_array_equal(from_regions(masks, cases[0].regions, "brats2021"), label)


def test_brats2023(tmp_path, brain):
    _brats(tmp_path, brain, ["BraTS-GLI-00001-000"], "-", ("t1n", "t1c", "t2w", "t2f"), (2, 1, 3))
    cases = volumetric.discover(tmp_path)
    assert cases[0].layout == "brats2023" and cases[0].modalities == ("t1n", "t1c", "t2w", "t2f")
    _, label, _ = load_case(cases[0])
    masks = to_regions(label, cases[0].regions)
    np.testing.assert_array_equal(from_regions(masks, cases[0].regions, "brats2023"), label)


def test_missing_modality_and_label_are_named(tmp_path, brain):
    _brats(tmp_path, brain, ["BraTS2021_00003"], "_", ("flair", "t1", "t2"), (2, 1, 4))
    with pytest.raises(FileNotFoundError, match="BraTS2021_00003_t1ce.nii.gz"):
        volumetric.discover(tmp_path)


def test_mismatched_grid_inside_a_case(tmp_path, brain):
    data, affine = brain
    _brats(tmp_path, brain, ["BraTS2021_00004"], "_", ("flair", "t1", "t1ce", "t2"), (2, 1, 4))
    _write(tmp_path / "BraTS2021_00004" / "BraTS2021_00004_t2.nii.gz", data[:, :, :8], affine)
    case = volumetric.discover(tmp_path)[0]
    with pytest.raises(volumetric.NiftiError, match="BraTS2021_00004_t2.nii.gz has shape"):
        load_case(case)


def test_msd_layout_with_4d_images(tmp_path, brain):
    data, affine = brain
    four = np.stack([data, data * 2, data * 3, data * 4], axis=-1)
    _write(tmp_path / "imagesTr" / "BRATS_001.nii.gz", four, affine)
    _write(tmp_path / "labelsTr" / "BRATS_001.nii.gz", _label(data.shape, (1, 2, 3)), affine)
    meta = {"name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
            "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor",
                       "3": "enhancing tumour"},
            "training": [{"image": "./imagesTr/BRATS_001.nii.gz",
                          "label": "./labelsTr/BRATS_001.nii.gz"}]}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    cases = volumetric.discover(tmp_path, layout="msd")
    images, label, _ = load_case(cases[0])
    assert images.shape == (32, 32, 16, 4)
    np.testing.assert_allclose(images[..., 3], 4 * images[..., 0], rtol=1e-5)
    assert cases[0].regions == volumetric.REGIONS["msd_brats"]


def test_manifests_json_and_csv(tmp_path, brain):
    data, affine = brain
    _write(tmp_path / "a" / "t1.nii.gz", data, affine)
    _write(tmp_path / "a" / "mask.nii.gz", (data > 50).astype(np.uint8), affine)
    (tmp_path / "m.json").write_text(json.dumps(
        [{"id": "a", "images": {"t1": "a/t1.nii.gz"}, "label": "a/mask.nii.gz"}]))
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "t1", "label"])
        w.writerow(["a", "a/t1.nii.gz", "a/mask.nii.gz"])
    for name in ("m.json", "m.csv"):
        cases = volumetric.discover(tmp_path / name)
        images, label, _ = load_case(cases[0])
        assert cases[0].case_id == "a" and images.shape == (32, 32, 16, 1)
        assert set(np.unique(label)) == {0, 1}
    (tmp_path / "bad.json").write_text(json.dumps(
        [{"id": "b", "images": {"t1": "b/t1.nii.gz"}, "label": None}]))
    with pytest.raises(FileNotFoundError, match="case b, t1 image .*b/t1.nii.gz does not exist"):
        volumetric.discover(tmp_path / "bad.json")


def test_unknown_layout_is_explained(tmp_path):
    (tmp_path / "something").mkdir()
    with pytest.raises(ValueError, match="cannot tell the layout"):
        volumetric.discover(tmp_path)


# ---- label schemes (2021 / 2023 / 2024) and the checks of evaluate_predictions ----------

def _small_case(root, name, sep, mods, label, affine=None, pred=None, pred_affine=None,
                preds=None):
    affine = np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine
    img = np.ones(label.shape, np.float32)
    for m in mods:
        _write(root / name / f"{name}{sep}{m}.nii.gz", img, affine)
    _write(root / name / f"{name}{sep}seg.nii.gz", label.astype(np.uint8), affine)
    if pred is not None:
        _write(preds / f"{name}_seg.nii.gz", pred.astype(np.uint8),
               affine if pred_affine is None else pred_affine)


def _lab(values, shape=(12, 12, 8)):
    lab = np.zeros(shape, np.uint8)
    for i, v in enumerate(values):
        lab[2 + 2 * i:4 + 2 * i, 2:10, 2:6] = v
    return lab


M21, M23 = ("flair", "t1", "t1ce", "t2"), ("t1n", "t1c", "t2w", "t2f")


def test_label_schemes_from_names_and_explicit_choice(tmp_path):
    assert volumetric.layouts.brats_labels("BraTS2021_00001") == "brats2021"
    assert volumetric.layouts.brats_labels("BraTS-GLI-00001-000") == "brats2023"
    assert volumetric.layouts.brats_labels("BraTS-GLI-00001-101") == "brats2024"
    _small_case(tmp_path, "BraTS-GLI-00001-000", "-", M23, _lab([1, 2, 3]))
    _small_case(tmp_path, "BraTS-GLI-00002-100", "-", M23, _lab([1, 2, 3, 4]))
    pre, post = volumetric.discover(tmp_path)
    assert list(pre.regions) == ["WT", "TC", "ET"] and pre.extra["labels"] == "brats2023"
    assert post.regions == volumetric.REGIONS["brats2024"] and post.extra["labels"] == "brats2024"
    # RC (label 4) is its own region, outside WT / TC / ET, and round-trips
    _, label, _ = load_case(post)
    masks = to_regions(label, post.regions)
    assert masks[..., 3].sum() == (label == 4).sum() and not (masks[..., 0] & masks[..., 3]).any()
    np.testing.assert_array_equal(from_regions(masks, post.regions, "brats2023"), label)
    forced = volumetric.discover(tmp_path, labels="brats2024")
    assert all(c.extra["labels"] == "brats2024" for c in forced)
    with pytest.raises(ValueError, match="labels must be one of brats2021, brats2023, brats2024"):
        volumetric.discover(tmp_path, labels="brats2022")


def _evaluate(*args, **kwargs):
    from keras_priors.volumetric.evaluation import evaluate_predictions

    return evaluate_predictions(*args, **kwargs)


def test_evaluation_reads_2024_cases_and_refuses_label_4_in_2023(tmp_path):
    data, preds = tmp_path / "data", tmp_path / "preds"
    lab = _lab([1, 2, 3, 4])
    _small_case(data, "BraTS-GLI-00002-100", "-", M23, lab, pred=lab, preds=preds)
    result = _evaluate(preds, data, metrics="global,lesionwise_2025")
    assert result["labels"] == {"BraTS-GLI-00002-100": "brats2024"}
    assert set(result["dice"]) == {"WT", "TC", "ET", "RC"} and result["dice"]["RC"] == 1.0
    assert result["mean"]["lesionwise_2025"]["RC"]["tp"] == 1
    # the same label map in a pre-treatment (2023) case: an error that names the choices
    _small_case(data, "BraTS-GLI-00003-000", "-", M23, lab, pred=lab, preds=preds)
    with pytest.raises(ValueError, match=r"BraTS-GLI-00003-000-seg.nii.gz has label values \[4\] "
                                         r"outside the brats2023 labels.*brats2021, brats2023, "
                                         r"brats2024"):
        _evaluate(preds, data)
    assert _evaluate(preds, data, labels="brats2024")["cases"] == 2


def test_evaluation_refuses_wrong_labels_shifted_affines_and_other_shapes(tmp_path):
    data, preds = tmp_path / "data", tmp_path / "preds"
    lab = _lab([2, 1, 4])
    _small_case(data, "BraTS2021_00001", "_", M21, lab, pred=_lab([2, 3, 9]), preds=preds)
    with pytest.raises(ValueError, match=r"BraTS2021_00001_seg.nii.gz has label values \[3, 9\] "
                                         r"outside the brats2021 labels \[0, 1, 2, 4\]"):
        _evaluate(preds, data)
    shifted = np.diag([1.0, 1.0, 1.0, 1.0])
    shifted[0, 3] = 30.0
    _write(preds / "BraTS2021_00001_seg.nii.gz", lab, shifted)
    with pytest.raises(volumetric.NiftiError,
                       match=r"prediction .*preds/BraTS2021_00001_seg.nii.gz and its label "
                             r".*data/BraTS2021_00001/BraTS2021_00001_seg.nii.gz have "
                             r"different affines"):
        _evaluate(preds, data)
    _write(preds / "BraTS2021_00001_seg.nii.gz", lab[:, :, :6], np.eye(4))
    with pytest.raises(volumetric.NiftiError,
                       match=r"preds/BraTS2021_00001_seg.nii.gz has shape \(12, 12, 6\) but its "
                             r"label .*BraTS2021_00001_seg.nii.gz has \(12, 12, 8\)"):
        _evaluate(preds, data)
    _write(preds / "BraTS2021_00001_seg.nii.gz", lab, np.eye(4))
    result = _evaluate(preds, data, metrics=["global", "nsd", "lesionwise"])
    assert result["dice"] == {"WT": 1.0, "TC": 1.0, "ET": 1.0}
    assert result["mean"]["lesionwise_2023"]["ET"]["dice"] == 1.0
    assert result["mean"]["nsd"]["WT"]["nsd"] == 1.0
