"""tf.distribute strategies for multi-device and multi-worker runs, and a training loop for
the strategies where `model.fit` cannot run.

    strategy = get_strategy("mirrored", logical_cpus=2)   # before TensorFlow initialises
    strategy = get_strategy("multiworker")                # TF_CONFIG names the cluster

`training.fit(..., strategy=...)` and `volumetric.train.fit_segmentation(..., strategy=...)`
take a name or a strategy object. With Keras 3.15 on TF 2.21, `model.fit` works under
MirroredStrategy but not under MultiWorkerMirroredStrategy (keras-team/keras#20585), so
every strategy other than the default one trains through `train_loop`: the dataset is
distributed with `strategy.experimental_distribute_dataset` (the batch the user asked for
is the GLOBAL batch, each replica gets `global / replicas`), a `tf.function` step runs on
every replica with `strategy.run` (GradientTape, loss averaged over the global batch with
`tf.nn.compute_average_loss`, `optimizer.apply_gradients`), and Keras callbacks are called
as `fit` calls them, so `runs.RunKeeper` checkpoints and resume work unchanged.

Numbers: gradients are summed over replicas, so a step equals the single-device step on the
global batch. Batch normalization is switched to synchronized statistics (over the global
batch) while training under more than one replica; dropout masks are drawn per replica, so
a model with dropout trains equivalently but not bit-identically to a single device.

Only the chief (TF_CONFIG task "chief", or "worker" 0 when there is no chief) keeps
checkpoints and logs: the other workers take part in every save (reading distributed
variables can be a collective) but write into a temporary folder that is deleted.
"""

from __future__ import annotations

import atexit
import contextlib
import difflib
import json
import os
import shutil
import tempfile

import numpy as np

STRATEGIES = ("default", "mirrored", "multiworker")
COLLECTIVE_TIMEOUT_S = 300  # a collective that waits longer than this fails instead of hanging


# ----------------------------------------------------------------------- cluster
def tf_config():
    """The parsed TF_CONFIG of this process (None when unset); raises on a malformed one."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e}); received TF_CONFIG={raw!r}") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise ValueError(f"TF_CONFIG needs a 'cluster' mapping of task types to host:port lists, "
                         f"received TF_CONFIG={raw!r}")
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError(f"TF_CONFIG needs 'task': {{'type': ..., 'index': ...}}, "
                         f"received TF_CONFIG={raw!r}")
    hosts = config["cluster"].get(task["type"])
    if not isinstance(hosts, list) or not 0 <= int(task["index"]) < len(hosts):
        raise ValueError(f"TF_CONFIG task {task} is not in its cluster {config['cluster']}")
    return config


def is_chief(config=None):
    """True for the process that writes checkpoints and logs: TF_CONFIG's "chief" task, or
    "worker" 0 when the cluster has no chief; True without TF_CONFIG (a single process)."""
    config = tf_config() if config is None else config
    if not config:
        return True
    task_type, index = config["task"]["type"], int(config["task"]["index"])
    if task_type == "chief":
        return True
    return task_type == "worker" and index == 0 and "chief" not in config["cluster"]


def num_workers(config=None):
    config = tf_config() if config is None else config
    if not config:
        return 1
    return sum(len(config["cluster"].get(t, [])) for t in ("chief", "worker"))


# ---------------------------------------------------------------------- devices
def configure_logical_cpus(n):
    """Split the host CPU into `n` logical devices; must run before TensorFlow initialises."""
    import tensorflow as tf

    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"logical_cpus must be a positive integer, received logical_cpus={n!r}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == n:
        return  # already configured this way
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        raise RuntimeError(
            f"logical_cpus={n}: TensorFlow has already initialised its devices ({have} logical "
            "CPU device(s)), so they can no longer be split. Call "
            "keras_priors.distribute.get_strategy(..., logical_cpus=N) (or "
            "configure_logical_cpus) first thing in the process, before any model, tensor "
            "or dataset is created, or pass --logical-cpus N on the command line"
        ) from None


def get_strategy(name="default", devices=None, logical_cpus=None):
    """A tf.distribute strategy by name: "default" (no distribution), "mirrored" (all local
    GPUs, the given `devices`, or `logical_cpus` logical CPU devices) or "multiworker"
    (MultiWorkerMirroredStrategy over the cluster in TF_CONFIG). A strategy object is
    returned as it is. Under another Keras backend (JAX, torch) only "default" exists, and it
    is None: no distribution."""
    import keras

    if keras.backend.backend() != "tensorflow":
        if name in (None, "default") and not devices and logical_cpus is None:
            return None
        raise ValueError(f"strategy={name!r} needs the TensorFlow backend (tf.distribute); "
                         f"this process runs Keras on {keras.backend.backend()!r}: use "
                         "strategy='default'")
    import tensorflow as tf

    if isinstance(name, tf.distribute.Strategy):
        return name
    if name not in STRATEGIES:
        close = difflib.get_close_matches(str(name), STRATEGIES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"strategy must be one of {STRATEGIES}, received strategy={name!r}{hint}")
    if logical_cpus is not None:
        configure_logical_cpus(logical_cpus)
    if name == "default":
        if devices:
            raise ValueError("devices are only used by strategy='mirrored'")
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if devices is None:  # logical CPUs when asked for, else the GPUs, else the CPU
            gpus = [] if logical_cpus else [d.name for d in tf.config.list_logical_devices("GPU")]
            devices = gpus or [d.name for d in tf.config.list_logical_devices("CPU")]
        devices = list(devices)
        if not devices:
            raise ValueError("strategy='mirrored' found no devices")
        cross = None
        if all("CPU" in d.upper() for d in devices):
            cross = tf.distribute.ReductionToOneDevice(reduce_to_device=devices[0])
        return tf.distribute.MirroredStrategy(devices, cross_device_ops=cross)
    config = tf_config()
    if config is None:
        raise ValueError(
            "strategy='multiworker' needs TF_CONFIG, e.g. TF_CONFIG='{\"cluster\": {\"worker\": "
            "[\"host1:12345\", \"host2:12345\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}' "
            "(see docs/scaling.md)")
    if devices:
        raise ValueError("devices are not used by strategy='multiworker' (each worker uses its "
                         "local GPUs, or its CPU)")
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=float(os.environ.get("KERAS_PRIORS_COLLECTIVE_TIMEOUT",
                                             COLLECTIVE_TIMEOUT_S)))
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def is_default(strategy):
    """True for "default"/None or TensorFlow's default (non-distributing) strategy."""
    if strategy is None or strategy == "default":
        return True
    import tensorflow as tf

    return (isinstance(strategy, tf.distribute.Strategy)
            and strategy is tf.distribute.get_strategy()
            and not tf.distribute.has_strategy())


