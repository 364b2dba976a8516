"""Training on real Fashion-MNIST slices: a tiny real run, kill-and-resume equals an
uninterrupted run, the NaN guard, the output folder rules, and evaluate."""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_priors import runs, training

from .processes import kill_after_first_epoch

TINY = dict(model="nin_root8", width=0.125, batch_size=64, limit_train=512, limit_test=256,
            warmup_epochs=0.5)


def _checkpoint(out):
    return runs.checkpoint_path(out, json.loads((out / "state.json").read_text()))


def _weights(out):
    model = keras.saving.load_model(_checkpoint(out))
    return [np.asarray(w) for w in model.get_weights()]


def test_tiny_real_training_writes_everything(tmp_path):
    result = training.fit(training.TrainConfig(epochs=2, **TINY), tmp_path, verbose=0)
    for name in ("config.json", "checkpoint-epoch0002.keras", "state.json", "log.csv",
                 "result.json", "weights.weights.h5"):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / "checkpoint-epoch0001.keras").exists()  # superseded, removed
    assert (tmp_path / "tensorboard").is_dir()
    assert 0 <= result["accuracy"] <= 1 and math.isfinite(result["loss"])
    history = json.loads((tmp_path / "state.json").read_text())["history"]
    assert history[1]["loss"] < history[0]["loss"]  # it learns, on real images
    assert result["test_examples"] == 256 and result["epochs"] == 2
    assert result["macs"] > 0 and result["params"] > 0 and result["train_seconds"] > 0
    assert json.loads((tmp_path / "result.json").read_text())["accuracy"] == result["accuracy"]
    assert len((tmp_path / "log.csv").read_text().strip().splitlines()) == 3


def test_out_folder_is_never_overwritten(tmp_path):
    training.fit(training.TrainConfig(epochs=1, **TINY), tmp_path, verbose=0)
    with pytest.raises(ValueError, match="already holds a run .* pass --resume"):
        training.fit(training.TrainConfig(epochs=1, **TINY), tmp_path, verbose=0)
    with pytest.raises(ValueError, match="holds a run with a different configuration"):
        training.fit(training.TrainConfig(epochs=2, **{**TINY, "seed": 5}), tmp_path,
                     resume=True, verbose=0)


