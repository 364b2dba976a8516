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

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COLIN27_T1 = Path("/usr/share/mricron/templates/ch2.nii.gz")
COLIN27_BRAIN = Path("/usr/share/mricron/templates/ch2bet.nii.gz")
MNI152 = "nilearn/datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
ANATOMIES = ("colin27", "mni152")
LABELS = {"necrotic": 1, "oedema": 2, "enhancing": 4}


@dataclass
class Anatomy:
    name: str
    t1: np.ndarray  # float32, RAS+, 0..1
    brain: np.ndarray  # bool
    csf: np.ndarray  # float32 0..1, how CSF-like each voxel is
    affine: np.ndarray


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
    """A real brain: T1 scaled to 0..1, brain mask and a CSF map, in RAS+ orientation;
    `downsample` keeps every n-th voxel (1: 1 mm, 2: 2 mm).

    >>> load_anatomy("colin27", downsample=4).t1.shape
    (46, 55, 46)
    """
    import nibabel as nib

    if name not in ANATOMIES:
        raise ValueError(f"anatomy must be one of {ANATOMIES}, received {name!r}")
    downsample = _positive_int(downsample, "downsample")

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
    else:  # mni152
        t1, affine = canon(_resource(MNI152.format("t1")))
        gm = canon(_resource(MNI152.format("gm")))[0] / 255.0
        wm = canon(_resource(MNI152.format("wm")))[0] / 255.0
        brain = (gm + wm) > 0.2
        csf = np.clip(1 - gm - wm, 0, 1) * brain
    if downsample > 1:
        s = downsample
        t1, brain, csf = t1[::s, ::s, ::s], brain[::s, ::s, ::s], csf[::s, ::s, ::s]
        affine = affine.copy()
        affine[:3, :3] *= s
    lo, hi = np.percentile(t1[brain], [0.5, 99.5])
    t1 = np.clip((t1 - lo) / (hi - lo), 0, 1).astype(np.float32)
    return Anatomy(name, t1 * brain, brain, (csf * brain).astype(np.float32), affine)


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


def _is_synthetic_case(path):
    return path.is_dir() and (path / "SYNTHETIC.txt").is_file()


def write_cases(root, n=8, seed=0, downsample=2, anatomies=ANATOMIES, start=0,
                allow_other_files=False):
    """Write `n` synthetic BraTS 2021 cases under `root`, alternating anatomies; returns the
    case folders. Existing cases are never overwritten, and every argument and target is
    checked before anything is written.

    `root` must be new, empty or hold only synthetic cases (a later batch can be added with
    `start`): synthetic cases mixed into a folder of other files, a real dataset perhaps, are
    refused unless `allow_other_files=True`.
    """
    import nibabel as nib

    from .. import io

    n = _positive_int(n, "n")
    downsample = _positive_int(downsample, "downsample")
    seed = _positive_int(seed, "seed", minimum=0)
    start = _positive_int(start, "start", minimum=0)
    anatomies = tuple(anatomies)
    unknown = [a for a in anatomies if a not in ANATOMIES]
    if not anatomies or unknown:
        raise ValueError(f"anatomies must be a non-empty selection of {ANATOMIES}, received "
                         f"{anatomies!r}")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} is a file, not a folder for synthetic cases")
    if root.is_dir() and not allow_other_files:
        others = sorted(p.name for p in root.iterdir() if not _is_synthetic_case(p))
        if others:
            raise FileExistsError(
                f"{root} holds files that are not synthetic cases ({', '.join(others[:3])}"
                f"{' ...' if len(others) > 3 else ''}); synthetic cases go into a new or empty "
                "folder, or one of synthetic cases, unless other files are allowed "
                "(allow_other_files=True, --allow-other-files); nothing was written")
    case_ids = [f"BraTS2021_{i:05d}" for i in range(start, start + n)]
    taken = [c for c in case_ids if (root / c).exists()]
    if taken:
        raise FileExistsError(f"{root / taken[0]} exists; synthetic cases never overwrite data "
                              f"(choose another start than {start}); nothing was written")
    rng = np.random.default_rng(seed)
    brains = {name: load_anatomy(name, downsample) for name in anatomies}
    folders = []
    for i, case_id in zip(range(start, start + n), case_ids):
        anatomy = brains[anatomies[i % len(anatomies)]]
        folder = root / case_id
        volumes, labels = make_case(anatomy, rng)
        folder.mkdir(parents=True)
        io.write_text(folder / "SYNTHETIC.txt",  # first: even a partial case is marked
                      f"Synthetic lesion painted on the real {anatomy.name} anatomy by "
                      f"keras_priors.volumetric.synthetic (seed {seed}); not a real tumour.\n")
        for name, vol in volumes.items():
            io.save_nifti(nib.Nifti1Image(vol, anatomy.affine), folder / f"{case_id}_{name}.nii.gz")
        io.save_nifti(nib.Nifti1Image(labels, anatomy.affine), folder / f"{case_id}_seg.nii.gz")
        folders.append(folder)
    return folders
