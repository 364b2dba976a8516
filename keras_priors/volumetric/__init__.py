"""Volumetric segmentation on NIfTI scans: I/O in RAS+ with orientation round trips, case
layouts (BraTS 2021 / 2023+, MSD, manifests) and BraTS regions.

>>> from keras_priors import volumetric
>>> cases = volumetric.discover("BraTS2021_Training_Data")   # doctest: +SKIP
>>> images, label, ref = volumetric.load_case(cases[0])       # doctest: +SKIP
>>> cfg = volumetric.SegConfig(data="BraTS2021_Training_Data", model="unet3d_lowrank")
>>> volumetric.fit_segmentation(cfg, "runs/seg")                # doctest: +SKIP

Training, prediction and evaluation (which import Keras) load on first use.
"""

import importlib

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
    "write_like", "SegConfig", "channel_order", "evaluate_cases", "evaluate_predictions",
    "fit_segmentation", "model_for_inference", "predict", "predict_case",
]

_LAZY = {"SegConfig": "config", "fit_segmentation": "train",
         "model_for_inference": "prediction", "predict": "prediction",
         "predict_case": "prediction", "channel_order": "prediction",
         "evaluate_cases": "evaluation", "evaluate_predictions": "evaluation"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