def _cli(out, epochs, resume=False):
    argv = [sys.executable, "-m", "keras_priors.cli", "train", "nin_root8", "--out", str(out),
            "--epochs", str(epochs), "--width", "0.125", "--batch-size", "64",
            "--limit-train", "512", "--limit-test", "256", "--warmup-epochs", "0.5", "--quiet"]
    return argv + (["--resume"] if resume else [])


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = subprocess.run(_cli(whole, 3), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    epoch = kill_after_first_epoch(_cli(killed, 3), killed, env, poll=0.2)
    assert 1 <= epoch < 3, "the run was not interrupted mid-way"
    keras.saving.load_model(_checkpoint(killed))  # the last checkpoint is intact

    done = subprocess.run(_cli(killed, 3, resume=True), env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for a, b in zip(_weights(whole), _weights(killed)):
        np.testing.assert_array_equal(a, b)  # bit-exact: same batches, optimizer and RNG states
    a = json.loads((whole / "result.json").read_text())
    b = json.loads((killed / "result.json").read_text())
    assert a["accuracy"] == b["accuracy"]
    assert len((killed / "log.csv").read_text().strip().splitlines()) == 4  # header + 3 epochs


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = training.TrainConfig(epochs=2, learning_rate=1e12, **TINY)
    with pytest.raises(FloatingPointError, match="no epoch had completed"):
        training.fit(cfg, tmp_path, verbose=0)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["status"] == "stopped: non-finite loss" and state["epoch"] == 0
    assert not list(tmp_path.glob("checkpoint*.keras"))
    assert not (tmp_path / "result.json").exists()


def test_nan_after_a_good_epoch_keeps_that_checkpoint(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.save(tmp_path / "checkpoint-epoch0001.keras")
    before = (tmp_path / "checkpoint-epoch0001.keras").read_bytes()
    keeper = runs.RunKeeper(tmp_path, {"epoch": 1, "train_seconds": 0.0, "history": [],
                                           "checkpoint": "checkpoint-epoch0001.keras"})
    keeper.set_model(model)
    keeper.on_epoch_begin(1)
    keeper.on_train_batch_end(3, {"loss": float("nan")})
    keeper.on_epoch_end(1, {"loss": float("nan")})
    assert model.stop_training
    assert {k: keeper.bad_loss[k] for k in ("epoch", "batch")} == {"epoch": 2, "batch": 3}
    assert math.isnan(keeper.bad_loss["loss"])
    assert (tmp_path / "checkpoint-epoch0001.keras").read_bytes() == before
    assert not (tmp_path / "checkpoint-epoch0002.keras").exists()


def test_evaluate_prints_the_same_json(tmp_path, capsys):
    from keras_priors import cli

    training.fit(training.TrainConfig(epochs=1, **TINY), tmp_path, verbose=0)
    code = cli.main(["evaluate", "nin_root8", "--weights", str(tmp_path / "weights.weights.h5"),
                     "--width", "0.125", "--limit-test", "256"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    trained = json.loads((tmp_path / "result.json").read_text())
    assert out["accuracy"] == pytest.approx(trained["accuracy"], abs=1e-9)
    assert out["macs"] == trained["macs"] and out["params"] == trained["params"]


def test_bad_config_values():
    with pytest.raises(ValueError, match="optimizer must be 'sgd' or 'adamw', received optimizer='adam'"):
        training.TrainConfig("nin", optimizer="adam")
    with pytest.raises(ValueError, match="epochs must be a positive integer, received epochs=0"):
        training.TrainConfig("nin", epochs=0)


def test_mixed_precision_run(tmp_path):
    result = training.fit(training.TrainConfig(epochs=1, mixed_precision=True, **TINY), tmp_path,
                          verbose=0)
    assert math.isfinite(result["loss"])
    model = keras.saving.load_model(_checkpoint(tmp_path))
    assert model.get_layer("conv2a").compute_dtype in ("bfloat16", "float16")
    assert model.output.dtype == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"  # restored afterwards


def test_atomic_writes_get_the_usual_file_permissions(tmp_path):
    """Outputs written through a temporary file are readable as a plain open() would make
    them, not owner-only as mkstemp leaves them."""
    import os

    from keras_priors import io

    umask = os.umask(0o022)
    try:
        out = io.write_json(tmp_path / "r.json", {"a": 1})
        assert (out.stat().st_mode & 0o777) == 0o644
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    finally:
        os.umask(umask)


def test_validation_split_keeps_the_test_set_for_the_end(tmp_path, monkeypatch):
    seen = []
    real = training.data_lib.eval_batches
    monkeypatch.setattr(training.data_lib, "eval_batches",
                        lambda d, *a, split="test", **k: seen.append(split) or real(d, *a, split=split, **k))
    result = training.fit(training.TrainConfig(epochs=2, validation=128, **TINY), tmp_path,
                          verbose=0)
    assert seen == ["validation", "test"]  # per-epoch validation, then the test set once
    history = json.loads((tmp_path / "state.json").read_text())["history"]
    assert len(history) == 2 and all(0 <= h["val_accuracy"] <= 1 for h in history)
    assert result["validation_accuracy"] == history[-1]["val_accuracy"]
    assert result["best_validation_epoch"] in (1, 2)
    assert result["best_validation_accuracy"] == max(h["val_accuracy"] for h in history)
    assert result["test_examples"] == 256 and result["config"]["validation"] == 128
    with pytest.raises(ValueError, match="validation must be a number of training examples"):
        training.TrainConfig("nin", validation=-1)


def test_resume_treats_a_field_added_later_as_its_default(tmp_path):
    training.fit(training.TrainConfig(epochs=1, **TINY), tmp_path, verbose=0)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["validation"], cfg["jit_compile"]  # a run saved before these fields existed
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    result = training.fit(training.TrainConfig(epochs=2, **TINY), tmp_path, resume=True,
                          verbose=0)
    assert result["epochs"] == 2
