"""Classification data sources: Fashion-MNIST IDX files, any tfds dataset, image folders.

Each source gives an `ImageData`: unbatched `(uint8 image HxWxC, int label)` datasets for
train and test, their sizes, the classes, and the preprocessing and augmentation that
suit the data. `keras_priors.data.pipeline` turns them into batches.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
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
    validation: Callable | None = None  # held-out training examples (see `hold_out`)
    validation_size: int = 0

    @property
    def num_classes(self):
        return len(self.class_names)


def hold_out(data: ImageData, n: int) -> ImageData:
    """`data` with its last `n` training examples moved to a validation split, for choosing
    a schedule without touching the test set. Training keeps the first `train_size - n`.

    >>> data = hold_out(fashion_mnist(limit_train=100, limit_test=10), 20)
    >>> data.train_size, data.validation_size
    (80, 20)
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"validation must be a positive number of training examples to hold "
                         f"out, received {n!r}")
    if n >= data.train_size:
        raise ValueError(f"validation={n} would hold out all {data.train_size} training "
                         f"examples of {data.name}; hold out fewer")
    keep = data.train_size - n
    train = data.train
    arrays = dict(data.arrays)
    if "train" in arrays:
        x, y = arrays["train"]
        arrays["train"], arrays["validation"] = (x[:keep], y[:keep]), (x[keep:], y[keep:])
    return replace(data, train=lambda: train().take(keep), train_size=keep,
                   validation=lambda: train().skip(keep), validation_size=n, arrays=arrays)


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

    >>> data = fashion_mnist(limit_train=100, limit_test=10)
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
    lt = check_limit(limit_train, "limit_train")
    le = check_limit(limit_test, "limit_test")
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

    limit_train = check_limit(limit_train, "limit_train")
    limit_test = check_limit(limit_test, "limit_test")
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

    n_train = min(limit_train or np.inf, splits["train"].num_examples)  # take(N) of fewer
    n_test = min(limit_test or np.inf, splits[test_split].num_examples)
    n_train, n_test = int(n_train), int(n_test)
    return ImageData(f"tfds:{name}", make("train", limit_train), make(test_split, limit_test),
                     n_train, n_test, tuple(info.features[image_key].shape),
                     tuple(info.features[label_key].names))


IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png")  # what keras' folder reader takes
SOURCES = ("fashion_mnist, an image folder (one subfolder per class, or folder:PATH), "
           "tfds:NAME, or the name of a tensorflow-datasets dataset such as cifar10")


def check_limit(value, name):
    """None, or a positive integer `value` of the option `name` (0 is not "no limit")."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive number of examples (or left out for all), "
                         f"received {name}={value!r}")
    return int(value)


def _class_images(folder):
    """The image files keras' folder reader takes under `folder` (recursively), sorted."""
    out = []
    for parent, _, files in sorted(os.walk(folder)):
        out += [Path(parent) / f for f in sorted(files) if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return out


def check_images(paths, full=False):
    """Raise ValueError naming every image among `paths` (up to 5) that PIL cannot read:
    headers and chunk checksums (`verify`), or every pixel with `full=True`."""
    from PIL import Image

    bad = []
    for path in paths:
        try:
            with Image.open(path) as im:
                im.load() if full else im.verify()
        except (OSError, SyntaxError, ValueError) as e:  # PIL raises all three for bad files
            bad.append(f"{path} ({e})")
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(f"unreadable image file{'s' if len(bad) > 1 else ''}: "
                         + "; ".join(bad[:5]) + more + " - remove or replace "
                         + ("them" if len(bad) > 1 else "it"))


def _folder_classes(path):
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"image folder {path} does not exist")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise ValueError(f"image folder {path} needs one subfolder per class (found {classes})")
    return classes


