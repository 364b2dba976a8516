"""Generator version 2: domain-randomised synthetic tumours and scans (after SynthSeg).

Every case draws, from the ranges of a `Ranges` (TRAIN, or OOD for held-out settings):

- **anatomy**: a real brain (Colin27 or MNI152), mirrored at random, under a random affine
  (rotation up to 15 degrees, scale 0.8-1.2 per axis) and an elastic deformation;
- **lesions**: one to a few foci, 1 to 400 cm^3 of whole tumour in all (log-uniform),
  irregular shapes, placed in white matter, near the cortex or near the ventricles, with or
  without a necrotic centre, with or without enhancement, thin or thick rims, oedema from
  none to several times the core, and optional mass effect (tissue pushed away);
- **contrast**: for each modality a mean and texture per tissue class (CSF, GM, WM) and per
  lesion compartment (necrosis, oedema, non-enhancing core, enhancing tumour), near the
  orderings real MRI shows, and with some probability fully at random;
- **acquisition**: bias field (log-field std up to 0.7), gamma, noise, and lower resolution
  (1-4 mm isotropic, or one axis up to 8 mm, with matching blur, resampled back).

Labels are BraTS 2021's: 1 necrotic / non-enhancing core, 2 oedema, 4 enhancing tumour. The
case is skull-stripped (zero outside the brain) and scaled to 0..1000, on the anatomy's grid.

>>> from keras_priors.volumetric.synthetic import load_anatomy, v2
>>> volumes, labels = v2.make_case(load_anatomy("mni152", 4), v2.case_rng(0, 0))
>>> sorted(volumes), labels.dtype.name
(['flair', 't1', 't1ce', 't2'], 'uint8')
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .anatomy import Anatomy
from .v1 import _smooth_noise

VERSION = 2
MODALITIES = ("flair", "t1", "t1ce", "t2")
# internal compartments; BraTS label of each
NECROTIC, OEDEMA, NONENHANCING, ENHANCING = 1, 2, 3, 4
BRATS_LABEL = np.array([0, 1, 2, 1, 4], np.uint8)
CLASSES = ("csf", "gm", "wm", "necrotic", "oedema", "nonenhancing", "enhancing")
# canonical means (0..1) per class, in the order of CLASSES: the orderings real MRI shows
CANONICAL = {
    "t1": (0.12, 0.45, 0.70, 0.15, 0.38, 0.35, 0.55),
    "t1ce": (0.12, 0.45, 0.66, 0.15, 0.38, 0.35, 0.95),
    "t2": (0.95, 0.55, 0.38, 0.90, 0.80, 0.70, 0.65),
    "flair": (0.10, 0.50, 0.40, 0.45, 0.88, 0.75, 0.72),
}


@dataclass(frozen=True)
class Ranges:
    """What a case may look like. Pairs are (low, high) of a uniform draw unless noted."""

    name: str = "train"
    whole_tumour_cm3: tuple = (1.0, 400.0)  # log-uniform, all foci together
    foci: tuple = (1, 3)  # number of lesions when multifocal (inclusive)
    multifocal: float = 0.25  # probability of more than one lesion
    irregularity: tuple = (0.1, 0.35)  # amplitude of the shape noise
    no_oedema: float = 0.1  # probability of no oedema at all
    oedema_ratio: tuple = (0.2, 3.0)  # oedema / core volume, log-uniform
    necrosis: float = 0.7  # probability of a necrotic centre
    enhancement: float = 0.8  # probability of an enhancing core
    rim: tuple = (0.2, 0.6)  # rim thickness / core radius
    mass_effect: float = 0.5  # probability per lesion
    mass_effect_push: tuple = (0.2, 0.6)  # displacement / core radius
    contrast_jitter: tuple = (0.0, 0.08)  # |offset| of a class mean from CANONICAL
    random_contrast: float = 0.1  # probability per modality of fully random means
    texture: tuple = (0.0, 0.05)  # per-class texture std
    bias_std: tuple = (0.0, 0.7)  # std of the log bias field
    gamma_std: float = 0.25  # log-gamma ~ N(0, gamma_std)
    noise: tuple = (0.0, 0.04)  # Gaussian noise std (of the 0..1 range)
    low_resolution: float = 0.5  # probability per modality of a lower-resolution scan
    thick_axis: float = 0.5  # of those, the share with one thick axis (else isotropic)
    isotropic_mm: tuple = (1.0, 4.0)
    thick_axis_mm: tuple = (2.0, 8.0)
    rotation_deg: float = 15.0
    scale: tuple = (0.8, 1.2)
    elastic_mm: tuple = (0.0, 4.0)
    mirror: float = 0.5


TRAIN = Ranges()
# Held-out shape and contrast settings, outside TRAIN's ranges: more irregular lesions,
# thinner rims, more oedema, more foci, class means further from the canonical ones. The
# acquisition ranges are TRAIN's (degraded scans are scored separately).
OOD = replace(TRAIN, name="ood", irregularity=(0.35, 0.5), rim=(0.08, 0.2),
              oedema_ratio=(3.0, 6.0), foci=(3, 5), multifocal=0.4,
              contrast_jitter=(0.08, 0.14), random_contrast=0.0)
RANGES = {"train": TRAIN, "ood": OOD}
# Degradations of a case for the robustness table: the same anatomy, lesions and contrasts
# (same random streams), scanned worse.
DEGRADATIONS = {
    "4mm": dict(low_resolution=1.0, thick_axis=0.0, isotropic_mm=(4.0, 4.0)),
    "7mm_axis": dict(low_resolution=1.0, thick_axis=1.0, thick_axis_mm=(7.0, 7.0)),
    "bias_0.7": dict(bias_std=(0.7, 0.7)),
    "shuffled_contrast": dict(random_contrast=1.0),
}


def check_ranges(ranges):
    """The `Ranges` of a name ("train" / "ood") or a Ranges itself."""
    if isinstance(ranges, Ranges):
        return ranges
    if ranges not in RANGES:
        raise ValueError(f"ranges must be one of {sorted(RANGES)} or a v2.Ranges, received "
                         f"ranges={ranges!r}")
    return RANGES[ranges]


def case_rng(seed, index, epoch=None):
    """The random stream of case `index` (of `epoch`, when generated during training): a
    case depends on these numbers only, never on what was generated before."""
    # a fixed-length key with a stream tag and a non-zero last word: numpy's SeedSequence
    # ignores trailing zeros, so (seed, index) and (seed, index, epoch 0) would collide
    stream, e = (0, 0) if epoch is None else (1, int(epoch))
    return np.random.default_rng([VERSION, stream, int(seed), int(index), e, 1])


def _loguniform(rng, lo, hi):
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _grid(shape):
    return np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape],
                                indexing="ij"), 0)


def _rotation(rng, max_deg):
    from scipy.spatial.transform import Rotation

    angles = np.deg2rad(rng.uniform(-max_deg, max_deg, size=3))
    return Rotation.from_euler("xyz", angles).as_matrix().astype(np.float32)


def _warp(arrays, coords, order=1):
    from scipy.ndimage import map_coordinates

    return [map_coordinates(a, coords, order=order, mode="constant", cval=0.0) for a in arrays]


def deform_anatomy(anatomy: Anatomy, rng, r: Ranges):
    """(tissues (X,Y,Z,3), brain mask) of the anatomy mirrored, under a random affine and an
    elastic deformation, on the anatomy's own grid."""
    tissues = np.asarray(anatomy.tissues, np.float32)
    brain = np.asarray(anatomy.brain, np.float32)
    if rng.random() < r.mirror:
        tissues, brain = tissues[::-1], brain[::-1]
    shape = brain.shape
    zooms = np.sqrt((anatomy.affine[:3, :3] ** 2).sum(0))
    grid = _grid(shape)
    centre = np.array([(n - 1) / 2 for n in shape], np.float32)[:, None, None, None]
    rot = _rotation(rng, r.rotation_deg)
    scale = rng.uniform(*r.scale, size=3).astype(np.float32)
    inverse = (rot.T / scale[:, None]).astype(np.float32)  # output -> input
    coords = np.einsum("ij,j...->i...", inverse, grid - centre) + centre
    amplitude = rng.uniform(*r.elastic_mm)
    for axis in range(3):
        coords[axis] += (amplitude / zooms[axis]) * _smooth_noise(shape, rng, 20 / zooms.mean())
    warped = _warp([tissues[..., k] for k in range(3)] + [brain], coords)
    brain = warped[3] > 0.5
    tissues = np.stack(warped[:3], -1) * brain[..., None]
    tissues /= np.maximum(tissues.sum(-1, keepdims=True), 1e-6)
    return tissues * brain[..., None], brain


