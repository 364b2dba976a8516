"""ImageNet-1k helpers: named input preprocessing, class names, top-k decoding, image loading.

Class names and synset ids are read at run time from files that tensorflow-datasets
installs (no download, and tensorflow_datasets itself is not imported).

>>> import numpy as np
>>> from keras_priors.zoo import imagenet
>>> imagenet.preprocess_input(np.array([0.0, 127.0, 255.0]), "lite").tolist()
[-0.9921875, 0.0, 1.0]
>>> imagenet.class_names()[967]
'espresso'
>>> probs = np.zeros((1, 1000)); probs[0, 967] = 0.9
>>> imagenet.decode_predictions(probs, top=1)
[[('n07920052', 'espresso', 0.9)]]
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os

import numpy as np

__all__ = ["PREPROCESSING", "preprocess_input", "class_names", "synsets", "decode_predictions",
           "load_image"]

_MEAN_RGB = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD_RGB = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def _lite(x):
    return (x - 127.0) / 128.0


def _torch(x):
    return (x / 255.0 - _MEAN_RGB) / _STD_RGB


def _caffe(x):
    return x[..., ::-1] - _CAFFE_MEAN_BGR


def _tf(x):
    return x / 127.5 - 1.0


def _none(x):
    return x


_CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
_CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)


def _cifar(x):
    return (x / 255.0 - _CIFAR_MEAN) / _CIFAR_STD


def _unit(x):
    return x / 255.0


def _fashion_mnist(x):
    return (x / 255.0 - 0.2860) / 0.3530


# name -> (function of float32 RGB pixels in 0..255, description)
PREPROCESSING = {
    "lite": (_lite, "(x - 127) / 128: EfficientNet-Lite"),
    "torch": (_torch, "x / 255, then minus ImageNet mean, over std (RGB)"),
    "caffe": (_caffe, "RGB -> BGR, minus the ImageNet BGR mean (VGG, ResNet-caffe)"),
    "tf": (_tf, "x / 127.5 - 1: Inception / MobileNet"),
    "cifar": (_cifar, "x / 255, then minus the CIFAR-10 mean, over its std (RGB)"),
    "unit": (_unit, "x / 255: pixels in [0, 1]"),
    "fashion_mnist": (_fashion_mnist, "x / 255, minus the Fashion-MNIST mean 0.2860, over 0.3530"),
    "none": (_none, "unchanged"),
}


def preprocess_input(x, mode="lite"):
    """A float32 copy of RGB images `x` (pixels 0..255, channels last) prepared as `mode`.

    >>> float(preprocess_input(np.full((1, 2, 2, 3), 255.0), "tf").max())
    1.0
    """
    if mode not in PREPROCESSING:
        raise ValueError(f"unknown preprocessing mode={mode!r}; expected one of "
                         f"{sorted(PREPROCESSING)}")
    x = np.asarray(x, dtype=np.float32)
    if mode in ("torch", "caffe", "cifar") and (x.ndim == 0 or x.shape[-1] != 3):
        raise ValueError(f"mode={mode!r} needs RGB images with 3 channels last, received "
                         f"shape {x.shape}")
    return np.asarray(PREPROCESSING[mode][0](x), dtype=np.float32)


def _tfds_file(relative):
    spec = importlib.util.find_spec("tensorflow_datasets")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("ImageNet class names are read from tensorflow-datasets, which is not "
                           "installed (`pip install tensorflow-datasets`)")
    path = os.path.join(list(spec.submodule_search_locations)[0], relative)
    if not os.path.isfile(path):
        raise RuntimeError(f"the installed tensorflow-datasets has no {relative}")
    return path


@functools.lru_cache(maxsize=1)
def _full_names():
    path = _tfds_file(os.path.join("datasets", "siscore", "labels.py"))
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    for node in tree.body:  # read the literal; the module is never executed
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and getattr(node.targets[0], "id", None) == "IMAGENET_LABELS_LIST"):
            names = ast.literal_eval(node.value)
            if len(names) != 1000:
                raise RuntimeError(f"{path}: IMAGENET_LABELS_LIST has {len(names)} entries")
            return tuple(names)
    raise RuntimeError(f"{path} has no IMAGENET_LABELS_LIST")


@functools.lru_cache(maxsize=1)
def synsets():
    """The 1000 WordNet ids ("n01440764", ...) in the standard class order, as a tuple."""
    path = _tfds_file(os.path.join("datasets", "imagenet2012", "labels.txt"))
    with open(path, encoding="utf-8") as f:
        ids = tuple(line.strip() for line in f if line.strip())
    if len(ids) != 1000:
        raise RuntimeError(f"{path} lists {len(ids)} synsets, expected 1000")
    return ids


def class_names(full=False):
    """The 1000 ImageNet class names in class-index order.

    Short names are the first synonym ("tabby", "tiger cat", "espresso"); full=True gives
    all synonyms ("tabby, tabby cat").
    """
    names = _full_names()
    return list(names) if full else [n.split(",")[0].strip() for n in names]


def decode_predictions(preds, top=5):
    """For each row of `preds` (N, 1000), the `top` classes as (synset, name, score), best first.

    >>> p = np.zeros((1, 1000)); p[0, [281, 285]] = [0.3, 0.6]
    >>> [name for _, name, _ in decode_predictions(p, top=2)[0]]
    ['Egyptian cat', 'tabby']
    """
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] != 1000:
        raise ValueError("decode_predictions expects a batch of ImageNet predictions of shape "
                         f"(N, 1000), received shape {preds.shape}")
    if not isinstance(top, int) or not 1 <= top <= 1000:
        raise ValueError(f"top must be an integer in 1..1000, received top={top!r}")
    ids, names = synsets(), class_names()
    out = []
    for row in preds:
        order = np.argsort(-row, kind="stable")[:top]
        out.append([(ids[i], names[i], float(row[i])) for i in order])
    return out


def load_image(path_or_array, size=224):
    """An image as float32 (size, size, 3) RGB in 0..255: shorter side resized to `size`
    (bilinear), then center-cropped. Accepts a file path or an HxW / HxWxC array (uint8
    pixels or floats in 0..255; grayscale is repeated, alpha dropped).

    >>> load_image(np.zeros((300, 400, 3), np.uint8), size=224).shape
    (224, 224, 3)
    """
    from PIL import Image

    if isinstance(path_or_array, (str, os.PathLike)):
        with Image.open(path_or_array) as img:
            img = img.convert("RGB")
    else:
        arr = np.asarray(path_or_array)
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
            raise ValueError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, received shape "
                             f"{arr.shape}")
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        arr = arr[..., :3]
        if arr.dtype != np.uint8:
            arr = np.clip(np.rint(arr.astype(np.float64)), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, "RGB")
    width, height = img.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    img = img.resize((new_w, new_h), Image.BILINEAR)
    left, upper = (new_w - size) // 2, (new_h - size) // 2
    img = img.crop((left, upper, left + size, upper + size))
    return np.asarray(img, dtype=np.float32)
