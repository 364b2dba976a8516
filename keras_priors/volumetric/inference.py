"""Sliding-window inference over whole volumes with overlap and gaussian blending.

Windows of the network's input size step across the volume with the given overlap; each
window's output is weighted by a gaussian importance map (centre voxels count more than
edges) and the weighted sum is divided by the summed weights (`blend="constant"` weights
every voxel alike). Windows go through the network in batches. Volumes smaller than a
window are padded and cropped back.
"""

from __future__ import annotations

import itertools

import numpy as np

BLENDS = ("gaussian", "constant")


def gaussian_importance(window, sigma_scale=0.125):
    """A separable gaussian over the window, 1 at its centre, floored at 1e-3."""
    if not sigma_scale > 0:
        raise ValueError(f"sigma_scale must be positive, received sigma_scale={sigma_scale!r}")
    axes = []
    for n in window:
        x = np.arange(n) - (n - 1) / 2
        sigma = max(n * sigma_scale, 1e-6)
        axes.append(np.exp(-0.5 * (x / sigma) ** 2))
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return np.maximum(w / w.max(), 1e-3).astype(np.float32)


def window_starts(size, window, overlap):
    """Start indices covering [0, size) with windows of `window` and the given overlap."""
    if size <= window:
        return [0]
    step = max(1, int(round(window * (1 - overlap))))
    starts = list(range(0, size - window + 1, step))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def sliding_window(volume, predict, window, overlap=0.5, batch_size=4, blend="gaussian",
                   sigma_scale=0.125, progress=None):
    """Predict a whole (X, Y, Z, C) volume with a network of input `window` (x, y, z).

    `predict` maps a batch (B, x, y, z, C) to (B, x, y, z, K); a keras Model works
    (its `predict_on_batch` is used). `blend` is "gaussian" (centre voxels of a window count
    more) or "constant" (a plain average of the overlapping windows). Returns float32
    (X, Y, Z, K).

    >>> import numpy as np
    >>> out = sliding_window(np.ones((10, 9, 8, 1)), lambda b: b * 2, (4, 4, 4))
    >>> out.shape, float(out.min()), float(out.max())
    ((10, 9, 8, 1), 2.0, 2.0)
    """
    volume = np.asarray(volume, np.float32)
    if volume.ndim != 4:
        raise ValueError(f"volume must be (X, Y, Z, C), received shape {volume.shape}")
    if len(window) != 3 or any(int(w) != w or w <= 0 for w in window):
        raise ValueError(f"window must be three positive sizes, received {window!r}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), received {overlap!r}")
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, received blend={blend!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, received batch_size={batch_size!r}")
    fn = getattr(predict, "predict_on_batch", predict)
    shape = volume.shape[:3]
    pad = [(0, max(0, w - s)) for s, w in zip(shape, window)]
    if any(p for _, p in pad):
        volume = np.pad(volume, pad + [(0, 0)])
    padded = volume.shape[:3]
    window = tuple(int(w) for w in window)
    weight = gaussian_importance(window, sigma_scale) if blend == "gaussian" else np.ones(
        window, np.float32)
    starts = list(itertools.product(*(window_starts(s, w, overlap) for s, w in zip(padded, window))))
    out = norm = None
    for i in range(0, len(starts), batch_size):
        chunk = starts[i:i + batch_size]
        batch = np.stack([volume[x:x + window[0], y:y + window[1], z:z + window[2]]
                          for x, y, z in chunk])
        pred = np.asarray(fn(batch), np.float32)
        if out is None:
            out = np.zeros((*padded, pred.shape[-1]), np.float32)
            norm = np.zeros(padded, np.float32)
        for (x, y, z), p in zip(chunk, pred):
            out[x:x + window[0], y:y + window[1], z:z + window[2]] += p * weight[..., None]
            norm[x:x + window[0], y:y + window[1], z:z + window[2]] += weight
        if progress is not None:
            progress(min(i + batch_size, len(starts)), len(starts))
    out /= norm[..., None]
    return out[: shape[0], : shape[1], : shape[2]]