def _lesion_centre(tissues, brain, depth, rng):
    """A voxel in white matter, near the cortex or near the ventricles (deep CSF)."""
    csf, gm, wm = tissues[..., 0], tissues[..., 1], tissues[..., 2]
    where = rng.choice(3, p=[0.5, 0.25, 0.25])
    if where == 0:
        pool = (wm > 0.6) & (depth > 8)
    elif where == 1:
        pool = (gm > 0.5) & (depth > 4)
    else:
        from scipy.ndimage import distance_transform_edt

        deep = (csf > 0.6) & (depth > 20)
        pool = ((distance_transform_edt(~deep) < 8) & (csf < 0.5) & (depth > 10)
                if deep.any() else np.zeros_like(brain))
    if not pool.any():
        pool = brain & (depth >= np.percentile(depth[brain], 50))
    candidates = np.argwhere(pool)
    return candidates[rng.integers(len(candidates))]


def lesions(tissues, brain, zooms, rng, r: Ranges):
    """The compartment map (0 healthy, NECROTIC, OEDEMA, NONENHANCING, ENHANCING) of the
    case's foci and their (centre, core radius mm, whole-tumour radius mm), before any mass
    effect moves the tissue around them."""
    from scipy.ndimage import distance_transform_edt

    depth = distance_transform_edt(brain, sampling=zooms)  # mm from the brain's edge
    n = int(rng.integers(r.foci[0], r.foci[1] + 1)) if rng.random() < r.multifocal else 1
    total_mm3 = 1000 * _loguniform(rng, *r.whole_tumour_cm3)
    shares = rng.dirichlet(np.ones(n)) if n > 1 else np.ones(1)
    foci = []
    for share in shares:
        q = 0.0 if rng.random() < r.no_oedema else _loguniform(rng, *r.oedema_ratio)
        volume = total_mm3 * share
        core_r = (3 * volume / (1 + q) / (4 * np.pi)) ** (1 / 3)
        whole_r = (3 * volume / (4 * np.pi)) ** (1 / 3)
        foci.append((_lesion_centre(tissues, brain, depth, rng), core_r, whole_r))
    return foci


