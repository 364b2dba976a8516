"""Classification data sources: Fashion-MNIST IDX files, any tfds dataset, image folders.

Each source gives an `ImageData`: unbatched `(uint8 image HxWxC, int label)` datasets for
train and test, their sizes, the classes, and the preprocessing and augmentation that
suit the data. `keras_priors.data.pipeline` turns them into batches.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .idx import read_idx

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "KERAS_PRIORS_FASHION_MNIST"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")


@dataclass
class ImageData:
    """A classification dataset: `train()` / `test()` build unbatched tf.data datasets of
    (uint8 image, int32 label)."""

    name: str
    train: Callable
    test: Callable
    train_size: int
    test_size: int
    input_shape: tuple
    class_names: tuple
    preprocessing: str = "unit"  # a mode of keras_priors.zoo.imagenet.PREPROCESSING
    flips: bool = True  # horizontal flips are label-preserving for this data
    crop_padding: int = 4
    arrays: dict = field(default_factory=dict, repr=False)

    @property
    def num_classes(self):
        return len(self.class_names)


def _from_arrays(name, x_train, y_train, x_test, y_test, class_names, **kwargs):
    import tensorflow as tf

    def make(x, y):
        return lambda: tf.data.Dataset.from_tensor_slices((x, y.astype("int32")))

    return ImageData(name, make(x_train, y_train), make(x_test, y_test), len(x_train),
                     len(x_test), tuple(x_train.shape[1:]), tuple(class_names),
                     arrays={"train": (x_train, y_train), "test": (x_test, y_test)}, **kwargs)


def fashion_mnist_dir(path=None) -> Path:
    """Where the Fashion-MNIST IDX files are: `path`, $KERAS_PRIORS_FASHION_MNIST, or the
    Debian package's location."""
    return Path(path or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)


def fashion_mnist(path=None, limit_train=None, limit_test=None) -> ImageData:
    """Fashion-MNIST (70k real 28x28 grey images, 10 classes) from its IDX files.

    >>> data = fashion_mnist(limit_train=100, limit_test=10)  # doctest: +SKIP
    >>> data.input_shape, data.train_size
    ((28, 28, 1), 100)
    """
    root = fashion_mnist_dir(path)
    names = {
        "x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
        "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte",
    }
    arrays = {}
    for key, stem in names.items():
        candidates = [root / f"{stem}.gz", root / stem]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise FileNotFoundError(
                f"Fashion-MNIST file {stem}(.gz) not found in {root}. Install the data with "
                "`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or point "
                f"${FASHION_MNIST_ENV} or the path argument at a folder with the four IDX files."
            )
        arrays[key] = read_idx(found)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) != len(y):
            raise ValueError(f"Fashion-MNIST in {root}: {len(x)} {split} images but {len(y)} labels")
    lt, le = limit_train or None, limit_test or None
    return _from_arrays(
        "fashion_mnist",
        arrays["x_train"][:lt, ..., None], arrays["y_train"][:lt],
        arrays["x_test"][:le, ..., None], arrays["y_test"][:le],
        FASHION_MNIST_CLASSES, preprocessing="fashion_mnist", flips=True, crop_padding=2,
    )


def tfds_dataset(name, data_dir=None, limit_train=None, limit_test=None) -> ImageData:
    """Any image-classification dataset already prepared for tensorflow-datasets.

    Nothing is downloaded (`download=False`): prepare it first with tfds, then pass its
    `data_dir`.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
        info = builder.info
        splits = info.splits
    except Exception as e:  # tfds raises many types for unknown / unprepared data
        raise ValueError(f"tfds dataset {name!r} is not available (data_dir={data_dir!r}): {e}") from None
    if "train" not in splits:
        raise ValueError(f"tfds dataset {name!r} has no 'train' split (has: {list(splits)})")
    test_split = "test" if "test" in splits else "validation"
    image_key, label_key = info.supervised_keys or ("image", "label")
    if image_key not in info.features or label_key not in info.features:
        raise ValueError(f"tfds dataset {name!r} has no {image_key!r} / {label_key!r} features "
                         f"(has: {list(info.features)})")

    def make(split, limit):
        def load():
            ds = builder.as_dataset(split=split, shuffle_files=False)
            ds = ds.map(lambda ex: (ex[image_key], ex[label_key]))
            return ds.take(limit) if limit else ds
        return load

    n_train = limit_train or splits["train"].num_examples
    n_test = limit_test or splits[test_split].num_examples
    return ImageData(f"tfds:{name}", make("train", limit_train), make(test_split, limit_test),
                     n_train, n_test, tuple(info.features[image_key].shape),
                     tuple(info.features[label_key].names))


def image_folder(path, image_size=(32, 32), validation_split=0.2, seed=0) -> ImageData:
    """A folder with one subfolder per class; `validation_split` of it is held out as test."""
    import keras

    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"image folder {path} does not exist")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise ValueError(f"image folder {path} needs one subfolder per class (found {classes})")
    images, labels = [], []
    for split in ("training", "validation"):
        ds = keras.utils.image_dataset_from_directory(
            path, labels="inferred", class_names=classes, image_size=image_size, batch_size=None,
            shuffle=True, seed=seed, validation_split=validation_split, subset=split,
            verbose=False,
        )
        xs, ys = zip(*[(x.numpy().astype(np.uint8), int(y)) for x, y in ds]) if len(ds) else ((), ())
        images.append(np.stack(xs))
        labels.append(np.array(ys))
    return _from_arrays(f"folder:{path}", images[0], labels[0], images[1], labels[1], classes)


def load(spec, data_dir=None, limit_train=None, limit_test=None, image_size=(32, 32)) -> ImageData:
    """A dataset by name: "fashion_mnist", a folder path, or a tfds name ("tfds:cifar10")."""
    if spec == "fashion_mnist":
        return fashion_mnist(data_dir, limit_train, limit_test)
    if spec.startswith("folder:") or Path(spec).is_dir():
        return image_folder(spec.removeprefix("folder:"), image_size=image_size)
    return tfds_dataset(spec.removeprefix("tfds:"), data_dir, limit_train, limit_test)
