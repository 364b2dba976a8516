"""Inter-layer filter covariance, as in the Deep Roots talk's figure.

The responses of two layers on real data are correlated channel by channel: entry (i, j) is
the correlation, over examples and spatial positions, between channel i of `layer_a` and
channel j of `layer_b`. When `layer_b` is a root layer with g groups, its filters in group k
see only block k of its input channels, so the matrix is block-diagonal when `layer_a`
feeds it; the *block-diagonality score* is the share of the squared correlations that
falls inside the g diagonal blocks (1/g by chance).

>>> result = filter_covariance(model, "conv2c_relu", "conv3a", batches, groups=4,
...                            png="cov.png")                            # doctest: +SKIP
>>> result.score                                                          # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np


@dataclass
class CovarianceResult:
    corr: np.ndarray  # (channels of layer_a, channels of layer_b)
    score: float  # block-diagonality: share of corr**2 inside the group blocks
    groups: int
    layer_a: str
    layer_b: str
    png: str | None = None


def _output(model, name):
    try:
        return model.get_layer(name).output
    except ValueError:
        names = ", ".join(layer.name for layer in model.layers)
        raise ValueError(f"model {model.name!r} has no layer {name!r}; its layers: {names}") from None


def layer_responses(model, names, batches, max_batches=None):
    """Channels-last responses of the named layers on `batches` (x or (x, y) batches):
    a list of arrays (examples, H, W, C)."""
    probe = keras.Model(model.input, [_output(model, n) for n in names])
    out = [[] for _ in names]
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        ys = probe(x, training=False)
        for store, y in zip(out, ys if isinstance(ys, (list, tuple)) else [ys]):
            store.append(keras.ops.convert_to_numpy(y))
    if not out[0]:
        raise ValueError("filter_covariance got no data batches")
    return [np.concatenate(o) for o in out]


def _match_positions(a, b):
    """Average-pool `a` (N,H,W,C) to `b`'s spatial size when it is an integer multiple."""
    if a.shape[1:3] == b.shape[1:3]:
        return a
    fh, fw = a.shape[1] / b.shape[1], a.shape[2] / b.shape[2]
    if fh != int(fh) or fw != int(fw):
        h, w = b.shape[1] * int(fh), b.shape[2] * int(fw)
        a = a[:, :h, :w]
    fh, fw = int(a.shape[1] // b.shape[1]), int(a.shape[2] // b.shape[2])
    n, h, w, c = a.shape
    return a.reshape(n, h // fh, fh, w // fw, fw, c).mean(axis=(2, 4))


def correlation(a, b):
    """Channel-by-channel correlation of two (N,H,W,Ca) / (N,H,W,Cb) response arrays."""
    a = _match_positions(a, b).reshape(-1, a.shape[-1]).astype(np.float64)
    b = b.reshape(-1, b.shape[-1]).astype(np.float64)
    a = a - a.mean(0)
    b = b - b.mean(0)
    sa, sb = np.sqrt((a * a).sum(0)), np.sqrt((b * b).sum(0))
    corr = (a.T @ b) / np.maximum(np.outer(sa, sb), 1e-12)
    corr[sa < 1e-12] = 0.0  # dead channels correlate with nothing
    corr[:, sb < 1e-12] = 0.0
    return corr


def block_diagonality(corr, groups):
    """Share of sum(corr**2) inside the `groups` diagonal blocks (1/groups by chance)."""
    rows, cols = corr.shape
    if groups < 1 or rows % groups or cols % groups:
        raise ValueError(
            f"groups={groups} must divide both dimensions of the correlation matrix {corr.shape}"
        )
    energy = corr ** 2
    total = energy.sum()
    if total == 0:
        return 0.0
    rb, cb = rows // groups, cols // groups
    inside = sum(energy[k * rb:(k + 1) * rb, k * cb:(k + 1) * cb].sum() for k in range(groups))
    return float(inside / total)


def filter_covariance(model, layer_a, layer_b, data, groups=None, png=None, max_batches=20,
                      title=None):
    """Correlation matrix of `layer_a`'s and `layer_b`'s responses on `data`, its
    block-diagonality score for `groups` (default: `layer_b`'s groups), and optionally a PNG.
    """
    a, b = layer_responses(model, [layer_a, layer_b], data, max_batches)
    corr = correlation(a, b)
    if groups is None:
        groups = getattr(model.get_layer(layer_b), "groups", 1)
    score = block_diagonality(corr, groups)
    result = CovarianceResult(corr, score, groups, layer_a, layer_b)
    if png is not None:
        result.png = str(png)
        _plot(result, png, title or f"{model.name}: {layer_a} vs {layer_b}")
    return result


def _plot(result, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    im = ax.imshow(np.abs(result.corr), cmap="magma", vmin=0, vmax=1, interpolation="nearest")
    rows, cols = result.corr.shape
    for k in range(1, result.groups):
        ax.axhline(k * rows / result.groups - 0.5, color="cyan", lw=0.5)
        ax.axvline(k * cols / result.groups - 0.5, color="cyan", lw=0.5)
    ax.set_xlabel(f"{result.layer_b} filters")
    ax.set_ylabel(f"{result.layer_a} filters")
    ax.set_title(f"{title}\nblock-diagonality {result.score:.2f} "
                 f"({result.groups} groups; chance {1 / result.groups:.2f})", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, label="|correlation|")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
