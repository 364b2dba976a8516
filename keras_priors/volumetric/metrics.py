"""Segmentation metrics on label maps: Dice and the 95th-percentile Hausdorff distance
(HD95), per region, in millimetres with the voxel spacing.

Conventions (as the BraTS challenge scores): a region absent from both prediction and
reference has Dice 1 and HD95 0; absent from only one of them, Dice 0 and HD95 = 373.13 mm
(the diagonal of the 240x240x155 BraTS volume).
"""

from __future__ import annotations

import numpy as np

HD95_EMPTY = 373.13


def dice(pred, true):
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    total = pred.sum() + true.sum()
    return 1.0 if total == 0 else float(2.0 * (pred & true).sum() / total)


def _surface(mask):
    from scipy.ndimage import binary_erosion

    return mask & ~binary_erosion(mask, iterations=1, border_value=0)


def hd95(pred, true, spacing=(1.0, 1.0, 1.0)):
    """95th percentile of the symmetric surface distances between two masks (mm)."""
    from scipy.ndimage import distance_transform_edt

    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    if not pred.any() and not true.any():
        return 0.0
    if not pred.any() or not true.any():
        return HD95_EMPTY
    sp, st = _surface(pred), _surface(true)
    to_true = distance_transform_edt(~st, sampling=spacing)
    to_pred = distance_transform_edt(~sp, sampling=spacing)
    distances = np.concatenate([to_true[sp], to_pred[st]])
    return float(np.percentile(distances, 95))


def region_scores(pred_masks, true_masks, names, spacing=(1.0, 1.0, 1.0)):
    """{region: {"dice": d, "hd95": h}} for (X,Y,Z,R) binary masks."""
    return {
        name: {"dice": dice(pred_masks[..., i], true_masks[..., i]),
               "hd95": hd95(pred_masks[..., i], true_masks[..., i], spacing)}
        for i, name in enumerate(names)
    }


def mean_scores(per_case):
    """{"dice": {region: mean}, "hd95": {region: mean}} over a {case: region_scores} dict."""
    names = next(iter(per_case.values())).keys()
    return {m: {n: float(np.mean([s[n][m] for s in per_case.values()])) for n in names}
            for m in ("dice", "hd95")}
