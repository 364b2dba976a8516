"""tf.data input pipelines: seeded per-epoch shuffling and augmentation, normalisation,
batching and prefetch.

An epoch's batches depend only on `(seed, epoch)`, never on what ran before, so a run
resumed at epoch e sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import tensorflow as tf

from ..zoo.imagenet import PREPROCESSING
from .sources import ImageData


def _normalise(data: ImageData):
    fn = PREPROCESSING[data.preprocessing][0]

    def apply(x, y):
        return fn(tf.cast(x, tf.float32)), tf.one_hot(y, data.num_classes)

    return apply


def _augment(data: ImageData, seed: int, epoch: int):
    base = tf.constant([seed, epoch], tf.int64)
    pad = data.crop_padding
    shape = data.input_shape

    def apply(index, example):
        x, y = example
        s = tf.stack([base[0] * 1_000_003 + base[1], tf.cast(index, tf.int64)])
        if pad:
            x = tf.pad(x, [[pad, pad], [pad, pad], [0, 0]])
            x = tf.image.stateless_random_crop(x, shape, seed=s)
        if data.flips:
            x = tf.image.stateless_random_flip_left_right(x, seed=s + 1)
        return x, y

    return apply


def epoch_batches(data: ImageData, batch_size: int, seed: int, epoch: int, augment=True):
    """The training batches of one epoch (shuffled and augmented by `(seed, epoch)`)."""
    ds = data.train().shuffle(min(data.train_size, 60_000), seed=seed * 1_000_003 + epoch,
                              reshuffle_each_iteration=False)
    if augment:
        ds = ds.enumerate().map(_augment(data, seed, epoch), num_parallel_calls=tf.data.AUTOTUNE,
                                deterministic=True)
    ds = ds.map(_normalise(data), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True)


def train_batches(data: ImageData, batch_size: int, seed: int, first_epoch: int, epochs: int,
                  augment=True):
    """Epochs `first_epoch .. epochs-1` back to back, for one `model.fit` call with
    `steps_per_epoch = steps_per_epoch(data, batch_size)`."""
    if data.train_size < batch_size:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {data.train_size} training examples"
        )
    ds = epoch_batches(data, batch_size, seed, first_epoch, augment)
    for epoch in range(first_epoch + 1, epochs):
        ds = ds.concatenate(epoch_batches(data, batch_size, seed, epoch, augment))
    return ds.prefetch(tf.data.AUTOTUNE)


def steps_per_epoch(data: ImageData, batch_size: int) -> int:
    return data.train_size // batch_size


def eval_batches(data: ImageData, batch_size: int = 256, split="test"):
    """Normalised, batched, unshuffled batches of a split ("test", "train", "validation")."""
    if split == "validation" and data.validation is None:
        raise ValueError(f"{data.name} has no validation split (make one with data.hold_out)")
    ds = {"test": data.test, "train": data.train, "validation": data.validation}[split]()
    ds = ds.map(_normalise(data), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
