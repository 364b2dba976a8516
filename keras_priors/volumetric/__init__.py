"""Volumetric segmentation on NIfTI scans: I/O in RAS+ with orientation round trips, case
layouts (BraTS 2021 / 2023+, MSD, manifests) and BraTS regions.

>>> from keras_priors import volumetric
>>> cases = volumetric.discover("BraTS2021_Training_Data")   # doctest: +SKIP
>>> images, label, ref = volumetric.load_case(cases[0])       # doctest: +SKIP
"""

from .layouts import (
                      LAYOUTS,
                      MODALITIES,
                      REGIONS,
                      Case,
                      detect,
                      discover,
                      from_regions,
                      load_case,
                      to_regions,
)
from .nifti import NiftiError, Volume, check_same_grid, from_ras, read_volume, write_like

__all__ = [
    "LAYOUTS", "MODALITIES", "REGIONS", "Case", "NiftiError", "Volume", "check_same_grid",
    "detect", "discover", "from_ras", "from_regions", "load_case", "read_volume", "to_regions",
    "write_like",
]
