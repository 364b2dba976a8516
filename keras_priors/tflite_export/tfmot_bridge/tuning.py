"""Fine-tuning a tf_keras model (QAT or pruned) and re-estimating its BatchNorm statistics."""

from __future__ import annotations

import numpy as np

from .converters import tf_keras, tfmot
from .pruning import has_pruning


def recalibrate_batch_norm(model, images, batch_size=256):
    """Re-estimate every BatchNormalization's moving mean and variance of a tf_keras model
    (plain, QAT or stripped) as the average over `images` in training mode.

    Fine-tuning for a few dozen steps (and pruning most of all) changes what each BN sees
    faster than momentum 0.99 lets its statistics follow. Call it on stripped pruned
    models (a pruning wrapper in training mode may prune again)."""
    bns = []
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if type(inner).__name__ == "BatchNormalization":
            bns.append(inner)
    saved = [bn.momentum for bn in bns]
    images = np.asarray(images, dtype="float32")
    try:
        for k, start in enumerate(range(0, len(images), batch_size)):
            for bn in bns:
                bn.momentum = k / (k + 1)  # running mean of the per-batch statistics
            model(images[start:start + batch_size], training=True)
    finally:
        for bn, m in zip(bns, saved):
            bn.momentum = m
    return len(bns)


def _dataset(data, batch_size, shuffle, seed):
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        return data
    x, y = data
    ds = tf.data.Dataset.from_tensor_slices((np.asarray(x, "float32"), np.asarray(y, "int64")))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def fine_tune(tfk_model, train_data, epochs=1, lr=1e-3, batch_size=128, optimizer="sgd",
              from_logits=False, seed=0, verbose=0, callbacks=()):
    """Fine-tune a tf_keras model (QAT or pruned) on `(images, integer labels)` or a batched
    tf.data.Dataset of such pairs, with a cosine-decayed learning rate from `lr` to 0.

    `optimizer` is "sgd" (Nesterov momentum 0.9) or "adam". Pruned models get tfmot's
    UpdatePruningStep callback. Returns the Keras history dict.
    """
    tfk = tf_keras()
    ds = _dataset(train_data, batch_size, shuffle=True, seed=seed)
    steps = int(ds.cardinality()) * epochs
    if steps <= 0:
        raise ValueError("train_data gives no batches (an empty or infinite dataset)")
    schedule = tfk.optimizers.schedules.CosineDecay(lr, steps)
    if optimizer == "sgd":
        opt = tfk.optimizers.SGD(schedule, momentum=0.9, nesterov=True)
    elif optimizer == "adam":
        opt = tfk.optimizers.Adam(schedule)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam', received optimizer={optimizer!r}")
    tfk_model.compile(opt, tfk.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
                      metrics=["accuracy"])
    callbacks = list(callbacks)
    if has_pruning(tfk_model):
        callbacks.append(tfmot().sparsity.keras.UpdatePruningStep())
    history = tfk_model.fit(ds, epochs=epochs, verbose=verbose, callbacks=callbacks)
    return history.history

