"""From cases to training patches: z-score normalisation, patch sampling with foreground
oversampling, augmentation, and a parallel tf.data loader over memory-mapped prepared
datasets (`keras_priors.volumetric.prepare`).

Each patch is a pure function of `(seed, epoch, position)`, so an epoch's patches depend
only on `(seed, epoch)` and a resumed run samples exactly what an uninterrupted one would
have, whatever the number of loader workers.
"""

from __future__ import annotations

import keras
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


def prepare(case: Case):
    """(normalised images, targets) of one case in memory (calibration, tests); training
    uses the memory-mapped `prepare.prepare_dataset` instead."""
    images, label, _ = load_case(case)
    return zscore(images), targets(case, label)


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


class _InMemory:
    """The in-RAM source of earlier releases: a list of (images, targets) pairs, addressed by
    their index. Foreground coordinates are found once per case and kept."""

    def __init__(self, pairs):
        self.pairs = list(pairs)
        self.case_ids = list(range(len(self.pairs)))
        self.channels = self.pairs[0][0].shape[-1]
        self.outputs = self.pairs[0][1].shape[-1]
        self._fg = {}

    def images(self, i):
        return self.pairs[i][0]

    def targets(self, i):
        return self.pairs[i][1]

    def foreground_samples(self, i):
        if i not in self._fg:
            self._fg[i] = [np.argwhere(np.asarray(self.pairs[i][1]).max(-1) > 0)]
        return self._fg[i]


def _as_source(source):
    if hasattr(source, "images") and hasattr(source, "foreground_samples"):
        return source
    if isinstance(source, (list, tuple)) and source and len(source[0]) == 2:
        return _InMemory(source)
    raise TypeError("source must be a PreparedDataset or a non-empty list of (images, targets)"
                    f", received {type(source).__name__}")


def epoch_order(n_cases, per_case, seed, epoch, length=None):
    """Case indices of the patches of one epoch: each case `per_case` times, shuffled by
    `(seed, epoch)`; with `length`, shuffled rounds are repeated and cut to that length."""
    rng = np.random.default_rng([seed, epoch])
    length = n_cases * per_case if length is None else length
    rounds = []
    while sum(len(r) for r in rounds) < length:
        order = np.repeat(np.arange(n_cases), per_case)
        rng.shuffle(order)
        rounds.append(order)
    return np.concatenate(rounds)[:length] if rounds else np.empty(0, np.int64)


def _read(array, start, size):
    """`array[start:start+size]` over the first three axes, zero-padded at the far end where
    the volume is smaller; only the patch's voxels are read from a memmap."""
    stop = [min(a + p, n) for a, p, n in zip(start, size, array.shape[:3])]
    part = array[tuple(slice(a, b) for a, b in zip(start, stop))]
    if part.shape[:3] == tuple(size):
        return np.array(part)
    out = np.zeros((*size, array.shape[-1]), array.dtype)
    out[tuple(slice(0, n) for n in part.shape[:3])] = part
    return out


