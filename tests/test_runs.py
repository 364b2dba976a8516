"""The run folder protocol (keras_priors.runs) on a tiny model: what a failed, a finished, a
stopped and a resumed run leave in the folder."""

from dataclasses import dataclass

import keras
import numpy as np
import pytest

from keras_priors import io, runs


@dataclass
class Cfg:
    seed: int = 0
    batch_size: int = 8
    epochs: int = 2
    lr: float = 0.1


def _model():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1, name="out")(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def _data(n=32):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype("float32")
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, x.sum(1, keepdims=True))).batch(8).repeat()


def test_a_run_that_fails_before_its_first_epoch_leaves_no_folder(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="data broke"):
        with runs.Run(out, Cfg()) as run:
            run.start(_model())
            raise RuntimeError("data broke")
    assert not out.exists()


def test_a_users_empty_folder_is_kept_but_left_empty(tmp_path):
    with pytest.raises(RuntimeError):
        with runs.Run(tmp_path, Cfg()) as run:
            run.start(_model())
            raise RuntimeError("data broke")
    assert tmp_path.is_dir() and not any(tmp_path.iterdir())


def test_a_folder_holding_other_files_is_never_emptied(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError):
        with runs.Run(tmp_path, Cfg()) as run:
            run.start(_model())
            raise RuntimeError("data broke")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_out_path_that_is_a_file_is_refused_before_anything_is_written(tmp_path):
    target = tmp_path / "result.txt"
    target.write_text("keep")
    with pytest.raises(FileExistsError, match="--out .*result.txt is a file"):
        runs.Run(target, Cfg())
    assert target.read_text() == "keep"


def test_finish_writes_weights_result_and_status_and_resume_continues(tmp_path):
    out = tmp_path / "run"
    with runs.Run(out, Cfg(epochs=1)) as run:
        model = _model()
        run.start(model)
        run.train(model, _data(), steps=4, epochs=1, verbose=0)
    # an epoch is committed, so a later failure keeps the folder
    assert (out / "checkpoint-epoch0001.keras").exists()
    with pytest.raises(RuntimeError):
        with runs.Run(out, Cfg(epochs=2), resume=True) as run:
            model = _model()
            run.start(model)
            raise RuntimeError("killed")
    assert (out / "checkpoint-epoch0001.keras").exists()
    with runs.Run(out, Cfg(epochs=2), resume=True) as run:
        model = _model()
        state = run.start(model)
        assert state["epoch"] == 1
        run.train(model, _data(), steps=4, epochs=2, verbose=0)
        run.finish(model, {"loss": 1.0})
    state = io.read_json(out / "state.json")
    assert state["status"] == "completed" and state["epoch"] == 2 and len(state["history"]) == 2
    assert io.read_json(out / "result.json") == {"loss": 1.0}
    assert (out / "weights.weights.h5").exists()
    assert not (out / "checkpoint-epoch0001.keras").exists()


def test_resume_with_another_configuration_is_refused(tmp_path):
    with runs.Run(tmp_path, Cfg(epochs=1)) as run:
        model = _model()
        run.start(model)
        run.train(model, _data(), steps=2, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"different configuration .*'lr': \(0.1, 0.2\)"):
        runs.Run(tmp_path, Cfg(epochs=2, lr=0.2), resume=True)
