"""Training wiring: optimizer and schedule, per-epoch atomic checkpoints, exact resume,
NaN guard, CSV / TensorBoard logs and a final JSON report.

    keras-priors train nin_root8 --data fashion_mnist --epochs 10 --out runs/nin_root8
    keras-priors train nin_root8 --data fashion_mnist --epochs 10 --out runs/nin_root8 --resume

An output folder holds `config.json`, `checkpoint-epochNNNN.keras` (model + optimizer state
after the last completed epoch), `state.json` (the commit point: it names that checkpoint
and holds the dropout RNG states, which `.keras` files do not store), `log.csv`,
`tensorboard/`, and at the end `result.json` and `weights.weights.h5`. `--resume` continues after the last completed
epoch with the same optimizer state, schedule position and data order (an epoch's batches
depend only on the seed and the epoch), also after the process was killed. A NaN or inf
loss stops the run and leaves the last good checkpoint in place.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

from . import complexity, io, zoo
from . import data as data_lib
from . import layers as _layers  # noqa: F401  (registers the layers checkpoints contain)

FILES = ("config.json", "state.json", "log.csv", "result.json")


@dataclass
class TrainConfig:
    """Everything that defines a run; saved as config.json and checked on resume."""

    model: str
    data: str = "fashion_mnist"
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"  # "sgd" (momentum, nesterov) or "adamw"
    learning_rate: float | None = None  # default: 0.05 * batch/128 (sgd), 1e-3 (adamw)
    momentum: float = 0.9
    weight_decay: float | None = None  # default: 5e-4 (sgd), 0.05 (adamw)
    schedule: str = "cosine"  # "cosine" (with linear warmup) or "step" (x0.1 at 50%, 75%)
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    seed: int = 0
    mixed_precision: bool = False
    augment: bool = True
    width: float | None = None  # width multiplier for families that take one (nin, resnet_cifar)
    limit_train: int | None = None
    limit_test: int | None = None
    data_dir: str | None = None

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', received optimizer={self.optimizer!r}")
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"schedule must be 'cosine' or 'step', received schedule={self.schedule!r}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, received {name}={value!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), received {self.label_smoothing!r}")

    @property
    def lr(self):
        if self.learning_rate is not None:
            return self.learning_rate
        return 0.05 * self.batch_size / 128 if self.optimizer == "sgd" else 1e-3

    @property
    def wd(self):
        if self.weight_decay is not None:
            return self.weight_decay
        return 5e-4 if self.optimizer == "sgd" else 0.05


# ---------------------------------------------------------------- model, optimizer
def build_model(cfg: TrainConfig, data):
    kwargs = {} if cfg.width is None else {"width": cfg.width}
    model = zoo.load(cfg.model, input_shape=data.input_shape, classes=data.num_classes, **kwargs)
    if cfg.mixed_precision:  # keep the softmax output in float32
        out = keras.layers.Activation("linear", dtype="float32", name="float32_output")(model.output)
        model = keras.Model(model.input, out, name=model.name)
    return model


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)
    if cfg.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else cfg.lr, max(total - warmup, 1), alpha=0.0,
            warmup_target=cfg.lr if warmup else None, warmup_steps=warmup,
        )
    else:
        bounds = [int(total * 0.5), int(total * 0.75)]
        lr = keras.optimizers.schedules.PiecewiseConstantDecay(
            bounds, [cfg.lr, cfg.lr * 0.1, cfg.lr * 0.01]
        )
    if cfg.optimizer == "sgd":
        opt = keras.optimizers.SGD(lr, momentum=cfg.momentum, nesterov=True,
                                   weight_decay=cfg.wd)
    else:
        opt = keras.optimizers.AdamW(lr, weight_decay=cfg.wd)
    opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return opt


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
    """Copy every variable (weights, BN statistics, RNG states, optimizer slots and step)
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


def compile_model(model, cfg, steps):
    model.compile(
        optimizer=make_optimizer(cfg, steps),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )


# ------------------------------------------------------------------- callbacks
class RunKeeper(keras.callbacks.Callback):
    """Per-epoch atomic checkpoint + state; stops on a NaN/inf loss without saving it."""

    def __init__(self, out: Path, state: dict):
        super().__init__()
        self.out, self.state = out, state
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
        self.state["history"].append({k: float(v) for k, v in (logs or {}).items()})
        io.write_json(self.out / "state.json", self.state)  # the commit point
        if previous is not None and previous.name != name and previous.exists():
            previous.unlink()


