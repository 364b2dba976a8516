"""From cases to training patches: z-score normalisation, cached preprocessed volumes,
patch sampling with foreground oversampling, augmentation, tf.data.

An epoch's patches depend only on `(seed, epoch)`, so a resumed run samples exactly what
an uninterrupted one would have.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from .layouts import Case, load_case, to_regions


def zscore(images):
    """Per-channel z-score over the non-zero (brain) voxels; background stays 0."""
    out = np.zeros_like(images, dtype=np.float32)
    for c in range(images.shape[-1]):
        channel = images[..., c]
        mask = channel != 0
        if mask.sum() > 1:
            values = channel[mask]
            out[..., c][mask] = (values - values.mean()) / max(values.std(), 1e-6)
    return out


def targets(case: Case, label):
    """Training targets: region masks (X,Y,Z,R) for BraTS-like cases, else the label map."""
    if label is None:
        return None
    if case.regions:
        return to_regions(label, case.regions)
    return label.astype(np.uint8)[..., None]


def _cache_key(case: Case):
    parts = []
    for source in list(case.images.values()) + [case.label]:
        path = source[0] if isinstance(source, tuple) else source
        if path is not None:
            st = Path(path).stat()
            parts.append(f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def prepare(case: Case, cache_dir=None):
    """(normalised images, targets) of a case; cached as .npz under `cache_dir` (keyed by
    the files' paths, sizes and times, so edited inputs are read again)."""
    if cache_dir is not None:
        cache = Path(cache_dir) / f"{case.case_id}-{_cache_key(case)}.npz"
        if cache.exists():
            with np.load(cache) as z:
                return z["images"], (z["targets"] if "targets" in z.files else None)
    images, label, _ = load_case(case)
    images, y = zscore(images), targets(case, label)
    if cache_dir is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".npz")
        os.close(fd)
        arrays = {"images": images} | ({"targets": y} if y is not None else {})
        np.savez(tmp, **arrays)
        os.replace(tmp, cache)
    return images, y


def _pad_to(array, size):
    pad = [(0, max(0, s - n)) for n, s in zip(array.shape[:3], size)]
    if any(p for _, p in pad):
        array = np.pad(array, pad + [(0, 0)] * (array.ndim - 3))
    return array


def sample_patch(images, y, size, rng, foreground=0.5):
    """One (image patch, target patch); with probability `foreground` centred on a random
    voxel of the target's foreground."""
    images, y = _pad_to(images, size), _pad_to(y, size)
    shape = np.array(images.shape[:3])
    size = np.array(size)
    fg = np.argwhere(y.max(-1) > 0) if rng.random() < foreground else np.empty((0, 3))
    if len(fg):
        centre = fg[rng.integers(len(fg))]
        start = np.clip(centre - size // 2, 0, shape - size)
    else:
        start = np.array([rng.integers(0, s - p + 1) for s, p in zip(shape, size)])
    index = tuple(slice(a, a + p) for a, p in zip(start, size))
    return images[index], y[index]


def augment(x, y, rng, flips=True, intensity=True, rotate=0.0):
    """Random flips per axis, per-channel intensity scale/shift, optional small rotation
    (degrees, in the axial plane)."""
    if flips:
        for axis in range(3):
            if rng.random() < 0.5:
                x, y = np.flip(x, axis), np.flip(y, axis)
    if intensity:
        scale = rng.uniform(0.9, 1.1, size=x.shape[-1]).astype(np.float32)
        shift = rng.uniform(-0.1, 0.1, size=x.shape[-1]).astype(np.float32)
        x = np.where(x != 0, x * scale + shift, 0).astype(np.float32)
    if rotate:
        from scipy.ndimage import rotate as nd_rotate

        angle = rng.uniform(-rotate, rotate)
        x = nd_rotate(x, angle, axes=(0, 1), reshape=False, order=1, mode="constant")
        y = nd_rotate(y, angle, axes=(0, 1), reshape=False, order=0, mode="constant")
    return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y, np.float32)


def epoch_patches(prepared, size, seed, epoch, per_case=2, foreground=0.5, rotate=0.0,
                  augmentation=True):
    """All patches of one epoch, in a `(seed, epoch)`-determined order."""
    rng = np.random.default_rng([seed, epoch])
    order = [i for i in range(len(prepared)) for _ in range(per_case)]
    rng.shuffle(order)
    for i in order:
        images, y = prepared[i]
        x, t = sample_patch(images, y, size, rng, foreground)
        if augmentation:
            x, t = augment(x, t, rng, rotate=rotate)
        yield np.asarray(x, np.float32), np.asarray(t, np.float32)


def patch_dataset(prepared, size, batch_size, seed, first_epoch, epochs, **kwargs):
    """tf.data over epochs `first_epoch .. epochs-1` of sampled patches, batched."""
    import tensorflow as tf

    channels = prepared[0][0].shape[-1]
    outputs = prepared[0][1].shape[-1]

    def generate():
        for epoch in range(first_epoch, epochs):
            yield from epoch_patches(prepared, size, seed, epoch, **kwargs)

    signature = (tf.TensorSpec((*size, channels), tf.float32),
                 tf.TensorSpec((*size, outputs), tf.float32))
    ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
    return ds.batch(batch_size, drop_remainder=True).prefetch(2)

