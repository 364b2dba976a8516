"""Synthetic cases written as BraTS 2021 folders of real NIfTI files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import v1, v2
from .anatomy import ANATOMIES, _positive_int, load_anatomy

GENERATORS = {1: v1.make_case, 2: v2.make_case}  # version -> make_case(anatomy, rng)
LATEST = 2


def _is_synthetic_case(path):
    return path.is_dir() and (path / "SYNTHETIC.txt").is_file()


def write_cases(root, n=8, seed=0, downsample=2, anatomies=ANATOMIES, start=0,
                allow_other_files=False, version=1, ranges="train", degrade=None):
    """Write `n` synthetic BraTS 2021 cases under `root`, alternating anatomies; returns the
    case folders. Existing cases are never overwritten, and every argument and target is
    checked before anything is written.

    `version` picks the generator: 1 (fixed contrasts, lesions of 10-20 mm radius; what the
    first `synthetic_brats` weights were trained on) or 2 (domain-randomised: lesions of
    1-400 cm^3, random contrasts, bias, noise, resolution, deformation; `v2.py`), with
    `ranges` "train" or "ood" (v2's held-out settings). Case i of a given (version, seed,
    ranges, anatomy, downsample) is the same whenever it is written; `degrade` (v2: a key of
    `v2.DEGRADATIONS`) writes those same cases scanned worse.

    `root` must be new, empty or hold only synthetic cases (a later batch can be added with
    `start`): synthetic cases mixed into a folder of other files, a real dataset perhaps, are
    refused unless `allow_other_files=True`.
    """
    import nibabel as nib

    from ... import io

    n = _positive_int(n, "n")
    downsample = _positive_int(downsample, "downsample")
    seed = _positive_int(seed, "seed", minimum=0)
    start = _positive_int(start, "start", minimum=0)
    anatomies = tuple(anatomies)
    unknown = [a for a in anatomies if a not in ANATOMIES]
    if not anatomies or unknown:
        raise ValueError(f"anatomies must be a non-empty selection of {ANATOMIES}, received "
                         f"{anatomies!r}")
    if version not in GENERATORS:
        raise ValueError(f"version must be one of {sorted(GENERATORS)}, received "
                         f"version={version!r}")
    if version == 1 and (ranges != "train" or degrade is not None):
        raise ValueError("ranges and degrade apply to generator version 2 only")
    if degrade is not None and degrade not in v2.DEGRADATIONS:
        raise ValueError(f"degrade must be one of {sorted(v2.DEGRADATIONS)}, received "
                         f"{degrade!r}")
    if version == 2:
        v2.check_ranges(ranges)
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
    rng = np.random.default_rng(seed)  # version 1: one stream over the cases written
    brains = {name: load_anatomy(name, downsample) for name in anatomies}
    folders = []
    for i, case_id in zip(range(start, start + n), case_ids):
        anatomy = brains[anatomies[i % len(anatomies)]]
        folder = root / case_id
        if version == 1:
            volumes, labels = v1.make_case(anatomy, rng)
        else:  # version 2: case i depends only on (seed, i)
            volumes, labels = v2.make_case(anatomy, v2.case_rng(seed, i), ranges, degrade)
        folder.mkdir(parents=True)
        io.write_text(folder / "SYNTHETIC.txt",  # first: even a partial case is marked
                      f"Synthetic lesion painted on the real {anatomy.name} anatomy by "
                      f"keras_priors.volumetric.synthetic (generator version {version}"
                      f"{'' if version == 1 else f', ranges {ranges}'}"
                      f"{'' if degrade is None else f', degraded {degrade}'}, seed {seed}, case "
                      f"{i}); not a real tumour.\n")
        for name, vol in volumes.items():
            io.save_nifti(nib.Nifti1Image(vol, anatomy.affine), folder / f"{case_id}_{name}.nii.gz")
        io.save_nifti(nib.Nifti1Image(labels, anatomy.affine), folder / f"{case_id}_seg.nii.gz")
        folders.append(folder)
    return folders
