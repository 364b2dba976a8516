"""Synthetic brain-tumour cases in the BraTS 2021 layout, painted onto real anatomy.

No brain-tumour scans can be installed offline, so this module paints *synthetic* lesions
onto two *real* brains - the Colin27 single-subject T1 (Debian `mricron-data`) and the
MNI152 2009 template with its grey/white-matter maps (PyPI `nilearn`) - and writes them as
real NIfTI files: `BraTS2021_XXXXX/BraTS2021_XXXXX_{flair,t1,t1ce,t2,seg}.nii.gz`, labels
0 background, 1 necrotic core, 2 oedema, 4 enhancing tumour.

Each lesion is a randomly placed, shaped and deformed blob with a necrotic core inside an
enhancing rim inside a larger, more irregular oedema, restricted to the brain. The four
modalities are derived from the T1 anatomy with the contrasts these tissues show:

| tissue | T1 | T1ce | T2 | FLAIR |
|---|---|---|---|---|
| CSF | dark | dark | bright | dark (suppressed) |
| oedema | slightly dark | slightly dark | bright | bright |
| enhancing rim | iso | very bright | bright | bright |
| necrotic core | dark | dark | very bright | intermediate |

These are NOT real tumours; models trained on them are not clinical models.

>>> paths = write_cases("synthetic_brats", n=4, seed=0, downsample=2)   # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

from .anatomy import Anatomy

LABELS = {"necrotic": 1, "oedema": 2, "enhancing": 4}


def _smooth_noise(shape, rng, scale):
    """Low-frequency noise in [-1, 1]: coarse random grid, trilinear upsampling."""
    from scipy.ndimage import zoom

    coarse = rng.uniform(-1, 1, size=tuple(max(2, int(np.ceil(n / scale))) for n in shape))
    up = zoom(coarse, [n / c for n, c in zip(shape, coarse.shape)], order=1)
    return up[tuple(slice(0, n) for n in shape)]


def lesion_labels(anatomy: Anatomy, rng, size_mm=(10, 20)):
    """A BraTS label map (0/1/2/4) of one random lesion inside the brain."""
    shape = anatomy.t1.shape
    zooms = np.sqrt((anatomy.affine[:3, :3] ** 2).sum(0))
    inner = np.argwhere(anatomy.brain & (anatomy.csf < 0.3))
    center = inner[rng.integers(len(inner))]
    radius_mm = rng.uniform(*size_mm)
    axes = radius_mm * rng.uniform(0.7, 1.3, size=3) / zooms
    rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1) - center
    d = np.sqrt((((grid @ rot) / axes) ** 2).sum(-1))  # 1 on the ellipsoid's surface
    d = d * (1 + 0.25 * _smooth_noise(shape, rng, max(4, axes.mean())))
    core, rim = rng.uniform(0.25, 0.45), rng.uniform(0.55, 0.75)
    oedema_extent = rng.uniform(1.25, 1.7)
    d_oedema = d * (1 + 0.35 * _smooth_noise(shape, rng, max(3, axes.mean() / 2)))
    labels = np.zeros(shape, np.uint8)
    labels[(d_oedema < oedema_extent)] = LABELS["oedema"]
    labels[d < rim] = LABELS["enhancing"]
    labels[d < core] = LABELS["necrotic"]
    labels[~anatomy.brain] = 0
    return labels


def render(anatomy: Anatomy, labels, rng):
    """The four BraTS modalities of a brain with a lesion: {name: float32 volume}."""
    t1, csf, brain = anatomy.t1, anatomy.csf, anatomy.brain
    tissue = np.clip(t1, 0, 1)
    t2 = np.clip(1.1 - tissue, 0, 1) * 0.6 + csf * 0.4
    flair = np.clip(t2 * (1 - csf) * 1.2, 0, 1)
    t1ce = tissue.copy()
    necrotic, oedema, enhancing = (labels == LABELS[k] for k in ("necrotic", "oedema", "enhancing"))
    contrast = {  # (T1, T1ce, T2, FLAIR) target intensities per lesion tissue
        "oedema": (0.45, 0.45, 0.85, 0.9), "enhancing": (0.6, 1.0, 0.75, 0.85),
        "necrotic": (0.2, 0.2, 0.95, 0.55),
    }
    volumes = {"t1": tissue.copy(), "t1ce": t1ce, "t2": t2, "flair": flair}
    for tissue_name, mask in (("oedema", oedema), ("enhancing", enhancing), ("necrotic", necrotic)):
        for vol, target in zip(volumes.values(), contrast[tissue_name]):
            vol[mask] = 0.3 * vol[mask] + 0.7 * target * rng.uniform(0.9, 1.1)
    out = {}
    for name, vol in volumes.items():
        bias = 1 + 0.1 * _smooth_noise(vol.shape, rng, 24)
        noisy = vol * bias + rng.normal(0, 0.02, vol.shape)
        out[name] = (np.clip(noisy, 0, None) * brain * 1000).astype(np.float32)
    return out


def make_case(anatomy: Anatomy, rng, lesions=None):
    """(modalities, labels) of one synthetic case, flipped left-right at random."""
    n = lesions or int(rng.integers(1, 3))
    labels = np.zeros(anatomy.t1.shape, np.uint8)
    for _ in range(n):
        one = lesion_labels(anatomy, rng)
        labels = np.where(one > 0, np.where(labels > 0, np.minimum(labels, one), one), labels)
    volumes = render(anatomy, labels, rng)
    if rng.random() < 0.5:  # the anatomy and the lesion flip together
        labels = labels[::-1]
        volumes = {k: v[::-1] for k, v in volumes.items()}
    return volumes, labels


