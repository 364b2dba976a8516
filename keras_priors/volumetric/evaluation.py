"""Scoring segmentations: a model on held-out cases, or prediction files against labels.

    keras-priors seg evaluate --pred preds/ --data DIR
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import metrics
from .layouts import discover, load_case
from .nifti import read_volume
from .pipeline import targets
from .prediction import predict_case


def _region_names(case):
    return list(case.regions) if case.regions else ["foreground"]


def evaluate_cases(model, cases):
    """Mean and per-case Dice / HD95 per region on `cases` (sliding window)."""
    if not cases:
        return {"dice": {}, "hd95": {}, "per_case": {}}
    per_case = {}
    for case in cases:
        _, probs, ref, label = predict_case(model, case)
        truth = targets(case, label)
        per_case[case.case_id] = metrics.region_scores(probs > 0.5, truth.astype(bool),
                                                       _region_names(case), ref.zooms)
    return {**metrics.mean_scores(per_case), "per_case": per_case}


def evaluate_predictions(pred_dir, data, layout="auto"):
    """Dice / HD95 of `<case>_seg.nii.gz` files in `pred_dir` against a labelled dataset."""
    pred_dir = Path(pred_dir)
    per_case = {}
    for case in discover(data, layout):
        pred_path = pred_dir / f"{case.case_id}_seg.nii.gz"
        if not pred_path.exists():
            continue
        _, label, ref = load_case(case)
        pred = np.rint(read_volume(pred_path).data).astype(np.int32)
        p, t = targets(case, pred), targets(case, label)
        per_case[case.case_id] = metrics.region_scores(p.astype(bool), t.astype(bool),
                                                       _region_names(case), ref.zooms)
    if not per_case:
        raise ValueError(f"no <case>_seg.nii.gz predictions in {pred_dir} match cases of {data}")
    return {**metrics.mean_scores(per_case), "cases": len(per_case), "per_case": per_case}
