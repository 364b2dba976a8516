"""train -> predict -> evaluate on tiny synthetic-BraTS cases (synthetic lesions on real
anatomy, written as real NIfTI), with resume, orientation and untouched inputs."""

import hashlib
import json

import nibabel as nib
import numpy as np
import pytest

from keras_priors import cli
from keras_priors import volumetric as seg
from keras_priors.volumetric import pipeline, synthetic

from ..processes import kill_after_first_epoch

ARGS = ["--model", "unet3d_lowrank", "--epochs", "2", "--batch-size", "2", "--steps-per-epoch",
        "2", "--patch", "16", "16", "16", "--widths", "8", "16", "--val-fraction", "0.34",
        "--quiet"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats")
    synthetic.write_cases(root, n=3, seed=0, downsample=4)
    return root


def _hashes(root):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.nii.gz"))}


def test_zscore_and_patches(dataset):
    from keras_priors.volumetric import discover

    case = discover(dataset)[0]
    images, y = pipeline.prepare(case)
    brain = images[..., 0] != 0
    assert abs(images[..., 0][brain].mean()) < 1e-3 and abs(images[..., 0][brain].std() - 1) < 1e-3
    assert y.shape[-1] == 3
    a = list(pipeline.epoch_patches([(images, y)], (16, 16, 16), seed=1, epoch=3, per_case=3))
    b = list(pipeline.epoch_patches([(images, y)], (16, 16, 16), seed=1, epoch=3, per_case=3))
    assert all(np.array_equal(x[0], z[0]) for x, z in zip(a, b))
    fg = [pipeline.sample_patch(images, y, (16, 16, 16), np.random.default_rng(i), 1.0)[1].max()
          for i in range(5)]
    assert min(fg) == 1  # foreground oversampling puts tumour in every patch at p=1


def test_train_predict_evaluate(dataset, tmp_path, capsys):
    before = _hashes(dataset)
    run = tmp_path / "run"
    assert cli.main(["seg", "train", "--data", str(dataset), "--layout", "brats",
                     "--out", str(run), *ARGS]) == 0
    result = json.loads((run / "result.json").read_text())
    assert set(result["dice"]) == {"WT", "TC", "ET"} and len(result["val_cases"]) == 1
    assert all(0 <= v <= 1 for v in result["dice"].values())
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == 2 and state["status"] == "completed"
    capsys.readouterr()

    preds = tmp_path / "preds"
    case_dir = dataset / "BraTS2021_00001"
    assert cli.main(["seg", "predict", "--model", str(run), "--input", str(case_dir),
                     "--out", str(preds)]) == 0
    written = preds / "BraTS2021_00001_seg.nii.gz"
    src = nib.load(case_dir / "BraTS2021_00001_flair.nii.gz")
    out = nib.load(written)
    np.testing.assert_allclose(out.affine, src.affine)
    assert out.shape == src.shape and set(np.unique(np.asarray(out.dataobj))) <= {0, 1, 2, 4}
    assert cli.main(["seg", "predict", "--model", str(run), "--input", str(case_dir),
                     "--out", str(preds)]) == 2  # never overwrites without --force
    assert "exists" in capsys.readouterr().err

    assert cli.main(["seg", "evaluate", "--pred", str(preds), "--data", str(dataset),
                     "--json", "-"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["cases"] == 1 and set(scores["hd95"]) == {"WT", "TC", "ET"}
    assert _hashes(dataset) == before  # inputs untouched


def test_resume_continues_a_run(dataset, tmp_path):
    cfg = seg.SegConfig(data=str(dataset), patch=(16, 16, 16), widths=(8, 16), epochs=2,
                        steps_per_epoch=2, val_fraction=0.34)
    whole = seg.fit_segmentation(cfg, tmp_path / "whole", verbose=0)
    with pytest.raises(ValueError, match="already holds a run"):
        seg.fit_segmentation(cfg, tmp_path / "whole", verbose=0)
    again = seg.fit_segmentation(cfg, tmp_path / "whole", resume=True, verbose=0)
    assert again["dice"] == whole["dice"]


def _run_weights(run):
    model = seg.model_for_inference(run)
    return [np.asarray(w) for w in model.get_weights()]


def test_killed_seg_run_resumes_to_the_same_weights(dataset, tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")

    def argv(out, resume=False):
        return [sys.executable, "-m", "keras_priors.cli", "seg", "train", "--data", str(dataset),
                "--layout", "brats", "--out", str(out), *ARGS[:-1], "--epochs", "3",
                "--quiet"] + (["--resume"] if resume else [])

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = subprocess.run(argv(whole), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 1 <= kill_after_first_epoch(argv(killed), killed, env) < 3
    assert not (killed / "result.json").exists()
    done = subprocess.run(argv(killed, resume=True), env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for a, b in zip(_run_weights(whole), _run_weights(killed)):
        np.testing.assert_array_equal(a, b)  # same patches, optimizer state and schedule
    assert (json.loads((whole / "result.json").read_text())["dice"]
            == json.loads((killed / "result.json").read_text())["dice"])


def test_predict_resamples_to_the_training_spacing(dataset, tmp_path):
    cfg = seg.SegConfig(data=str(dataset), patch=(16, 16, 16), widths=(8, 16), epochs=1,
                        steps_per_epoch=1, val_fraction=0.34)
    seg.fit_segmentation(cfg, tmp_path / "run", verbose=0)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["spacing"] == [4.0, 4.0, 4.0]
    assert split["modalities"] == ["flair", "t1", "t1ce", "t2"]
    fine = tmp_path / "fine"
    synthetic.write_cases(fine, n=1, seed=5, downsample=3, anatomies=("colin27",))
    written = seg.predict(tmp_path / "run", fine, tmp_path / "pred", progress=None)
    src = nib.load(next((fine / "BraTS2021_00000").glob("*_flair.nii.gz")))
    out = nib.load(written[0])
    assert out.shape == src.shape  # predicted at 4 mm, written on the 3 mm grid of the input
    np.testing.assert_allclose(out.affine, src.affine)


def test_brats2023_channels_follow_the_training_order():
    from keras_priors.volumetric.layouts import Case

    case = Case("BraTS-GLI-00000-000", {m: f"{m}.nii.gz" for m in ("t1n", "t1c", "t2w", "t2f")})
    assert seg.channel_order(case, ["flair", "t1", "t1ce", "t2"]) == [3, 0, 1, 2]
    with pytest.raises(ValueError, match=r"case x has modalities \['t1'\], but the model was "
                                         r"trained on \['flair', 't1'\]"):
        seg.channel_order(Case("x", {"t1": "a"}), ["flair", "t1"])


def test_unknown_segmentation_weights_tag():
    with pytest.raises(ValueError, match="'unet3d_lowrank' has no segmentation weights 'nope'"):
        seg.model_for_inference("unet3d_lowrank", "nope")
    with pytest.raises(FileNotFoundError, match="is not a run folder"):
        seg.model_for_inference("unet3d_lowrank")


def test_validation_during_training_keeps_the_best_weights(dataset, tmp_path):
    import csv

    cfg = seg.SegConfig(data=str(dataset), patch=(16, 16, 16), widths=(8, 16), epochs=3,
                        steps_per_epoch=1, val_fraction=0.34, val_every=2)
    result = seg.fit_segmentation(cfg, tmp_path / "run", verbose=0)
    with open(tmp_path / "run" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert rows[0]["val_dice"] == "nan" and rows[2]["val_dice"] == "nan"  # every 2nd epoch
    scored = float(rows[1]["val_dice"])
    assert 0 <= scored <= 1
    means = [float(rows[1][f"val_dice_{r}"]) for r in ("WT", "TC", "ET")]
    assert scored == pytest.approx(np.mean(means))
    assert result["best"]["epoch"] == 2 and result["best"]["val_dice"] == pytest.approx(scored)
    best = seg.model_for_inference(tmp_path / "run", "best")
    last = seg.model_for_inference(tmp_path / "run")
    assert any(not np.array_equal(a, b) for a, b in zip(best.get_weights(), last.get_weights()))


def test_runs_on_the_same_data_share_one_prepared_copy(dataset, tmp_path):
    from keras_priors.volumetric.prepare import default_root

    cfg = seg.SegConfig(data=str(dataset), patch=(16, 16, 16), widths=(8, 16), epochs=1,
                        steps_per_epoch=1, val_fraction=0.34, val_every=0)
    seg.fit_segmentation(cfg, tmp_path / "a", verbose=0)
    seg.fit_segmentation(cfg, tmp_path / "b", verbose=0)
    first = json.loads((tmp_path / "a" / "split.json").read_text())["prepared"]
    second = json.loads((tmp_path / "b" / "split.json").read_text())["prepared"]
    assert first == second and str(default_root()) in first
    assert not (tmp_path / "a" / "cache").exists()  # nothing prepared inside a run folder


def test_a_broken_case_fails_before_training_and_names_the_file(dataset, tmp_path):
    import shutil

    broken = tmp_path / "data"
    shutil.copytree(dataset, broken)
    bad = broken / "BraTS2021_00002" / "BraTS2021_00002_t1.nii.gz"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated
    cfg = seg.SegConfig(data=str(broken), patch=(16, 16, 16), widths=(8, 16), epochs=1)
    with pytest.raises(Exception, match="BraTS2021_00002_t1.nii.gz"):
        seg.fit_segmentation(cfg, tmp_path / "run", verbose=0)
    assert not (tmp_path / "run").exists()  # no empty run folder left behind


def test_a_label_map_without_regions_must_be_binary(tmp_path):
    cases = []
    for i in range(2):
        image = np.zeros((12, 12, 12), np.float32)
        image[2:10, 2:10, 2:10] = np.random.default_rng(i).normal(100, 10, (8, 8, 8))
        label = np.zeros((12, 12, 12), np.uint8)
        label[4:6, 4:6, 4:6], label[7:9, 7:9, 7:9] = 1, 2
        nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / f"img{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / f"lab{i}.nii.gz")
        cases.append({"id": f"c{i}", "images": {"t1": f"img{i}.nii.gz"},
                      "label": f"lab{i}.nii.gz"})
    (tmp_path / "dataset.json").write_text(json.dumps(cases))
    cfg = seg.SegConfig(data=str(tmp_path / "dataset.json"), layout="manifest",
                        patch=(8, 8, 8), widths=(4, 8), epochs=1)
    with pytest.raises(ValueError, match=r"case c0 has label values \[.*2\] but the dataset "
                                         "defines no regions"):
        seg.fit_segmentation(cfg, tmp_path / "run", verbose=0)


def test_seg_training_runs_on_jax_without_tensorflow(tmp_path):
    """`seg train` on the JAX backend in a process where TensorFlow cannot be imported (as on
    an accelerator machine with JAX only): tf.distribute's default strategy and tf.data are
    replaced, the run writes its checkpoint and resumes to the uninterrupted run's weights."""
    import os
    import subprocess
    import sys

    pytest.importorskip("jax")
    script = tmp_path / "no_tf.py"
    script.write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'tensorflow':\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from keras_priors import cli\n"
        "import keras\n"
        "assert keras.backend.backend() == 'jax'\n"
        "code = cli.main(sys.argv[1:])\n"
        "assert 'tensorflow' not in sys.modules\n"
        "sys.exit(code)\n")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    base = ["seg", "train", "--data", "synthetic", "--synth-cases", "2", "--synth-val-cases",
            "1", "--synth-downsample", "4", "--val-every", "0", "--model", "unet3d_lowrank", "--batch-size", "2",
            "--steps-per-epoch", "2", "--patch", "16", "16", "16", "--widths", "4", "8",
            "--quiet"]

    def argv(out, resume=False):
        return [sys.executable, str(script), *base, "--out", str(out), "--epochs", "3"] + (
            ["--resume"] if resume else [])

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = subprocess.run(argv(whole), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert 1 <= kill_after_first_epoch(argv(killed), killed, env) < 3
    done = subprocess.run(argv(killed, resume=True), env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    import keras

    for a, b in zip(_run_weights(whole), _run_weights(killed), strict=True):
        np.testing.assert_array_equal(a, b)  # same patches, optimizer state and schedule
    assert keras.backend.backend() == "tensorflow"  # this process is untouched


def test_mixed_precision_training_resumes_and_keeps_float32_weights(dataset, tmp_path):
    """`seg train --mixed-precision`: the default recomputing low-rank U-Net trains under
    mixed_bfloat16 on CPU (its backward pass recomputes convs outside the layer call, where
    Keras does not cast the weights), with float32 weights and a float32 output; the
    setting is part of the run (a resume without it is refused) and the global policy is
    float32 again afterwards."""
    import keras

    args = ["seg", "train", "--data", str(dataset), "--out", str(tmp_path / "run"), *ARGS]
    assert cli.main([*args, "--mixed-precision"]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["mixed_precision"] is True
    assert keras.mixed_precision.global_policy().name == "float32"
    model = seg.model_for_inference(tmp_path / "run")
    assert {w.dtype for w in model.get_weights()} == {np.dtype("float32")}
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert cli.main([*args, "--resume"]) == 2  # the run was mixed precision: say so again
    assert cli.main([*args, "--resume", "--mixed-precision"]) == 0


def test_recompute_choice_trains_and_may_change_on_resume(dataset, tmp_path):
    """`seg train --recompute per_sample` builds the U-Net with the per-sample backward
    pass and trains; a resume may switch it (the gradients are the same), while other
    settings still must match; a bad value is refused by name."""
    args = ["seg", "train", "--data", str(dataset), "--out", str(tmp_path / "run"), *ARGS]
    assert cli.main([*args, "--epochs", "1", "--recompute", "per_sample"]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["recompute"] == "per_sample"
    assert cli.main([*args, "--resume", "--recompute", "off"]) == 0
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["epoch"] == 2
    assert cli.main([*args, "--resume", "--epochs", "3", "--learning-rate", "0.5"]) == 2
    from keras_priors.volumetric.config import build

    model = build(seg.SegConfig(patch=(16, 16, 16), widths=(4, 8), recompute="per_sample"),
                  4, 3, "sigmoid")
    assert {layer.recompute for layer in model.layers if hasattr(layer, "recompute")} == {
        "per_sample"}
    with pytest.raises(ValueError, match="recompute must be one of"):
        seg.SegConfig(recompute="yes")