def image_folder(path, image_size=(32, 32), validation_split=0.2, seed=0, limit_train=None,
                 limit_test=None) -> ImageData:
    """A folder with one subfolder per class; `validation_split` of it is held out as test.

    Every image is checked before any is decoded: a corrupt one is named in the error.

    >>> data = image_folder("photos", image_size=(32, 32), limit_train=100)  # doctest: +SKIP
    """
    import keras
    import tensorflow as tf

    limit_train = check_limit(limit_train, "limit_train")
    limit_test = check_limit(limit_test, "limit_test")
    path = Path(path)
    classes = _folder_classes(path)
    files = [f for c in classes for f in _class_images(path / c)]
    check_images(files)
    images, labels = [], []
    for split, limit in (("training", limit_train), ("validation", limit_test)):
        ds = keras.utils.image_dataset_from_directory(
            path, labels="inferred", class_names=classes, image_size=image_size, batch_size=None,
            shuffle=True, seed=seed, validation_split=validation_split, subset=split,
            verbose=False,
        )
        try:
            pairs = [(x.numpy().astype(np.uint8), int(y)) for x, y in ds.take(limit or -1)]
        except tf.errors.InvalidArgumentError as e:  # passed `verify` but does not decode
            check_images(files, full=True)
            raise ValueError(f"image folder {path}: an image does not decode: "
                             f"{e.message.splitlines()[0]}") from None
        if not pairs:
            raise ValueError(f"image folder {path} has {len(files)} images: too few for a "
                             f"{split} split of validation_split={validation_split}")
        xs, ys = zip(*pairs)
        images.append(np.stack(xs))
        labels.append(np.array(ys))
    return _from_arrays(f"folder:{path}", images[0], labels[0], images[1], labels[1], classes)


def resolve(spec, data_dir=None, option="data"):
    """("fashion_mnist" | "folder" | "tfds", name or path) for a dataset `spec`; a value that
    names no existing folder and no dataset is an error naming `option` (e.g. "--data").

    >>> resolve("fashion_mnist")
    ('fashion_mnist', 'fashion_mnist')
    >>> resolve("./no/such/images")
    Traceback (most recent call last):
    ...
    ValueError: data ./no/such/images: no such folder. Accepted: fashion_mnist, an image folder (one subfolder per class, or folder:PATH), tfds:NAME, or the name of a tensorflow-datasets dataset such as cifar10
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"{option} must be a dataset name or folder, received {spec!r}")
    if spec == "fashion_mnist":
        return "fashion_mnist", spec
    if spec.startswith("tfds:"):
        return "tfds", spec.removeprefix("tfds:")
    folder = Path(spec.removeprefix("folder:")).expanduser()
    if folder.is_dir():
        return "folder", str(folder)
    looks_like_path = (spec.startswith(("folder:", ".", "~"))
                       or any(sep in spec for sep in ("/", os.sep, os.altsep) if sep))
    if not looks_like_path:
        import tensorflow_datasets as tfds

        if spec in tfds.list_builders() or (data_dir and (Path(data_dir) / spec).is_dir()):
            return "tfds", spec
    what = "no such folder" if looks_like_path else "no such folder, and no tfds dataset of that name"
    raise ValueError(f"{option} {spec}: {what}. Accepted: {SOURCES}")


def check(spec, data_dir=None, option="data"):
    """`resolve(spec)`, and for an image folder its classes and every image's header, without
    decoding anything: the checks a command runs before it starts work."""
    kind, value = resolve(spec, data_dir, option)
    if kind == "folder":
        check_images([f for c in _folder_classes(value) for f in _class_images(Path(value) / c)])
    return kind, value


def load(spec, data_dir=None, limit_train=None, limit_test=None, image_size=(32, 32)) -> ImageData:
    """A dataset by name: "fashion_mnist", a folder path ("folder:PATH" or an existing folder),
    or a tfds name ("tfds:cifar10", or "cifar10"). `limit_train` / `limit_test` keep the first
    N examples (None: all; 0 or less is an error).

    >>> data = load("fashion_mnist", limit_train=512, limit_test=256)   # doctest: +SKIP
    """
    limit_train = check_limit(limit_train, "limit_train")
    limit_test = check_limit(limit_test, "limit_test")
    kind, value = resolve(spec, data_dir)
    if kind == "fashion_mnist":
        return fashion_mnist(data_dir, limit_train, limit_test)
    if kind == "folder":
        return image_folder(value, image_size=image_size, limit_train=limit_train,
                            limit_test=limit_test)
    return tfds_dataset(value, data_dir, limit_train, limit_test)
