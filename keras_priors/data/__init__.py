"""Classification data: Fashion-MNIST IDX files, tfds datasets, image folders, and the
tf.data pipelines that feed training.

>>> from keras_priors import data
>>> fm = data.load("fashion_mnist", limit_train=256)          # doctest: +SKIP
>>> batches = data.train_batches(fm, 64, seed=0, first_epoch=0, epochs=1)  # doctest: +SKIP
"""

from .idx import read_idx, write_idx
from .pipeline import epoch_batches, eval_batches, steps_per_epoch, train_batches
from .sources import (
    ImageData,
    check,
    check_images,
    check_limit,
    fashion_mnist,
    hold_out,
    image_folder,
    load,
    resolve,
    tfds_dataset,
)

__all__ = [
    "ImageData",
    "check",
    "check_images",
    "check_limit",
    "epoch_batches",
    "eval_batches",
    "fashion_mnist",
    "hold_out",
    "image_folder",
    "load",
    "read_idx",
    "resolve",
    "steps_per_epoch",
    "tfds_dataset",
    "train_batches",
    "write_idx",
]