def load_patch(source, case_id, size, seed, epoch, position, foreground=0.5, rotate=0.0,
               augmentation=True):
    """One (image patch, target patch) as float32, a pure function of
    `(seed, epoch, position)`: with probability `foreground` centred on a stored foreground
    sample of a random region, else placed uniformly; then augmented (`augment`).
    Only the patch is read from the source's (memory-mapped) arrays."""
    rng = np.random.default_rng([seed, epoch, position])
    if hasattr(source, "for_epoch"):  # cases generated per epoch (synthetic.SyntheticSource)
        source = source.for_epoch(epoch)
    images, y = source.images(case_id), source.targets(case_id)
    shape, size = np.array(images.shape[:3]), np.array(size)
    room = np.maximum(shape - size, 0)
    centre = None
    if rng.random() < foreground:
        regions = [s for s in source.foreground_samples(case_id) if len(s)]
        if regions:
            region = regions[rng.integers(len(regions))]
            centre = region[rng.integers(len(region))]
    if centre is not None:
        start = np.clip(np.asarray(centre) - size // 2, 0, room)
    else:
        start = np.array([rng.integers(0, r + 1) for r in room])
    x, t = _read(images, start, size), _read(y, start, size)
    if augmentation:
        return augment(x, t, rng, rotate=rotate)
    return x.astype(np.float32), t.astype(np.float32)


def epoch_patches(source, size, seed, epoch, per_case=2, foreground=0.5, rotate=0.0,
                  augmentation=True, case_ids=None, length=None):
    """All patches of one epoch, in a `(seed, epoch)`-determined order (no TensorFlow):
    exactly what `patch_dataset` yields for that epoch, before batching.

    >>> pairs = [(np.ones((8, 8, 8, 2), np.float32), np.ones((8, 8, 8, 1), np.uint8))]
    >>> x, y = next(epoch_patches(pairs, (4, 4, 4), seed=0, epoch=0))
    >>> x.shape, y.shape
    ((4, 4, 4, 2), (4, 4, 4, 1))
    """
    source = _as_source(source)
    case_ids = list(source.case_ids if case_ids is None else case_ids)
    order = epoch_order(len(case_ids), per_case, seed, epoch, length)
    for position, i in enumerate(order):
        yield load_patch(source, case_ids[i], size, seed, epoch, position, foreground, rotate,
                         augmentation)


def patch_dataset(source, case_ids, size, batch_size, seed, first_epoch, epochs, per_case=2,
                  foreground=0.5, rotate=0.0, augmentation=True, workers=None,
                  steps_per_epoch=None, loader=None):
    """tf.data of batched patches for epochs `first_epoch .. epochs-1` (`loader="tf"`, the
    default on the TensorFlow backend), or the same batches as a Keras PyDataset
    (`loader="py"`, `PatchBatches`: the default on JAX and torch, which have no tf.data).

    `source`: a `PreparedDataset` (patches are read from its memory-mapped arrays) or a list
    of in-RAM (images, targets) pairs (then `case_ids` are indices, None = all). An epoch is
    `len(case_ids) * per_case` patches, or `steps_per_epoch * batch_size` when given, cut to
    whole batches, so batches never span two epochs. Patches are loaded and augmented by
    `workers` parallel calls (default: tf.data autotune) over the index (epoch, position);
    each patch is a pure function of (seed, epoch, position), so the stream depends only on
    (seed, epoch) - not on `workers` - and a run resumed at epoch k gets the same batches.

    >>> ds = patch_dataset(PreparedDataset.open("prepared"), None, (64, 64, 64), 2,
    ...                    seed=0, first_epoch=0, epochs=10)   # doctest: +SKIP
    """
    source = _as_source(source)
    case_ids = list(source.case_ids if case_ids is None else case_ids)
    size = tuple(int(s) for s in size)
    if not case_ids:
        raise ValueError("case_ids is empty: no case to sample patches from")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, received seed={seed}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer or None, received {workers!r}")
    length = len(case_ids) * per_case if steps_per_epoch is None else steps_per_epoch * batch_size
    usable = (length // batch_size) * batch_size
    if usable == 0:
        raise ValueError(f"an epoch of {length} patches ({len(case_ids)} cases x per_case="
                         f"{per_case}) is smaller than batch_size={batch_size}")

    def load(epoch, position):
        epoch, position = int(epoch), int(position)
        i = epoch_order(len(case_ids), per_case, seed, epoch, length)[position]
        return load_patch(source, case_ids[i], size, seed, epoch, position, foreground, rotate,
                          augmentation)

    loader = loader or ("tf" if keras.backend.backend() == "tensorflow" else "py")
    if loader not in ("tf", "py"):
        raise ValueError(f"loader must be 'tf' or 'py', received loader={loader!r}")
    if loader == "py":
        return PatchBatches(load, usable // batch_size, batch_size, first_epoch, epochs,
                            workers)
    import tensorflow as tf

    def call(epoch, position):
        x, y = tf.numpy_function(load, [epoch, position], [tf.float32, tf.float32])
        x.set_shape((*size, source.channels))
        y.set_shape((*size, source.outputs))
        return x, y

    index = tf.data.Dataset.range(first_epoch, epochs).flat_map(
        lambda e: tf.data.Dataset.range(usable).map(lambda p: (e, p)))
    ds = index.map(call, num_parallel_calls=workers or tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(2)


class PatchBatches(keras.utils.PyDataset):
    """`patch_dataset` for Keras backends without tf.data (JAX, torch): a PyDataset whose
    item k is batch k of epochs `first_epoch ..`, each patch `load(epoch, position)`; so the
    batches are the tf.data path's, whatever `workers` (threads, default 1; threads, not
    processes, since forking a process that runs JAX is unsafe)."""

    def __init__(self, load, steps, batch_size, first_epoch, epochs, workers=None):
        super().__init__(workers=workers or 1, use_multiprocessing=False, max_queue_size=4)
        self.load, self.steps, self.batch_size = load, steps, batch_size
        self.first_epoch, self.epochs = first_epoch, epochs

    def __len__(self):
        return self.steps * (self.epochs - self.first_epoch)

    def __getitem__(self, k):
        epoch, step = self.first_epoch + k // self.steps, k % self.steps
        pairs = [self.load(epoch, step * self.batch_size + j) for j in range(self.batch_size)]
        return np.stack([x for x, _ in pairs]), np.stack([y for _, y in pairs])