def paint(shape, foci, tissues, brain, zooms, rng, r: Ranges):
    """Draw each focus's compartments (inside a box around it, to stay fast at 1 mm)."""
    comp = np.zeros(shape, np.uint8)
    csf = tissues[..., 0]
    for centre, core_r, whole_r in foci:
        a = rng.uniform(*r.irregularity)
        half = np.ceil(whole_r * (1.6 + 2 * a) / zooms).astype(int) + 2
        lo = np.maximum(centre - half, 0)
        hi = np.minimum(centre + half + 1, shape)
        box = tuple(slice(int(s), int(e)) for s, e in zip(lo, hi))
        bshape = tuple(int(e - s) for s, e in zip(lo, hi))
        offset = (_grid(bshape) + lo[:, None, None, None] - centre[:, None, None, None])
        offset = offset * zooms[:, None, None, None].astype(np.float32)  # mm
        rot = _rotation(rng, 180)
        stretch = rng.uniform(0.7, 1.3, size=3)
        stretch /= np.prod(stretch) ** (1 / 3)
        local = np.einsum("ij,j...->i...", rot.T, offset)
        scale_vox = max(2.0, core_r / zooms.mean())
        d = np.sqrt(sum((local[i] / (core_r * stretch[i])) ** 2 for i in range(3)))
        d = d * (1 + a * _smooth_noise(bshape, rng, scale_vox)
                 + 0.5 * a * _smooth_noise(bshape, rng, scale_vox / 3))
        core = d < 1
        necrotic = (d < 1 - rng.uniform(*r.rim)) if rng.random() < r.necrosis else np.zeros_like(core)
        enhancing = rng.random() < r.enhancement
        d_oedema = d * core_r / whole_r * (1 + 1.5 * a * _smooth_noise(bshape, rng, scale_vox))
        inside = brain[box]
        region = comp[box]
        if whole_r > core_r:  # else a lesion without oedema
            oedema = (d_oedema < 1) & ~core & inside & (csf[box] < 0.5)
            region[oedema & (region == 0)] = OEDEMA
        region[core & inside] = ENHANCING if enhancing else NONENHANCING
        region[necrotic & inside] = NECROTIC
    return comp


