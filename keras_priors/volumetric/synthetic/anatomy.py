"""The real brains synthetic cases are painted on: Colin27 (Debian `mricron-data`) and the
MNI152 2009 template (PyPI `nilearn`), in RAS+ orientation, with a brain mask and tissue
maps (CSF, grey and white matter probabilities).

>>> load_anatomy("colin27", downsample=4).t1.shape
(46, 55, 46)
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

COLIN27_T1 = Path("/usr/share/mricron/templates/ch2.nii.gz")
COLIN27_BRAIN = Path("/usr/share/mricron/templates/ch2bet.nii.gz")
MNI152 = "nilearn/datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
ANATOMIES = ("colin27", "mni152")


@dataclass
class Anatomy:
    name: str
    t1: np.ndarray  # float32, RAS+, 0..1
    brain: np.ndarray  # bool
    csf: np.ndarray  # float32 0..1, how CSF-like each voxel is
    affine: np.ndarray
    tissues: np.ndarray | None = field(default=None, repr=False)  # (X,Y,Z,3) CSF, GM, WM


def _resource(path):
    module, _, rel = path.partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise FileNotFoundError(
            f"the MNI152 anatomy ships with the Python package '{module}'; pip install {module}")
    return Path(list(spec.submodule_search_locations)[0]) / rel


def _positive_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {kind}, received {name}={value!r}")
    return int(value)


def load_anatomy(name="colin27", downsample=1) -> Anatomy:
    """A real brain: T1 scaled to 0..1, brain mask, a CSF map and tissue probabilities
    (CSF, GM, WM), in RAS+ orientation; `downsample` keeps every n-th voxel (1: 1 mm, 2: 2 mm).
    Loaded once per process and shared: the arrays are read-only.

    >>> load_anatomy("colin27", downsample=4).t1.shape
    (46, 55, 46)
    """
    if name not in ANATOMIES:
        raise ValueError(f"anatomy must be one of {ANATOMIES}, received {name!r}")
    return _load(name, _positive_int(downsample, "downsample"))


@functools.lru_cache(maxsize=8)
def _load(name, downsample):
    import nibabel as nib

    def canon(path):
        if not Path(path).is_file():
            hint = ("sudo apt-get install mricron-data" if "mricron" in str(path)
                    else "pip install nilearn")
            raise FileNotFoundError(f"anatomy file {path} is missing; install it with `{hint}`")
        img = nib.as_closest_canonical(nib.load(str(path)))
        return np.asarray(img.dataobj, np.float32), img.affine

    if name == "colin27":
        t1, affine = canon(COLIN27_T1)
        brain = canon(COLIN27_BRAIN)[0] > 0
        inside = t1[brain]
        csf = np.clip((np.percentile(inside, 40) - t1) / max(np.ptp(inside), 1e-6) * 3, 0, 1)
        gm = wm = None
    else:  # mni152
        t1, affine = canon(_resource(MNI152.format("t1")))
        gm = canon(_resource(MNI152.format("gm")))[0] / 255.0
        wm = canon(_resource(MNI152.format("wm")))[0] / 255.0
        brain = (gm + wm) > 0.2
        csf = np.clip(1 - gm - wm, 0, 1) * brain
    s = downsample
    if s > 1:
        t1, brain, csf = t1[::s, ::s, ::s], brain[::s, ::s, ::s], csf[::s, ::s, ::s]
        gm, wm = (None, None) if gm is None else (gm[::s, ::s, ::s], wm[::s, ::s, ::s])
        affine = affine.copy()
        affine[:3, :3] *= s
    lo, hi = np.percentile(t1[brain], [0.5, 99.5])
    t1 = np.clip((t1 - lo) / (hi - lo), 0, 1).astype(np.float32)
    if gm is None:
        tissues = tissue_probabilities(t1, brain)
    else:
        tissues = np.stack([np.clip(1 - gm - wm, 0, 1), gm, wm], -1) * brain[..., None]
        tissues /= np.maximum(tissues.sum(-1, keepdims=True), 1e-6)
        tissues *= brain[..., None]
    anatomy = Anatomy(name, t1 * brain, brain, (csf * brain).astype(np.float32), affine,
                      tissues.astype(np.float32))
    for array in (anatomy.t1, anatomy.brain, anatomy.csf, anatomy.tissues, anatomy.affine):
        array.flags.writeable = False
    return anatomy


def tissue_probabilities(t1, brain, iterations=30):
    """(X,Y,Z,3) CSF / GM / WM probabilities of a T1 (0..1) inside `brain`, from a
    three-class Gaussian mixture fitted to the brain's intensity histogram (dark CSF,
    intermediate grey matter, bright white matter)."""
    values = t1[brain].astype(np.float64)
    hist, edges = np.histogram(values, bins=256, range=(0, 1))
    x = (edges[:-1] + edges[1:]) / 2
    mu, sd, w = np.percentile(values, [10, 45, 85]), np.full(3, 0.1), np.full(3, 1 / 3)
    for _ in range(iterations):
        p = w * np.exp(-0.5 * ((x[:, None] - mu) / sd) ** 2) / sd + 1e-12
        r = p / p.sum(1, keepdims=True) * hist[:, None]
        n = r.sum(0) + 1e-9
        mu = (r * x[:, None]).sum(0) / n
        sd = np.sqrt((r * (x[:, None] - mu) ** 2).sum(0) / n).clip(0.02)
        w = n / n.sum()
    order = np.argsort(mu)
    mu, sd, w = mu[order], sd[order], w[order]
    p = w * np.exp(-0.5 * ((t1[..., None] - mu) / sd) ** 2) / sd + 1e-12
    return (p / p.sum(-1, keepdims=True) * brain[..., None]).astype(np.float32)
