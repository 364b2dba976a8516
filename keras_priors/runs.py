"""The run folder protocol shared by classification and segmentation training.

A run folder holds `config.json` (what defines the run; checked on resume),
`checkpoint-epochNNNN.keras` (model + optimizer after the last completed epoch),
`state.json` (the commit point: it names that checkpoint and holds the RNG states `.keras`
files leave out, the history and the status), `log.csv`, and at the end
`weights.weights.h5` and `result.json`. A run resumes exactly after its last committed
epoch, also after a kill; a non-finite loss stops it, records why in `state.json` and keeps
the last good checkpoint. A run that fails before its first epoch is committed removes the
folder it created, so no empty run folder is left behind.

>>> with Run("runs/x", cfg, resume=False) as run:            # doctest: +SKIP
...     with run.scope():
...         model = build_and_compile()
...     run.start(model, files={"split.json": split})
...     run.train(model, batches, steps=100, epochs=cfg.epochs)
...     run.finish(model, {"accuracy": 0.9})
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, fields
from pathlib import Path

import keras
import numpy as np

from . import io

FILES = ("config.json", "state.json", "log.csv", "result.json")


# ------------------------------------------------------------------ checkpoints
def rng_states(model):
    """{layer name: [seed-generator states]}: the RNG positions `.keras` files leave out."""
    out = {}
    for layer in model.layers:
        states = [v for v in layer.variables if v.path.endswith("seed_generator_state")]
        if states:
            out[layer.name] = [np.asarray(v).tolist() for v in states]
    return out


def set_rng_states(model, states):
    for name, values in states.items():
        variables = [v for v in model.get_layer(name).variables
                     if v.path.endswith("seed_generator_state")]
        for v, value in zip(variables, values):
            v.assign(np.asarray(value, dtype=v.dtype))


def checkpoint_path(out, state):
    """The checkpoint a run's state.json names (None before the first epoch ends)."""
    if state.get("checkpoint"):
        return Path(out) / state["checkpoint"]
    legacy = Path(out) / "checkpoint.keras"  # runs written before per-epoch names
    return legacy if state.get("epoch") and legacy.exists() else None


def restore_checkpoint(model, path, rng=None):
    """Copy every variable (weights, norm statistics, RNG states, optimizer slots and step)
    of a `.keras` checkpoint into a freshly built and compiled `model`.

    Rebuilding instead of using the loaded model keeps what a `.keras` file does not store,
    such as the optimizer's weight-decay exclusions.
    """
    saved = keras.saving.load_model(path)
    theirs_by_layer = {layer.name: layer for layer in saved.layers}
    for layer in model.layers:  # layer names are stable; variable paths are not
        mine = layer.variables
        theirs = theirs_by_layer[layer.name].variables if layer.name in theirs_by_layer else []
        if [tuple(v.shape) for v in mine] != [tuple(v.shape) for v in theirs]:
            raise ValueError(f"checkpoint {path} does not match the model at layer {layer.name!r}")
        for a, b in zip(mine, theirs):
            a.assign(b)
    set_rng_states(model, rng or {})
    model.optimizer.build(model.trainable_variables)
    if len(model.optimizer.variables) != len(saved.optimizer.variables):
        raise ValueError(f"checkpoint {path}: optimizer state does not match this configuration")
    for mine, theirs in zip(model.optimizer.variables, saved.optimizer.variables):
        mine.assign(theirs)


# ------------------------------------------------------------------- callbacks
class RunKeeper(keras.callbacks.Callback):
    """Per-epoch atomic checkpoint + state; stops on a NaN/inf loss without saving it."""

    def __init__(self, out: Path, state: dict):
        super().__init__()
        self.out, self.state = Path(out), state
        self.bad_loss = None
        self._t0 = None

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.bad_loss = {"epoch": self.state["epoch"] + 1, "batch": batch, "loss": float(loss)}
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.bad_loss is not None:
            return
        previous = checkpoint_path(self.out, self.state)
        name = f"checkpoint-epoch{epoch + 1:04d}.keras"
        io.save_model(self.model, self.out / name)
        self.state["checkpoint"] = name
        self.state["rng"] = rng_states(self.model)
        self.state["epoch"] = epoch + 1
        self.state["train_seconds"] += time.perf_counter() - self._t0
        self.state["history"].append({k: float(v) for k, v in (logs or {}).items()
                                      if math.isfinite(float(v))})
        io.write_json(self.out / "state.json", self.state)  # the commit point
        if previous is not None and previous.name != name and previous.exists():
            previous.unlink()