def mass_effect(tissues, brain, foci, zooms, rng, r: Ranges):
    """Tissue pushed away from the lesions that have mass effect (resampled in a box
    around each)."""
    tissues, brain = tissues.copy(), brain.copy()
    shape = brain.shape
    for centre, core_r, whole_r in foci:
        if rng.random() >= r.mass_effect:
            continue
        push = rng.uniform(*r.mass_effect_push) * core_r  # mm at the lesion's edge
        half = np.ceil(3 * whole_r / zooms).astype(int) + 2
        lo = np.maximum(centre - half, 0)
        hi = np.minimum(centre + half + 1, shape)
        box = tuple(slice(int(s), int(e)) for s, e in zip(lo, hi))
        bshape = tuple(int(e - s) for s, e in zip(lo, hi))
        grid = _grid(bshape) + lo[:, None, None, None]
        offset = (grid - centre[:, None, None, None]) * zooms[:, None, None, None]
        dist = np.sqrt((offset ** 2).sum(0)) + 1e-6
        t = dist / whole_r
        g = t * np.exp(-(t ** 2 - 1) / 2)  # 0 at the centre, 1 at the edge, then decaying
        coords = grid - (push * g / dist)[None] * offset / zooms[:, None, None, None]
        coords = coords - lo[:, None, None, None]
        sub = [tissues[box][..., k] for k in range(3)] + [brain[box].astype(np.float32)]
        warped = _warp(sub, coords)
        inside = warped[3] > 0.5
        tissues[box] = np.stack(warped[:3], -1) * inside[..., None]
        brain[box] = inside
    return tissues, brain


def class_means(rng, r: Ranges):
    """{modality: 7 class means (0..1)}: CANONICAL moved by a random offset per class, or
    with probability `random_contrast` drawn fully at random."""
    out = {}
    for m in MODALITIES:
        if rng.random() < r.random_contrast:
            out[m] = rng.uniform(0.05, 1.0, size=len(CLASSES))
        else:
            jitter = rng.uniform(*r.contrast_jitter, size=len(CLASSES))
            out[m] = np.clip(np.array(CANONICAL[m]) + rng.choice([-1, 1], len(CLASSES)) * jitter,
                             0.02, 1.0)
    return out


def _soft(mask, sigma):
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(mask.astype(np.float32), sigma)


def render(tissues, brain, comp, zooms, rng, r: Ranges, scan_rng=None):
    """The four modalities {name: float32, 0..1000 inside the brain, 0 outside}: contrast
    and texture from `rng`, acquisition from `scan_rng` (default: `rng`)."""
    scan_rng = rng if scan_rng is None else scan_rng
    shape = brain.shape
    means = class_means(rng, r)
    edge = rng.uniform(0.5, 1.0)  # lesion boundary blur, voxels
    compartments = [comp == c for c in (NECROTIC, OEDEMA, NONENHANCING, ENHANCING)]
    soft = [_soft(m, edge) if m.any() else None for m in compartments]
    lesion_weight = sum(s for s in soft if s is not None) if any(
        s is not None for s in soft) else np.zeros(shape, np.float32)
    lesion_weight = np.clip(lesion_weight, 0, 1)
    # texture: one fine noise field for healthy tissue and one for the lesion, weighted per
    # class and modality (signed, so the modalities' textures differ)
    fields = (_smooth_noise(shape, rng, 2), _smooth_noise(shape, rng, 2))
    out = {}
    for m in MODALITIES:
        mu = means[m]
        tex = rng.uniform(*r.texture, size=len(CLASSES)) * rng.choice([-1, 1], len(CLASSES))
        healthy = sum(tissues[..., k] * (mu[k] + tex[k] * fields[0]) for k in range(3))
        lesion = np.zeros(shape, np.float32)
        for j, s in enumerate(soft):
            if s is not None:
                lesion += s * (mu[3 + j] + tex[3 + j] * fields[1])
        img = (1 - lesion_weight) * healthy + lesion
        out[m] = acquire(np.clip(img, 0, 1), brain, zooms, scan_rng, r)
    return out


