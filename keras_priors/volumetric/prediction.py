"""Segmentation inference: a trained model (run folder or zoo weights) applied to cases,
label maps written in each input's own grid and orientation.

    keras-priors seg predict --model runs/seg --input CASE_OR_DIR --out preds/
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .. import zoo
from . import inference
from .config import SegConfig, build
from .layouts import discover, from_regions, load_case
from .nifti import write_like
from .pipeline import zscore


def model_for_inference(source, weights=None):
    """A trained segmentation model: a finished run folder, or a zoo model name with a
    weights tag (`model_for_inference("unet3d_lowrank", "synthetic_brats")`).

    The model carries `seg_config` (patch, overlap) and `seg_split` (regions, modalities,
    voxel spacing it was trained at) for `predict_case`.
    """
    if weights is not None:
        return _zoo_model(str(source), weights)
    run_dir = Path(source)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"model {str(source)!r} is not a run folder; give a segmentation run folder, or a zoo "
            f"model name with weights (e.g. --model unet3d_lowrank --weights synthetic_brats)")
    for name in ("config.json", "split.json", "weights.weights.h5"):
        if not (run_dir / name).exists():
            raise FileNotFoundError(f"{run_dir} is not a finished segmentation run: no {name}")
    cfg = SegConfig(**json.loads((run_dir / "config.json").read_text()))
    split = json.loads((run_dir / "split.json").read_text())
    model = build(cfg, split["channels"], split["outputs"], "sigmoid")
    model.load_weights(run_dir / "weights.weights.h5")
    model.seg_config, model.seg_split = cfg, split
    return model


def _zoo_model(name, tag):
    spec = zoo.registry.get(name)
    seg_tags = sorted(t for t, e in spec.weights.items() if e.extra.get("regions") is not None)
    if tag not in seg_tags:
        raise ValueError(f"{spec.name!r} has no segmentation weights {tag!r}; "
                         f"available: {seg_tags or 'none'}")
    entry = spec.weights[tag]
    model = zoo.load(spec.name, weights=tag)
    cfg = SegConfig(model=spec.name, patch=entry.input_shape[:3],
                    widths=entry.build_kwargs.get("widths"),
                    overlap=entry.extra.get("overlap", 0.5))
    model.seg_config = cfg
    model.seg_split = {**entry.extra, "channels": entry.input_shape[-1], "outputs": entry.classes}
    return model


# BraTS 2023 names of the BraTS 2021 modalities
SAME_MODALITY = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair"}


def channel_order(case, modalities):
    """Indices that put a case's channels in the order a model was trained with."""
    have = [SAME_MODALITY.get(m, m) for m in case.modalities]
    want = [SAME_MODALITY.get(m, m) for m in modalities]
    if sorted(have) != sorted(want):
        raise ValueError(f"case {case.case_id} has modalities {list(case.modalities)}, but the "
                         f"model was trained on {list(modalities)}")
    return [have.index(m) for m in want]


def _resample(array, shape, order):
    from scipy import ndimage

    factors = [t / s for t, s in zip(shape, array.shape[:3])] + [1] * (array.ndim - 3)
    return ndimage.zoom(array, factors, order=order, grid_mode=True, mode="nearest")


def predict_case(model, case, batch_size=2):
    """(label map in RAS+, region probabilities, reference Volume, reference label or None)
    of one case; the case's files are read once.

    Channels are put in the model's modality order; a case whose voxel size differs from the
    model's training spacing by more than 5% is resampled to it and the probabilities are
    resampled back onto the case's own grid.
    """
    cfg, split = model.seg_config, getattr(model, "seg_split", {})
    images, label, ref = load_case(case)
    x = zscore(images)
    if split.get("modalities"):
        x = x[..., channel_order(case, split["modalities"])]
    spacing = split.get("spacing")
    resample = spacing is not None and not np.allclose(ref.zooms, spacing, rtol=0.05)
    if resample:
        shape = [max(1, round(n * z / s)) for n, z, s in zip(x.shape[:3], ref.zooms, spacing)]
        x = _resample(x, shape, order=1)
    probs = inference.sliding_window(x, model, cfg.patch, cfg.overlap, batch_size)
    if resample:
        probs = _resample(probs, ref.ras_shape, order=1)
    if case.regions:
        labels = from_regions(probs > 0.5, case.regions, _region_layout(case))
    else:
        labels = (probs[..., 0] > 0.5).astype(np.uint8)
    return labels, probs, ref, label


def _region_layout(case):
    return "msd_brats" if case.layout == "msd" else case.layout


def predict(model, inputs, out_dir, layout="auto", overwrite=False, progress=print,
            weights=None):
    """Write `<case>_seg.nii.gz` for every case of `inputs` (a case folder or a dataset).

    `model` is a run folder, or a zoo model name together with a `weights` tag.
    """
    out_dir = Path(out_dir)
    model = model_for_inference(model, weights)
    inputs = Path(inputs)
    cases = discover(inputs if not _is_case_folder(inputs) else inputs.parent, layout,
                     require_label=False)
    if _is_case_folder(inputs):
        cases = [c for c in cases if c.case_id == inputs.name]
    written = []
    for case in cases:
        t0 = time.perf_counter()
        labels, _, ref, _ = predict_case(model, case)
        path = write_like(ref, labels, out_dir / f"{case.case_id}_seg.nii.gz", overwrite=overwrite)
        written.append(path)
        if progress:
            progress(f"{case.case_id}: {path} ({time.perf_counter() - t0:.1f} s)")
    return written


def _is_case_folder(path):
    """A folder holding one case's NIfTI files (rather than a dataset of case folders)."""
    return path.is_dir() and any(p.name.endswith((".nii", ".nii.gz")) for p in path.iterdir())