# ------------------------------------------------------------------------ fit
def check_run_folder(out: Path, cfg, resume: bool):
    """The saved state to resume from (None for a fresh start); refuses to overwrite a run
    or to resume one with a different configuration."""
    existing = [f for f in FILES if (out / f).exists()] + sorted(
        p.name for p in out.glob("checkpoint-epoch*.keras"))
    if resume:
        state = io.read_json(out / "state.json") if (out / "state.json").exists() else {}
        ckpt = checkpoint_path(out, state)
        if ckpt is None or not ckpt.exists():
            if existing:
                raise ValueError(f"--resume: {out} has no completed epoch to resume from")
            return None  # nothing to resume: a fresh start
        saved = io.read_json(out / "config.json")
        mismatched = {k: (saved.get(k), v) for k, v in asdict(cfg).items()
                      if k not in ("epochs",) and saved.get(k) != _jsonable_value(v)}
        if mismatched:
            raise ValueError(
                f"--resume: {out} holds a run with a different configuration "
                f"(saved vs now: {mismatched}); use another --out folder"
            )
        return io.read_json(out / "state.json")
    if existing:
        raise ValueError(
            f"{out} already holds a run ({', '.join(existing)}); pass --resume to continue it "
            "or choose another --out folder (nothing is overwritten)"
        )
    return None


def _jsonable_value(v):
    return json.loads(json.dumps(v, default=io.jsonable))


def open_run(out: Path, cfg, resume, strategy):
    """-> (strategy, state or None, the folder this process writes to) for a run in `out`.

    The chief (the only process without a strategy) checks and writes `out`; other
    workers only read it to resume, and write into a temporary folder that is deleted.
    """
    from . import distribute

    strategy = distribute.get_strategy(strategy or "default")
    distributed = not distribute.is_default(strategy)
    chief = distribute.is_chief() if distributed else True
    if chief:
        out.mkdir(parents=True, exist_ok=True)
        state = check_run_folder(out, cfg, resume)
    else:
        state = check_run_folder(out, cfg, True) if resume and out.is_dir() else None
    if distributed:
        distribute.per_replica_batch(cfg.batch_size, strategy)
    return strategy, state, distribute.WriteFolder(out, chief)


