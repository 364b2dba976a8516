"""Prediction never destroys data, and what nnU-Net / MONAI users expect at inference: test-time
mirroring, BraTS post-processing of small enhancing components, PNG overlays. Tiny synthetic
BraTS cases (synthetic lesions on real anatomy, written as real NIfTI) and tiny models."""

import dataclasses
import hashlib
import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from keras_priors import cli, io
from keras_priors.volumetric import REGIONS, NiftiError, prediction, synthetic
from keras_priors.volumetric.config import SegConfig, build

BRATS21 = REGIONS["brats2021"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats")
    synthetic.write_cases(root, n=2, seed=0, downsample=4)
    return root


def _pointwise_model():
    """A 1x1x1 convolution (flip-equivariant): bright FLAIR -> WT, brighter -> TC, ET."""
    import keras

    inp = keras.Input((16, 16, 16, 4))
    conv = keras.layers.Conv3D(3, 1, activation="sigmoid")
    model = keras.Model(inp, conv(inp))
    kernel = np.zeros((1, 1, 1, 4, 3), np.float32)
    kernel[..., 0, :] = 4.0  # FLAIR drives all three regions
    conv.set_weights([kernel, np.array([-4.0, -8.0, -10.0], np.float32)])
    model.seg_config = SegConfig(patch=(16, 16, 16), overlap=0.25)
    model.seg_split = {"regions": dict(BRATS21), "modalities": ["flair", "t1", "t1ce", "t2"],
                       "channels": 4, "outputs": 3}
    return model


@pytest.fixture(scope="module")
def model():
    return _pointwise_model()


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A finished run folder as training leaves it (config, split, weights) of a tiny U-Net."""
    run = tmp_path_factory.mktemp("run")
    cfg = SegConfig(patch=(16, 16, 16), widths=(4, 8), overlap=0.25)
    net = build(cfg, 4, 3, "sigmoid")
    io.write_json(run / "config.json", dataclasses.asdict(cfg))
    io.write_json(run / "split.json", {"regions": dict(BRATS21), "channels": 4, "outputs": 3,
                                       "modalities": ["flair", "t1", "t1ce", "t2"],
                                       "spacing": [4.0, 4.0, 4.0]})
    io.save_weights(net, run / "weights.weights.h5")
    return run


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if a model is built or any inference runs."""
    def refuse(*a, **k):
        raise AssertionError("a model was loaded or inference ran before the refusal")

    monkeypatch.setattr(prediction, "model_for_inference", refuse)
    monkeypatch.setattr(prediction.inference, "sliding_window", refuse)


def _hashes(root):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _predict_cli(model_dir, inputs, out, *extra):
    return cli.main(["seg", "predict", "--model", str(model_dir), "--input", str(inputs),
                     "--out", str(out), *extra])


# ---------------------------------------------------------------- safety

@pytest.mark.parametrize("force", [[], ["--force"]])
def test_out_in_or_inside_the_inputs_is_refused_with_or_without_force(
        dataset, run_folder, no_model, capsys, force):
    before = _hashes(dataset)
    case = dataset / "BraTS2021_00000"
    for inputs, out, where in [(case, case, "is the input folder"),
                               (case, case / "preds", "is inside the input folder"),
                               (case, dataset / "preds", "is inside the input folder"),
                               (dataset, dataset, "is the input folder"),
                               (dataset, case / "preds", "is inside the input folder")]:
        assert _predict_cli(run_folder, inputs, out, *force) == 2
        err = capsys.readouterr().err
        assert f"--out {out} {where}" in err and "with or without --force" in err, err
        assert "overwrite=True" not in err
    assert _hashes(dataset) == before and not (case / "preds").exists()


def test_outputs_resolving_to_an_input_are_refused(dataset, model, no_model, tmp_path):
    case = dataset / "BraTS2021_00001"
    truth = case / "BraTS2021_00001_seg.nii.gz"
    before = truth.read_bytes()
    out = tmp_path / "preds"
    out.mkdir()
    (out / "BraTS2021_00001_seg.nii.gz").symlink_to(truth)
    with pytest.raises(ValueError, match=r"--out .*would overwrite the input file "
                                         r".*BraTS2021_00001_seg.nii.gz; refused with or "
                                         r"without --force"):
        prediction.predict(model, case, out, overwrite=True, progress=None)
    linked = tmp_path / "linked"  # an --out that is a symlink to the case folder
    linked.symlink_to(case)
    with pytest.raises(ValueError, match="is the input folder"):
        prediction.predict(model, case, linked, overwrite=True, progress=None)
    assert truth.read_bytes() == before


def test_out_naming_an_existing_file_is_refused_up_front(dataset, run_folder, no_model,
                                                         tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    assert _predict_cli(run_folder, dataset, target, "--force") == 2
    assert f"--out {target}: {target} is an existing file, not a folder" in capsys.readouterr().err
    assert _predict_cli(run_folder, dataset, target / "sub") == 2
    assert "is an existing file, not a folder" in capsys.readouterr().err
    assert target.read_text() == "keep me"


def test_existing_outputs_listed_before_inference_and_replaced_atomically_with_force(
        dataset, model, tmp_path, monkeypatch):
    out = tmp_path / "preds"
    out.mkdir()
    for name in ("BraTS2021_00000_seg.nii.gz", "BraTS2021_00001_seg.nii.gz"):
        (out / name).write_bytes(b"old")
    with monkeypatch.context() as m:
        m.setattr(prediction.inference, "sliding_window",
                  lambda *a, **k: pytest.fail("inference ran before the refusal"))
        with pytest.raises(FileExistsError, match=r"2 outputs already exist in .*preds: "
                                                  r"BraTS2021_00000_seg.nii.gz, "
                                                  r"BraTS2021_00001_seg.nii.gz; pass --force"):
            prediction.predict(model, dataset, out, progress=None)
    assert (out / "BraTS2021_00000_seg.nii.gz").read_bytes() == b"old"
    inode = (out / "BraTS2021_00000_seg.nii.gz").stat().st_ino
    written = prediction.predict(model, dataset, out, overwrite=True, progress=None)
    assert [p.name for p in written] == ["BraTS2021_00000_seg.nii.gz",
                                         "BraTS2021_00001_seg.nii.gz"]
    assert (out / "BraTS2021_00000_seg.nii.gz").stat().st_ino != inode  # renamed over, not edited
    assert nib.load(written[0]).shape == nib.load(
        dataset / "BraTS2021_00000" / "BraTS2021_00000_flair.nii.gz").shape
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left


def test_outputs_get_umask_permissions(dataset, model, tmp_path):
    old = os.umask(0o027)
    try:
        written = prediction.predict(model, dataset / "BraTS2021_00000", tmp_path / "p",
                                     png=True, progress=None)
    finally:
        os.umask(old)
    png = tmp_path / "p" / "BraTS2021_00000_overlay.png"
    for path in (written[0], png):
        assert path.stat().st_mode & 0o777 == 0o666 & ~0o027 == 0o640


def _copy_case(dataset, root, change):
    """A copy of case 00000 under `root` whose FLAIR voxels are replaced by `change`."""
    src = dataset / "BraTS2021_00000"
    dst = root / src.name
    shutil.copytree(src, dst)
    flair = dst / f"{src.name}_flair.nii.gz"
    img = nib.load(flair)
    nib.save(nib.Nifti1Image(change(np.asarray(img.dataobj, np.float32)), img.affine), flair)
    return dst, flair


@pytest.mark.parametrize("change, message", [
    (lambda a: np.full_like(a, np.nan), "has no finite voxel: all .* voxels are NaN or inf"),
    (lambda a: np.zeros_like(a), r"\(case BraTS2021_00000, modality flair\) is constant: every "
                                 r"voxel is 0.0"),
    (lambda a: np.full_like(a, 7.0), "is constant: every voxel is 7.0"),
])
def test_a_modality_without_signal_is_refused_naming_the_file(dataset, model, no_model,
                                                              tmp_path, change, message):
    case, flair = _copy_case(dataset, tmp_path / "data", change)
    with pytest.raises(NiftiError, match=f"{flair}.*{message}|{flair} {message}"):
        prediction.predict(model, case, tmp_path / "out", progress=None)
    assert not (tmp_path / "out").exists()


def test_a_partly_nonfinite_modality_is_predicted_after_a_warning(dataset, model, tmp_path):
    def holes(a):
        a = a.copy()
        a[:3] = np.nan
        return a

    case, flair = _copy_case(dataset, tmp_path / "data", holes)
    with pytest.warns(UserWarning, match=f"{flair}: .* non-finite voxels set to 0"):
        written = prediction.predict(model, case, tmp_path / "out", progress=None)
    assert written[0].exists()


# ---------------------------------------------------------------- test-time augmentation

def test_tta_flips_and_bad_axes():
    assert prediction.tta_flips(None) == [()]
    assert prediction.tta_flips("zx") == [(), (0,), (2,), (0, 2)]
    assert prediction.tta_flips(True) == prediction.tta_flips("xyz") == prediction.tta_flips(
        (2, 1, 0))
    assert len(prediction.tta_flips(True)) == 8
    with pytest.raises(ValueError, match="--tta takes RAS axes among x, y, z"):
        prediction.tta_flips("xw")
    with pytest.raises(ValueError, match="--tta takes RAS axes"):
        prediction.tta_flips("xx")


def test_tta_undoes_each_flip():
    """Models that output a function of the position in the window: the average over flips
    has a closed form only if each flip is undone on the output."""
    shape, window = (6, 5, 4), (6, 5, 4)  # one window: positions are volume positions
    ramp = np.linspace(0.0, 1.0, shape[0], dtype=np.float32)[:, None, None, None]
    x = np.random.default_rng(0).random((*shape, 1)).astype(np.float32)

    def position(b):  # ignores its input: output = x coordinate
        return np.broadcast_to(ramp, b.shape).copy()

    def weighted(b):  # input times the x coordinate: not flip-equivariant
        return b * ramp

    plain = prediction.predict_volume(position, x, window)
    np.testing.assert_allclose(plain, np.broadcast_to(ramp, x.shape), atol=1e-6)
    # mirrored along x and back: (ramp + reversed ramp) / 2 = 0.5 everywhere
    np.testing.assert_allclose(prediction.predict_volume(position, x, window, tta="x"), 0.5,
                               atol=1e-6)
    # along y and z the output does not change, so averaging keeps the ramp
    np.testing.assert_allclose(prediction.predict_volume(position, x, window, tta="yz"), plain,
                               atol=1e-6)
    np.testing.assert_allclose(prediction.predict_volume(weighted, x, window, tta="x"),
                               0.5 * x, atol=1e-6)
    np.testing.assert_allclose(prediction.predict_volume(weighted, x, window, tta="yz"),
                               x * ramp, atol=1e-6)
    # several windows, all 8 flips: the identity comes back exactly where it was
    np.testing.assert_allclose(prediction.predict_volume(lambda b: b, x, (4, 4, 4), tta=True),
                               x, atol=1e-6)


def test_tta_of_a_flip_equivariant_model_equals_the_plain_prediction(dataset, model, tmp_path):
    plain = prediction.predict(model, dataset, tmp_path / "plain", progress=None)
    tta = prediction.predict(model, dataset, tmp_path / "tta", tta=True, progress=None)
    for a, b in zip(plain, tta):
        np.testing.assert_array_equal(np.asarray(nib.load(a).dataobj),
                                      np.asarray(nib.load(b).dataobj))
    case = prediction.discover(dataset)[0]
    _, probs, _, _ = prediction.predict_case(model, case)
    _, probs_tta, _, _ = prediction.predict_case(model, case, tta=True)
    assert probs.max() > 0.5  # the model does find something
    np.testing.assert_allclose(probs_tta, probs, atol=1e-5)


# ---------------------------------------------------------------- post-processing

def test_postprocess_relabels_small_26_connected_et_components():
    lab = np.zeros((12, 12, 12), np.uint8)
    lab[1:11, 1:11, 1:11] = 2  # oedema around everything
    lab[1, 1, 1] = 4  # 1 voxel = 8 mm^3 -> NCR
    lab[5, 5, 5] = lab[6, 6, 6] = lab[7, 7, 7] = 4  # diagonal chain: one 26-component, 24 mm^3
    lab[8:10, 1:4, 1:4] = 4  # 18 voxels = 144 mm^3: kept
    lab[1:3, 8, 8] = 1  # necrosis stays necrosis
    out = prediction.postprocess_labels(lab, BRATS21, voxel_mm3=8.0, et_min=50)
    assert out[1, 1, 1] == 1 and out[5, 5, 5] == out[6, 6, 6] == out[7, 7, 7] == 1
    assert (out[8:10, 1:4, 1:4] == 4).all() and (out == 4).sum() == 18
    assert (out[1:3, 8, 8] == 1).all()
    # whole tumour and tumour core are unchanged; only ET shrinks
    for region in ("WT", "TC"):
        np.testing.assert_array_equal(np.isin(out, BRATS21[region]), np.isin(lab, BRATS21[region]))
    # the chain would be three components under 6-connectivity: at 20 mm^3 it is kept as one
    kept = prediction.postprocess_labels(lab, BRATS21, voxel_mm3=8.0, et_min=20)
    assert kept[6, 6, 6] == 4 and kept[1, 1, 1] == 1
    # a component of exactly the threshold is kept (strictly below is relabelled)
    assert prediction.postprocess_labels(lab, BRATS21, 8.0, et_min=8)[1, 1, 1] == 4
    # total rule: 168 mm^3 of ET in all, below 200 -> all of it becomes NCR
    total = prediction.postprocess_labels(lab, BRATS21, 8.0, et_total_min=200)
    assert not (total == 4).any() and (total[8:10, 1:4, 1:4] == 1).all()
    np.testing.assert_array_equal(prediction.postprocess_labels(lab, BRATS21, 8.0), lab)  # off


def test_postprocess_uses_the_core_label_of_the_layout():
    lab = np.zeros((4, 4, 4), np.uint8)
    lab[0, 0, 0] = 3
    assert prediction.postprocess_labels(lab, REGIONS["brats2023"], 1.0, et_min=5)[0, 0, 0] == 1
    assert prediction.postprocess_labels(lab, REGIONS["msd_brats"], 1.0, et_min=5)[0, 0, 0] == 2


def test_postprocess_options_are_checked(dataset, model, no_model, tmp_path):
    with pytest.raises(ValueError, match=r"--postprocess-et-min must be a volume in mm\^3 >= 0"):
        prediction.predict(model, dataset, tmp_path, postprocess={"et_min": -1}, progress=None)
    with pytest.raises(ValueError, match=r"unknown post-processing option\(s\) \['et_max'\]"):
        prediction.predict(model, dataset, tmp_path, postprocess={"et_max": 1}, progress=None)


# ---------------------------------------------------------------- PNG overlays

def _png(path):
    import matplotlib.image

    return matplotlib.image.imread(path)[..., :3]


def _coloured(rgb):
    return (rgb.max(-1) - rgb.min(-1)) > 0.15


def test_overlay_png_has_colour_where_the_label_is(tmp_path):
    shape = (20, 20, 10)
    background = np.random.default_rng(0).random(shape).astype(np.float32) + 1
    labels = np.zeros(shape, np.uint8)
    labels[2:8, 4:16, 3:7] = 2  # only at x < 10: the left half of each panel
    labels[3:6, 6:10, 4:6] = 4
    path = prediction.write_overlay(tmp_path / "c_overlay.png", background, labels,
                                    regions=BRATS21, title="c")
    rgb = _png(path)
    panel = prediction.OVERLAY_PANEL_PX
    assert rgb.shape == (panel + prediction.OVERLAY_TITLE_PX, 3 * panel, 3)
    assert prediction.overlay_slices(labels) == [4, 4, 5]  # through the labelled z = 3..6
    body = rgb[prediction.OVERLAY_TITLE_PX:]
    for i in range(3):
        left, right = (body[:, i * panel + o: i * panel + o + panel // 2] for o in (0, panel // 2))
        assert _coloured(left).sum() > 200  # the label, in colour, on the x < 10 half
        assert _coloured(right).sum() == 0  # grey where nothing is labelled
    # enhancing tumour yellow (red and green high, blue low) and oedema green are both there
    pixels = body[_coloured(body)]
    assert ((pixels[:, 0] > 0.6) & (pixels[:, 1] > 0.6) & (pixels[:, 2] < 0.5)).any()
    assert ((pixels[:, 1] > 0.6) & (pixels[:, 0] < 0.5)).any()
    empty = _png(prediction.write_overlay(tmp_path / "e_overlay.png", background,
                                          np.zeros(shape, np.uint8)))
    assert _coloured(empty[prediction.OVERLAY_TITLE_PX:]).sum() == 0
    assert prediction.overlay_slices(np.zeros(shape)) == [3, 4, 6]  # the middle half


def test_cli_predict_with_tta_postprocess_and_png(dataset, run_folder, tmp_path, capsys):
    before = _hashes(dataset)
    out = tmp_path / "preds"
    assert _predict_cli(run_folder, dataset / "BraTS2021_00001", out, "--tta", "x", "--png",
                        "--postprocess-et-min", "50", "--postprocess-et-total-min", "100") == 0
    seg_path, png_path = out / "BraTS2021_00001_seg.nii.gz", out / "BraTS2021_00001_overlay.png"
    flair = nib.load(dataset / "BraTS2021_00001" / "BraTS2021_00001_flair.nii.gz")
    labels = np.asarray(nib.load(seg_path).dataobj)
    assert labels.shape == flair.shape and set(np.unique(labels)) <= {0, 1, 2, 4}
    et = (labels == 4).sum() * 64.0
    assert et == 0 or et >= 100  # the total rule held
    rgb = _png(png_path)
    assert rgb.shape[:2] == (prediction.OVERLAY_PANEL_PX + prediction.OVERLAY_TITLE_PX,
                             3 * prediction.OVERLAY_PANEL_PX)
    assert (_coloured(rgb[prediction.OVERLAY_TITLE_PX:]).sum() > 0) == bool(labels.any())
    assert _predict_cli(run_folder, dataset / "BraTS2021_00001", out, "--png") == 2
    err = capsys.readouterr().err
    assert "2 outputs already exist" in err and "BraTS2021_00001_overlay.png" in err
    assert "--force" in err
    assert _hashes(dataset) == before
    assert json.loads((run_folder / "split.json").read_text())["outputs"] == 3


def test_manifest_inputs_guard_the_folders_holding_their_files(dataset, model, no_model,
                                                               tmp_path):
    case = dataset / "BraTS2021_00000"
    rows = [{"id": "a", "label": str(case / "BraTS2021_00000_seg.nii.gz"),
             "images": {m: str(case / f"BraTS2021_00000_{m}.nii.gz")
                        for m in ("flair", "t1", "t1ce", "t2")}}]
    manifest = tmp_path / "cases.json"
    manifest.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match=f"--out {case} is the input folder"):
        prediction.check_predict(model, manifest, case, layout="manifest")
    plan = prediction.check_predict(model, manifest, tmp_path / "preds", layout="manifest",
                                    png=True)
    [(checked, seg_path, png_path)] = plan.jobs
    assert checked.case_id == "a" and seg_path == tmp_path / "preds" / "a_seg.nii.gz"
    assert png_path == tmp_path / "preds" / "a_overlay.png"
    with pytest.raises(ValueError, match=r"several cases named \['a'\]"):
        manifest.write_text(json.dumps(rows * 2))
        prediction.check_predict(model, manifest, tmp_path / "preds", layout="manifest")


def test_msd_dataset_predicts_in_its_own_labels_and_guards_its_root(dataset, tmp_path):
    """An MSD Task01-style dataset (one 4D image per case) built from a synthetic case."""
    src = dataset / "BraTS2021_00000"
    root = tmp_path / "Task01_BrainTumour"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    flair = nib.load(src / "BraTS2021_00000_flair.nii.gz")
    stack = np.stack([np.asarray(nib.load(src / f"BraTS2021_00000_{m}.nii.gz").dataobj)
                      for m in ("flair", "t1", "t1ce", "t2")], axis=-1)
    nib.save(nib.Nifti1Image(stack, flair.affine), root / "imagesTr" / "BRATS_001.nii.gz")
    seg = np.asarray(nib.load(src / "BraTS2021_00000_seg.nii.gz").dataobj)
    msd = np.select([seg == 2, seg == 1, seg == 4], [1, 2, 3], 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(msd, flair.affine), root / "labelsTr" / "BRATS_001.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor",
                   "3": "enhancing tumour"},
        "training": [{"image": "./imagesTr/BRATS_001.nii.gz",
                      "label": "./labelsTr/BRATS_001.nii.gz"}]}))
    model = _pointwise_model()
    model.seg_split = {k: v for k, v in model.seg_split.items() if k != "modalities"}
    with pytest.raises(ValueError, match="is inside the input folder .*Task01_BrainTumour: "):
        prediction.predict(model, root, root / "preds", progress=None)
    [written] = prediction.predict(model, root, tmp_path / "preds", png=True,
                                   postprocess={"et_min": 1e9}, progress=None)
    labels = np.asarray(nib.load(written).dataobj)
    assert written.name == "BRATS_001_seg.nii.gz" and labels.shape == msd.shape
    assert set(np.unique(labels)) <= {0, 1, 2} and (labels == 2).any()  # ET became MSD's 2
    assert (tmp_path / "preds" / "BRATS_001_overlay.png").is_file()