def scope(strategy):
    """`strategy.scope()`, or a no-op for the default strategy."""
    return contextlib.nullcontext() if is_default(strategy) else strategy.scope()


def replicas(strategy):
    return 1 if is_default(strategy) else strategy.num_replicas_in_sync


def per_replica_batch(global_batch, strategy):
    n = replicas(strategy)
    if global_batch % n:
        raise ValueError(f"batch_size={global_batch} (the global batch) is not divisible by the "
                         f"{n} replicas of the strategy")
    return global_batch // n


# -------------------------------------------------------------------- chief-only
class WriteFolder:
    """Where this worker writes: the run folder on the chief, a temporary folder on the other
    workers (deleted by `close`, or at the latest when the process exits)."""

    def __init__(self, out, chief):
        self.out, self.chief = out, chief
        self.path = out
        if not chief:
            self.path = type(out)(tempfile.mkdtemp(prefix="keras-priors-worker-"))
            atexit.register(self.close)

    def close(self):
        if not self.chief:
            shutil.rmtree(self.path, ignore_errors=True)


# --------------------------------------------------------------------- the loop
def synchronize_batch_norm(model, on=True):
    """Batch statistics over the global batch (all replicas) instead of each replica's."""
    import keras

    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = on


def _all_layers(model):
    """Every layer inside `model`, nested models' layers included (public `.layers` only)."""
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _all_layers(layer)


def _per_example_loss(loss):
    """A copy of a Keras loss object that returns one value per example."""
    import keras

    if isinstance(loss, keras.losses.Loss):
        config = dict(loss.get_config(), reduction="none")
        return type(loss).from_config(config)
    if callable(loss):
        return loss
    raise ValueError(f"the model must be compiled with a Keras loss object, received {loss!r}")


