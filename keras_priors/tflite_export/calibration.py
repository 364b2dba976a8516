"""Representative data for full-integer quantization, taken from the user's own data.

`representative_array(data, input_shape, samples=...)` accepts:

- a numpy array, (N, *input_shape) or one example of `input_shape` (used as given:
  preprocess it yourself);
- `"fashion_mnist"`: the Fashion-MNIST training images (keras_priors.data);
- `"tfds:NAME"`: the training split of a prepared tensorflow-datasets dataset;
- a folder of images (searched recursively): square RGB inputs read as `zoo predict` reads
  them (shorter side resized, centre crop: keras_priors.zoo.imagenet.load_image), other
  inputs resized to the model's height x width and converted to its channels;
- a folder of NIfTI cases (BraTS, MSD, a manifest, or loose .nii/.nii.gz files) for 3D
  models: random patches of the model's input size from z-scored volumes
  (keras_priors.volumetric.pipeline.prepare / zscore).

Images are scaled with `preprocessing` (a mode of keras_priors.zoo.imagenet.PREPROCESSING,
taken from the zoo spec or weights entry when the model is a zoo name).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _shape_error(expected, received, what="representative data"):
    exp = "(N, " + ", ".join(str(d) for d in expected) + ")"
    return ValueError(f"{what} has shape {tuple(received)}, but the model expects batches of "
                      f"shape {exp} (one example: {tuple(expected)})")


def check_array(x, input_shape, what="representative data"):
    """`x` as float32 (N, *input_shape); a single example gains a batch axis."""
    x = np.asarray(x)
    if x.dtype == object or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{what} must be numeric, received dtype {x.dtype}")
    expected = tuple(int(d) for d in input_shape)
    if x.shape == expected:
        x = x[None]
    if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != expected:
        raise _shape_error(expected, x.shape, what)
    if len(x) == 0:
        raise ValueError(f"{what} is empty (shape {x.shape})")
    return x.astype(np.float32)


def _preprocess(images, preprocessing):
    from ..zoo import imagenet

    mode = preprocessing or "none"
    if mode == "zscore":
        mode = "none"
    return imagenet.preprocess_input(images, mode)


def _fit_channels(img, channels):
    """HxWxC float image -> `channels` channels (grey from RGB by luminance, or repeat)."""
    if img.shape[-1] == channels:
        return img
    if channels == 1:
        return (img[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    if img.shape[-1] == 1:
        return np.repeat(img, channels, axis=-1)
    raise ValueError(f"cannot turn {img.shape[-1]}-channel images into {channels} channels")


def _resize(images, height, width):
    """uint8/float (N, h, w, c) -> float32 (N, height, width, c), bilinear."""
    images = np.asarray(images, np.float32)
    if images.shape[1:3] == (height, width):
        return images
    import tensorflow as tf

    return tf.image.resize(images, (height, width), method="bilinear").numpy().astype(np.float32)


def _from_images(images, input_shape, preprocessing):
    """Images (an array, or a list of differently sized HxWxC arrays) -> the model's input
    size and channels, preprocessed."""
    height, width, channels = input_shape
    fitted = [_fit_channels(np.asarray(i, np.float32), channels) for i in images]
    if len({f.shape for f in fitted}) == 1:
        batch = _resize(np.stack(fitted), height, width)
    else:
        batch = np.concatenate([_resize(f[None], height, width) for f in fitted])
    return _preprocess(batch, preprocessing)


def _image_folder(path, input_shape, samples, preprocessing, rng):
    from PIL import Image

    files = sorted(p for p in Path(path).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {path}")
    if len(files) > samples:
        files = [files[i] for i in sorted(rng.choice(len(files), samples, replace=False))]
    from ..zoo.imagenet import load_image

    height, width, channels = input_shape
    images = []
    for f in files:
        try:
            if height == width and channels == 3:  # as `zoo predict` reads images
                images.append(load_image(f, size=height))
                continue
            with Image.open(f) as img:
                img = img.convert("RGB" if channels != 1 else "L")
                img = img.resize((width, height), Image.BILINEAR)
                arr = np.asarray(img, np.float32)
        except OSError as e:
            raise ValueError(f"cannot read image {f}: {e}") from None
        images.append(arr[..., None] if arr.ndim == 2 else arr)
    return _from_images(images, input_shape, preprocessing)


def _nifti_folder(path, input_shape, samples, rng):
    """Random patches of input_shape (X, Y, Z, C) from z-scored cases under `path`."""
    from ..volumetric import layouts
    from ..volumetric.pipeline import prepare, sample_patch, zscore

    size, channels = tuple(input_shape[:3]), int(input_shape[3])
    volumes = []
    try:
        cases = layouts.discover(path, require_label=False)
        for case in cases[:max(1, min(len(cases), samples))]:
            images, _ = prepare(case)
            volumes.append(images)
    except (ValueError, FileNotFoundError):
        from ..volumetric.nifti import read_volume

        files = sorted(p for p in Path(path).rglob("*") if p.name.endswith(NIFTI_SUFFIXES))
        if not files:
            raise ValueError(f"no NIfTI cases or .nii/.nii.gz files under {path}") from None
        for f in files[:samples]:
            data = read_volume(f).data
            volumes.append(zscore(data if data.ndim == 4 else data[..., None]))
    for v in volumes:
        if v.shape[-1] != channels:
            raise ValueError(f"the NIfTI cases under {path} have {v.shape[-1]} channel(s), the "
                             f"model expects {channels} (input shape {tuple(input_shape)})")
    patches = []
    for i in range(samples):
        images = volumes[i % len(volumes)]
        patch, _ = sample_patch(images, np.zeros(images.shape[:3] + (1,), np.uint8), size, rng,
                                foreground=0.0)
        patches.append(patch)
    return np.stack(patches).astype(np.float32)


def _looks_nifti(path):
    path = Path(path)
    if path.is_file():
        return path.suffix in (".json", ".csv")
    return (path / "dataset.json").is_file() or any(
        p.name.endswith(NIFTI_SUFFIXES) for p in path.rglob("*"))


def representative_array(data, input_shape, samples=100, preprocessing=None, seed=0):
    """Calibration examples as float32 (N, *input_shape), at most `samples` of them.

    >>> x = representative_array(np.zeros((4, 8, 8, 3)), (8, 8, 3))
    >>> x.shape
    (4, 8, 8, 3)
    """
    if samples is None or samples < 1:
        raise ValueError(f"samples must be a positive integer, received samples={samples!r}")
    input_shape = tuple(int(d) for d in input_shape)
    rng = np.random.default_rng(seed)
    if isinstance(data, np.ndarray) or isinstance(data, (list, tuple)):
        return check_array(data, input_shape)[:samples]
    if not isinstance(data, (str, os.PathLike)):
        raise ValueError("representative data must be an array, 'fashion_mnist', "
                         f"'tfds:NAME' or a folder, received {type(data).__name__}")
    spec = str(data)
    if len(input_shape) == 4:  # volumes
        if not Path(spec).exists():
            raise ValueError(f"3D models are calibrated from a folder of NIfTI cases; {spec!r} "
                             "does not exist")
        return check_array(_nifti_folder(spec, input_shape, samples, rng), input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"named calibration data needs an image model (H, W, C); this model's "
                         f"input is {input_shape}: pass a numpy array instead")
    if spec == "fashion_mnist":
        from ..data import sources

        images = sources.fashion_mnist(limit_train=samples, limit_test=1).arrays["train"][0]
        return check_array(_from_images(images, input_shape, preprocessing or "fashion_mnist"),
                           input_shape)
    if Path(spec).is_dir():
        if _looks_nifti(spec) and not any(
                p.suffix.lower() in IMAGE_SUFFIXES for p in Path(spec).rglob("*")):
            raise ValueError(f"{spec} holds NIfTI volumes, but the model's input {input_shape} "
                             "is 2D")
        return check_array(_image_folder(spec, input_shape, samples, preprocessing, rng),
                           input_shape)
    if spec.startswith("tfds:"):
        from ..data import sources

        ds = sources.tfds_dataset(spec.removeprefix("tfds:"), limit_train=samples).train()
        images = [np.asarray(x) for x, _ in ds.take(samples).as_numpy_iterator()]
        if not images:
            raise ValueError(f"tfds dataset {spec!r} gave no training images")
        return check_array(_from_images(images, input_shape, preprocessing), input_shape)
    raise ValueError(f"calibration data {spec!r} is neither 'fashion_mnist', 'tfds:NAME', an "
                     "existing folder, nor an array")


def generator(x, to_lowered=None):
    """A converter `representative_dataset`: yields [one example] at a time (batch 1)."""
    def gen():
        for example in x:
            feed = example[None]
            if to_lowered is not None:
                feed = np.asarray(to_lowered(feed), np.float32)
            yield [feed.astype(np.float32)]
    return gen
