"""Synthetic brain-tumour cases in the BraTS 2021 layout, painted onto real anatomy.

No brain-tumour scans can be installed offline, so this package paints *synthetic* lesions
onto two *real* brains - the Colin27 single-subject T1 (Debian `mricron-data`) and the
MNI152 2009 template with its tissue maps (PyPI `nilearn`) - and writes them as real NIfTI
files: `BraTS2021_XXXXX/BraTS2021_XXXXX_{flair,t1,t1ce,t2,seg}.nii.gz`, labels 0
background, 1 necrotic / non-enhancing core, 2 oedema, 4 enhancing tumour.

Two generators, versioned so old cases stay reproducible:

- **version 1** (`v1.py`, the default of `write_cases`): one or two lesions of 10-20 mm
  radius with fixed contrasts; what the first `synthetic_brats` weights learned.
- **version 2** (`v2.py`): domain-randomised after SynthSeg - lesions of 1-400 cm^3,
  multifocal, with or without necrosis / enhancement / oedema / mass effect; random
  contrasts per tissue and compartment; bias field, gamma, noise, low resolution, random
  affine and elastic deformation. `v2.TRAIN` and the held-out `v2.OOD` ranges.
  `SyntheticSource` generates them on the fly for training (`seg train --data synthetic`).

These are NOT real tumours; models trained on them are not clinical models.

>>> paths = write_cases("synthetic_brats", n=4, seed=0, downsample=2)              # doctest: +SKIP
>>> paths = write_cases("randomised", n=4, seed=0, downsample=2, version=2)         # doctest: +SKIP
"""

from . import v1, v2
from .anatomy import (
    ANATOMIES,
    COLIN27_BRAIN,
    COLIN27_T1,
    MNI152,
    Anatomy,
    load_anatomy,
    tissue_probabilities,
)
from .cases import GENERATORS, LATEST, write_cases
from .source import SyntheticSource
from .v1 import LABELS, lesion_labels, make_case, render

__all__ = [
    "ANATOMIES", "COLIN27_BRAIN", "COLIN27_T1", "GENERATORS", "LABELS", "LATEST", "MNI152",
    "Anatomy", "SyntheticSource", "lesion_labels", "load_anatomy", "make_case", "render", "tissue_probabilities",
    "v1", "v2", "write_cases",
]