def precision_policy(mixed):
    """The Keras dtype policy of a run: "float32", or with `mixed` "mixed_bfloat16" on CPU
    (AVX-512 BF16 / AMX CPUs run it natively) and "mixed_float16" where an accelerator is
    visible (Keras then scales the loss itself). Variables stay float32 either way."""
    if not mixed:
        return "float32"
    gpu = any(not d.lower().startswith("cpu") for d in keras.distribution.list_devices())
    return "mixed_float16" if gpu else "mixed_bfloat16"


# ------------------------------------------------------------------ the folder
def _config_dict(cfg):
    return json.loads(json.dumps(asdict(cfg), default=io.jsonable))


# fields a resumed run may change: the length of the run, and how the backward pass
# trades memory for time (the gradients are the same)
MAY_CHANGE = ("epochs", "recompute")


def check_run_folder(out: Path, cfg, resume: bool):
    """The saved state to resume from (None for a fresh start); refuses to overwrite a run
    or to resume one with a different configuration (`MAY_CHANGE` may)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder (nothing was written)")
    existing = [f for f in FILES if (out / f).exists()] + sorted(
        p.name for p in out.glob("checkpoint-epoch*.keras"))
    if resume:
        state = io.read_json(out / "state.json") if (out / "state.json").exists() else {}
        ckpt = checkpoint_path(out, state)
        if ckpt is None or not ckpt.exists():
            if existing:
                raise ValueError(f"--resume: {out} has no completed epoch to resume from")
            return None  # nothing to resume: a fresh start
        saved, now = io.read_json(out / "config.json"), _config_dict(cfg)
        # a field added since the run was saved counts as its default
        defaults = {f.name: f.default for f in fields(cfg)}
        mismatched = {k: (saved.get(k, defaults.get(k)), v) for k, v in now.items()
                      if k not in MAY_CHANGE and saved.get(k, defaults.get(k)) != v}
        if mismatched:
            raise ValueError(
                f"--resume: {out} holds a run with a different configuration "
                f"(saved vs now: {mismatched}); use another --out folder"
            )
        return state
    if existing:
        raise ValueError(
            f"{out} already holds a run ({', '.join(existing)}); pass --resume to continue it "
            "or choose another --out folder (nothing is overwritten)"
        )
    return None


class Run:
    """One training run writing into folder `out` (see the module docstring).

    `strategy` is None / "default", "mirrored", "multiworker" or a tf.distribute strategy;
    under a strategy other than the default one only the chief writes into `out`, the other
    workers into a temporary folder that is deleted.
    """

    def __init__(self, out, cfg, resume=False, strategy=None):
        from . import distribute

        self.out, self.cfg = Path(out), cfg
        self.strategy = distribute.get_strategy(strategy or "default")
        self.distributed = not distribute.is_default(self.strategy)
        self.chief = distribute.is_chief() if self.distributed else True
        self._made = self.chief and not self.out.exists()
        self._was_empty = self.chief and self.out.is_dir() and not any(self.out.iterdir())
        if self.chief:
            self.state = check_run_folder(self.out, cfg, resume)
            self.out.mkdir(parents=True, exist_ok=True)
        else:
            self.state = (check_run_folder(self.out, cfg, True)
                          if resume and self.out.is_dir() else None)
        if self.distributed:
            distribute.per_replica_batch(cfg.batch_size, self.strategy)
        self.writes = distribute.WriteFolder(self.out, self.chief)
        self.path = self.writes.path  # where this process writes

    @property
    def resuming(self):
        return self.state is not None

    def __enter__(self):
        keras.utils.set_random_seed(self.cfg.seed)
        if keras.backend.backend() == "tensorflow":  # same seed, same numbers, also on resume
            import tensorflow as tf

            tf.config.experimental.enable_op_determinism()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.writes.close()
        committed = bool(self.state and (self.state.get("epoch") or self.state.get("bad_loss")))
        if exc_type is not None and self.chief and not committed and (self._made
                                                                        or self._was_empty):
            self._remove_folder()
        return False

    def _remove_folder(self):
        if self._made:
            shutil.rmtree(self.out, ignore_errors=True)
        else:  # the user's own empty folder stays, emptied of what this run wrote
            for child in self.out.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()

    def scope(self):
        from . import distribute

        return distribute.scope(self.strategy)

    def start(self, model, files=None):
        """Write `config.json` (and `files`: {name: JSON object}) on a fresh run, or restore
        `model` (built and compiled) from the last checkpoint when resuming."""
        if self.state is None:
            self.state = {"epoch": 0, "train_seconds": 0.0, "history": [], "status": "running"}
            io.write_json(self.path / "config.json", _config_dict(self.cfg))
            for name, obj in (files or {}).items():
                io.write_json(self.path / name, obj)
            io.write_json(self.path / "state.json", self.state)
        else:
            with self.scope():
                restore_checkpoint(model, checkpoint_path(self.out, self.state),
                                   self.state.get("rng"))
        return self.state

    def train(self, model, batches, *, steps, epochs, validation_data=None, metrics=None,
              callbacks=(), verbose="auto", tensorboard=False):
        """`model.fit` (or `distribute.train_loop` under a strategy) from the first epoch not
        yet committed to `epochs`, checkpointing every epoch. `callbacks` run before the
        checkpoint, so what they add to the logs is saved with the epoch."""
        from . import distribute

        keeper = RunKeeper(self.path, self.state)
        first = self.state["epoch"]
        if first < epochs:
            callbacks = [*callbacks, keeper,
                         keras.callbacks.CSVLogger(self.path / "log.csv", append=True)]
            if tensorboard:
                callbacks.append(keras.callbacks.TensorBoard(self.path / "tensorboard",
                                                             write_graph=False))
            if self.distributed:
                distribute.train_loop(
                    model, batches, strategy=self.strategy, epochs=epochs, initial_epoch=first,
                    steps_per_epoch=steps, global_batch_size=self.cfg.batch_size,
                    validation_data=validation_data, verbose=verbose, metrics=metrics,
                    callbacks=callbacks)
            else:
                model.fit(batches, epochs=epochs, initial_epoch=first, steps_per_epoch=steps,
                          validation_data=validation_data, verbose=verbose, shuffle=False,
                          callbacks=callbacks)
        if keeper.bad_loss is not None:
            self._stop_on(keeper.bad_loss)

    def _stop_on(self, bad):
        self.state["status"] = "stopped: non-finite loss"
        self.state["bad_loss"] = bad
        io.write_json(self.path / "state.json", self.state)
        kept = checkpoint_path(self.out, self.state)
        raise FloatingPointError(
            f"loss became {bad['loss']} at epoch {bad['epoch']} batch {bad['batch']}; "
            + (f"the last good checkpoint ({kept}, epoch {self.state['epoch']}) is kept"
               if kept else "no epoch had completed, so there is no checkpoint")
        )

    def finish(self, model, result):
        """Final weights, `result.json` and the status "completed"."""
        io.save_weights(model, self.path / "weights.weights.h5")
        self.state["status"] = "completed"
        io.write_json(self.path / "state.json", self.state)
        io.write_json(self.path / "result.json", result)
        return result


__all__ = ["FILES", "Run", "RunKeeper", "check_run_folder", "checkpoint_path",
           "restore_checkpoint", "rng_states", "set_rng_states"]
