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

import time
from dataclasses import asdict, dataclass

import keras
import numpy as np

from . import complexity, runs, zoo
from . import data as data_lib
from . import layers as _layers  # noqa: F401  (registers the layers checkpoints contain)


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
    jit_compile: bool = False  # XLA-compile the training step
    augment: bool = True
    width: float | None = None  # width multiplier for families that take one (nin, resnet_cifar)
    limit_train: int | None = None
    limit_test: int | None = None
    validation: int = 0  # hold out the last N training examples; 0: validate on the test set
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
        if isinstance(self.validation, bool) or not isinstance(self.validation, int) \
                or self.validation < 0:
            raise ValueError("validation must be a number of training examples to hold out "
                             f"(0 for none), received validation={self.validation!r}")
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


def compile_model(model, cfg, steps):
    model.compile(
        optimizer=make_optimizer(cfg, steps),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=cfg.jit_compile,
    )


# ------------------------------------------------------------------------ fit
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
    with runs.Run(out, cfg, resume, strategy) as run:
        keras.mixed_precision.set_global_policy(runs.precision_policy(cfg.mixed_precision))
        try:
            data = data or data_lib.load(cfg.data, cfg.data_dir, cfg.limit_train,
                                         cfg.limit_test)
            if cfg.validation:
                data = data_lib.hold_out(data, cfg.validation)
            steps = data_lib.steps_per_epoch(data, cfg.batch_size)
            with run.scope():
                model = build_model(cfg, data)
                compile_model(model, cfg, steps)
            state = run.start(model)
            if state["epoch"] < cfg.epochs:
                batches = data_lib.train_batches(data, cfg.batch_size, cfg.seed, state["epoch"],
                                                 cfg.epochs, cfg.augment)
                run.train(model, batches, steps=steps, epochs=cfg.epochs,
                          validation_data=data_lib.eval_batches(
                              data, split="validation" if cfg.validation else "test"),
                          verbose=verbose,
                          metrics={"accuracy": _distributed_accuracy()}, tensorboard=True)
            extra = {"epochs": state["epoch"], "train_seconds": round(state["train_seconds"], 2),
                     "seed": cfg.seed, "data": cfg.data, "config": asdict(cfg)}
            if cfg.validation:
                extra.update(_validation_summary(state["history"]))
            if run.distributed:
                extra["replicas"] = run.strategy.num_replicas_in_sync
            return run.finish(model, report(model, data, cfg.model, extra=extra,
                                            local=run.distributed))
        finally:
            keras.mixed_precision.set_global_policy("float32")


def _validation_summary(history):
    """The held-out split's accuracy at the end and at its best epoch (1-based)."""
    accs = [h.get("val_accuracy") for h in history]
    if not accs or accs[-1] is None:
        return {}
    best = max(range(len(accs)), key=lambda i: accs[i] if accs[i] is not None else -1)
    return {"validation_accuracy": accs[-1], "best_validation_accuracy": accs[best],
            "best_validation_epoch": best + 1}


def _distributed_accuracy():
    from .distribute import categorical_accuracy

    return categorical_accuracy


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