def degrade_resolution(img, zooms, spacing_mm):
    """`img` as scanned at `spacing_mm` per axis (blur, then down- and back up-sampling)."""
    from scipy.ndimage import gaussian_filter, zoom

    ratio = np.maximum(np.asarray(spacing_mm, float) / zooms, 1.0)
    if np.all(ratio <= 1.0):
        return img
    blurred = gaussian_filter(img, sigma=0.42 * np.where(ratio > 1, ratio, 0))
    small = zoom(blurred, 1 / ratio, order=1)
    back = zoom(small, [n / s for n, s in zip(img.shape, small.shape)], order=1)
    out = np.zeros_like(img)
    sl = tuple(slice(0, min(a, b)) for a, b in zip(img.shape, back.shape))
    out[sl] = back[sl]
    return out


def low_resolution_spacing(rng, r: Ranges):
    """A random scan spacing (mm per axis): isotropic, or one thick axis."""
    if rng.random() >= r.thick_axis:
        return np.full(3, rng.uniform(*r.isotropic_mm))
    spacing = np.ones(3)
    spacing[rng.integers(3)] = rng.uniform(*r.thick_axis_mm)
    return spacing


def bias_field(shape, zooms, rng, std):
    """A smooth multiplicative field exp(b), b of standard deviation `std`."""
    b = _smooth_noise(shape, rng, 40 / zooms.mean())
    b = b / max(b.std(), 1e-6) * std
    return np.exp(b).astype(np.float32)


def acquire(img, brain, zooms, rng, r: Ranges):
    """Resolution, bias field, gamma, noise and scaling of one modality."""
    if rng.random() < r.low_resolution:
        img = degrade_resolution(img, zooms, low_resolution_spacing(rng, r))
    img = img * bias_field(img.shape, zooms, rng, rng.uniform(*r.bias_std))
    img = np.clip(img / max(np.percentile(img[brain], 99.5), 1e-6), 0, 1.2)
    img = img ** np.exp(rng.normal(0, r.gamma_std))
    img = img + rng.normal(0, rng.uniform(*r.noise), img.shape)
    img = np.clip(img * rng.uniform(0.8, 1.2), 1e-3, None) * brain
    return (1000 * img).astype(np.float32)


def make_case(anatomy: Anatomy, rng, ranges="train", degrade=None):
    """(modalities {name: float32 volume}, BraTS labels uint8) of one randomised case on the
    anatomy's grid. Geometry (anatomy, lesions), appearance (contrasts, texture) and
    acquisition draw from three streams spawned from `rng`, so `degrade` (a key of
    DEGRADATIONS, or a dict of Ranges fields) changes how the same case looks or is scanned
    and nothing else."""
    r = check_ranges(ranges)
    geometry, appearance, scan = rng.spawn(3)
    zooms = np.sqrt((anatomy.affine[:3, :3] ** 2).sum(0)).astype(np.float32)
    tissues, brain = deform_anatomy(anatomy, geometry, r)
    foci = lesions(tissues, brain, zooms, geometry, r)
    tissues, brain = mass_effect(tissues, brain, foci, zooms, geometry, r)
    comp = paint(brain.shape, foci, tissues, brain, zooms, geometry, r)
    if degrade is not None:
        if isinstance(degrade, str) and degrade not in DEGRADATIONS:
            raise ValueError(f"degrade must be one of {sorted(DEGRADATIONS)} or a dict of "
                             f"Ranges fields, received {degrade!r}")
        r = replace(r, **(DEGRADATIONS[degrade] if isinstance(degrade, str) else degrade))
    volumes = render(tissues, brain, comp, zooms, appearance, r, scan)
    return volumes, BRATS_LABEL[comp]