def fit(cfg: TrainConfig, out, resume=False, verbose="auto", data=None, strategy=None):
    """Train `cfg.model` on `cfg.data` into folder `out`; returns the result dict.

    `strategy` is None / "default", "mirrored", "multiworker" or a tf.distribute strategy
    (keras_priors.distribute). `cfg.batch_size` is the global batch, split over the
    replicas; a run may resume under another strategy or number of workers. Under a
    strategy other than the default one, training runs through `distribute.train_loop` and
    only the chief writes into `out`.

    >>> cfg = TrainConfig("nin_root8", epochs=1, width=0.25, limit_train=512,
    ...                   limit_test=256)                                  # doctest: +SKIP
    >>> fit(cfg, "runs/demo")["accuracy"]                                  # doctest: +SKIP
    """
    from . import distribute

    out = Path(out)
    strategy, state, writes = open_run(out, cfg, resume, strategy)
    distributed = not distribute.is_default(strategy)
    keras.utils.set_random_seed(cfg.seed)
    if keras.backend.backend() == "tensorflow":  # same seed, same numbers, also on resume
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(_policy(cfg))
    try:
        data = data or data_lib.load(cfg.data, cfg.data_dir, cfg.limit_train, cfg.limit_test)
        steps = data_lib.steps_per_epoch(data, cfg.batch_size)
        with distribute.scope(strategy):
            model = build_model(cfg, data)
            compile_model(model, cfg, steps)
            if state is None:
                state = {"epoch": 0, "train_seconds": 0.0, "history": [], "status": "running"}
                io.write_json(writes.path / "config.json", asdict(cfg))
                io.write_json(writes.path / "state.json", state)
            else:
                restore_checkpoint(model, checkpoint_path(out, state), state.get("rng"))
        keeper = RunKeeper(writes.path, state)
        first = state["epoch"]
        if first < cfg.epochs:
            batches = data_lib.train_batches(data, cfg.batch_size, cfg.seed, first, cfg.epochs,
                                             cfg.augment)
            callbacks = [keeper, keras.callbacks.CSVLogger(writes.path / "log.csv", append=True),
                         keras.callbacks.TensorBoard(writes.path / "tensorboard",
                                                     write_graph=False)]
            if distributed:
                distribute.train_loop(
                    model, batches, strategy=strategy, epochs=cfg.epochs, initial_epoch=first,
                    steps_per_epoch=steps, global_batch_size=cfg.batch_size,
                    validation_data=data_lib.eval_batches(data), verbose=verbose,
                    metrics={"accuracy": distribute.categorical_accuracy}, callbacks=callbacks)
            else:
                model.fit(batches, epochs=cfg.epochs, initial_epoch=first, steps_per_epoch=steps,
                          validation_data=data_lib.eval_batches(data), verbose=verbose,
                          shuffle=False, callbacks=callbacks)
        if keeper.bad_loss is not None:
            state["status"] = "stopped: non-finite loss"
            state["bad_loss"] = keeper.bad_loss
            io.write_json(writes.path / "state.json", state)
            kept = checkpoint_path(out, state)
            raise FloatingPointError(
                f"loss became {keeper.bad_loss['loss']} at epoch {keeper.bad_loss['epoch']} "
                f"batch {keeper.bad_loss['batch']}; "
                + (f"the last good checkpoint ({kept}, epoch {state['epoch']}) is kept"
                   if kept else "no epoch had completed, so there is no checkpoint")
            )
        extra = {"epochs": state["epoch"], "train_seconds": round(state["train_seconds"], 2),
                 "seed": cfg.seed, "data": cfg.data, "config": asdict(cfg)}
        if distributed:
            extra["replicas"] = strategy.num_replicas_in_sync
        result = report(model, data, cfg.model, extra=extra, local=distributed)
        io.save_weights(model, writes.path / "weights.weights.h5")
        state["status"] = "completed"
        io.write_json(writes.path / "state.json", state)
        io.write_json(writes.path / "result.json", result)
        return result
    finally:
        keras.mixed_precision.set_global_policy("float32")
        writes.close()


def _policy(cfg):
    if not cfg.mixed_precision:
        return "float32"
    gpu = any(not d.lower().startswith("cpu") for d in keras.distribution.list_devices())
    return "mixed_float16" if gpu else "mixed_bfloat16"


def report(model, data, name, batch_size=256, extra=None, local=False):
    """Test accuracy and loss, MACs and params of `model` on `data`, as one dict.

    `local=True` predicts with a plain call on this process's copy of the weights (for a
    model trained under a tf.distribute strategy, where `model.predict` may not run)."""
    t0 = time.perf_counter()
    batches = data_lib.eval_batches(data, batch_size)
    if local:
        from .distribute import predict_local

        probs = predict_local(model, batches)
    else:
        probs = model.predict(batches, verbose=0)
    if "test" in data.arrays:
        labels = np.asarray(data.arrays["test"][1], dtype=np.int64)
    else:
        labels = np.array([int(y) for _, y in data.test().as_numpy_iterator()])
    probs = np.asarray(probs, dtype=np.float64)
    accuracy = float(np.mean(np.argmax(probs, -1) == labels))
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1))))
    prof = complexity.profile(model, verbose=False)
    result = {"model": name, "accuracy": accuracy, "loss": loss, "test_examples": len(labels),
              "macs": prof.total_macs, "params": prof.total_params,
              "eval_seconds": round(time.perf_counter() - t0, 2)}
    result.update(extra or {})
    return result


def evaluate(name, weights, data="fashion_mnist", data_dir=None, limit_test=None,
             batch_size=256, width=None):
    """`report` for a zoo model with weights (a tag or a path) on a dataset."""
    ds = data_lib.load(data, data_dir, limit_train=1, limit_test=limit_test)
    kwargs = {} if width is None else {"width": width}
    model = zoo.load(name, weights=weights, input_shape=ds.input_shape, classes=ds.num_classes,
                     **kwargs)
    return report(model, ds, name, batch_size, extra={"weights": str(weights), "data": data})


__all__ = ["TrainConfig", "build_model", "evaluate", "fit", "make_optimizer", "report"]