def train_loop(model, dataset, *, strategy, epochs, steps_per_epoch, global_batch_size,
               initial_epoch=0, callbacks=(), verbose="auto", metrics=None,
               validation_data=None):
    """Train a compiled `model` on `dataset` (batches of `global_batch_size` examples,
    epochs back to back, as for `model.fit`) under `strategy`; returns the History.

    `metrics` maps a log name to a per-example function `f(y_true, y_pred)` (averaged over
    every example of the epoch); `validation_data` adds `val_loss` and `val_<metric>` at each
    epoch end, computed by every worker on its own copy of the weights. Callbacks are called
    as `model.fit` calls them (on_train_begin, on_epoch_begin, on_train_batch_begin/end,
    on_epoch_end with the epoch logs, on_train_end); the progress bar shows on the chief.
    """
    import keras
    import tensorflow as tf

    metrics = dict(metrics or {})
    per_replica_batch(global_batch_size, strategy)
    loss_fn = _per_example_loss(model.loss)
    if replicas(strategy) > 1:
        synchronize_batch_norm(model)

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dist = strategy.experimental_distribute_dataset(dataset.with_options(options))

    def replica_step(batch):
        x, y = batch
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            per_example = _flat_mean(loss_fn(y, y_pred))
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled = model.optimizer.scale_loss(loss)
        variables = model.trainable_variables
        grads = tape.gradient(scaled, variables)
        model.optimizer.apply_gradients(zip(grads, variables))
        sums = [tf.reduce_sum(tf.cast(per_example, tf.float32))]
        sums += [tf.reduce_sum(tf.cast(_flat_mean(f(y, y_pred)), tf.float32))
                 for f in metrics.values()]
        return tf.stack(sums)

    @tf.function
    def train_step(iterator):
        sums = strategy.run(replica_step, args=(next(iterator),))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)

    names = ["loss", *metrics]
    chief = is_chief()
    callbacks = keras.callbacks.CallbackList(
        list(callbacks), add_history=True, add_progbar=bool(verbose) and chief, model=model,
        verbose=1 if verbose == "auto" else verbose, epochs=epochs, steps=steps_per_epoch)
    model.stop_training = False
    callbacks.on_train_begin()
    iterator = iter(dist)
    logs = {}
    for epoch in range(initial_epoch, epochs):
        callbacks.on_epoch_begin(epoch)
        totals = np.zeros(len(names))
        for step in range(steps_per_epoch):
            callbacks.on_train_batch_begin(step)
            totals += np.asarray(train_step(iterator), dtype=np.float64)
            seen = (step + 1) * global_batch_size
            logs = {name: float(v / seen) for name, v in zip(names, totals)}
            callbacks.on_train_batch_end(step, logs)
            if model.stop_training:
                break
        epoch_logs = dict(logs)
        if validation_data is not None and not model.stop_training:
            val = evaluate_local(model, validation_data, loss_fn, metrics)
            epoch_logs.update({f"val_{k}": v for k, v in val.items()})
        callbacks.on_epoch_end(epoch, epoch_logs)
        if model.stop_training:
            break
    callbacks.on_train_end(logs)
    if replicas(strategy) > 1:
        synchronize_batch_norm(model, False)
    return model.history


def _flat_mean(values):
    """Per-example values: anything with more than one axis is averaged over the rest."""
    from keras import ops

    if len(values.shape) > 1:
        values = ops.mean(ops.reshape(values, (ops.shape(values)[0], -1)), axis=-1)
    return values


def evaluate_local(model, dataset, loss_fn, metrics):
    """Mean loss and metrics of `model` (inference mode) over `dataset`, on this worker."""
    import tensorflow as tf

    @tf.function
    def step(x, y):
        y_pred = model(x, training=False)
        values = [tf.cast(_flat_mean(loss_fn(y, y_pred)), tf.float32)]
        values += [tf.cast(_flat_mean(f(y, y_pred)), tf.float32) for f in metrics.values()]
        return tf.stack([tf.reduce_sum(v) for v in values]), tf.shape(x)[0]

    totals, count = np.zeros(1 + len(metrics)), 0
    for x, y in dataset:
        sums, n = step(x, y)
        totals += np.asarray(sums, dtype=np.float64)
        count += int(n)
    return {name: float(v / max(count, 1)) for name, v in zip(["loss", *metrics], totals)}


def predict_local(model, dataset):
    """Model outputs (inference mode) over the inputs of `dataset`, on this worker."""
    import tensorflow as tf

    @tf.function
    def step(x):
        return model(x, training=False)

    return np.concatenate([np.asarray(step(x[0] if isinstance(x, tuple) else x))
                           for x in dataset])


def categorical_accuracy(y_true, y_pred):
    """Per-example 0/1 for one-hot targets (the `accuracy` that `training.fit` logs)."""
    from keras import ops

    return ops.cast(ops.argmax(y_true, -1) == ops.argmax(y_pred, -1), "float32")


__all__ = ["STRATEGIES", "categorical_accuracy", "configure_logical_cpus", "get_strategy",
           "is_chief", "num_workers", "per_replica_batch", "predict_local", "scope",
           "tf_config", "train_loop"]
