"""Segmentation metrics on label maps, per region, in millimetres with the voxel spacing.

Global (BraTS 2017-2022): `dice` and `hd95` on the whole case. A region absent from both
prediction and reference has Dice 1 and HD95 0; absent from only one of them, Dice 0 and
HD95 = 373.13 mm (the diagonal of the 240x240x155 BraTS volume). HD95 pools the two
directed surface-distance sets before taking the 95th percentile (medpy's convention).

`nsd`: normalized surface Dice at a tolerance in mm (default the smallest voxel spacing,
as BraTS 2025): the mean of the shares of each mask's border voxels within the tolerance of
the other mask's border (panoptica's formula).

`lesionwise_2023` follows the BraTS 2023/2024 challenge's published metrics code
(`get_LesionWiseScores` / `get_LesionWiseResults`):
- components are 26-connected; the ground truth (GT) is dilated with the 18-neighbourhood
  structuring element (3 iterations for glioma, SSA and paediatric, 1 for meningioma and
  metastases: `LESION_RULES_2023`), the dilated mask is split into 26-connected blobs, and
  the GT voxels inside one blob form one lesion (pieces that the dilation joins are merged);
- each GT lesion is dilated again on its own; every predicted component touching that
  dilated region is matched to it (a component may match several lesions), and the
  lesion's Dice and HD95 are taken between the lesion and the union of its matched
  components; a lesion with no match has Dice 0 and HD95 374;
- GT lesions of at most `min_volume` mm^3 (50 for glioma; the code drops `<= 50`) are then
  left out of the scores and of the TP / FN counts, but a prediction touching one is still
  not a false positive;
- FP = predicted components matched to no GT lesion (small ones included);
- Dice = sum of the kept lesions' Dice / (kept lesions + FP); HD95 = (sum of their HD95 +
  374 x FP) / (kept lesions + FP); nothing to count (no kept lesion, no FP): Dice 1, HD95 0;
- HD95 there is DeepMind's `surface-distance` robust Hausdorff, which the code calls:
  surface elements on the voxel-corner grid weighted by their marching-cubes area, the
  larger of the two directed 95th percentiles (`surfel_hd95`; not medpy's pooled value).

`lesionwise_2025` follows BraTS 2025's `brats-evaluation` (panoptica, config `gli`):
26-connected components, matched one-to-one by maximum total Dice (Hungarian algorithm over
pairs with Dice > 1e-6), no dilation and no size threshold; Dice, NSD (tolerance: the
smallest voxel spacing) and HD95 (pooled, as `hd95`) averaged over matched pairs; TP / FP /
FN and F1 = TP / (TP + (FP + FN) / 2). No match while a lesion exists: Dice 0, NSD 0,
F1 0 and HD95 373 (the package reports inf, its parser 373); no lesion in either mask:
the scores are None (the package's NaN), left out of means.

>>> a = np.zeros((10, 10, 10), bool); a[2:6, 2:6, 2:6] = True
>>> dice(a, a), hd95(a, a), score("lesionwise", a, a)["dice"]
(1.0, 0.0, 1.0)
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


# --------------------------------------------------------------------------------------
# Surface Dice, and the lesion-wise rules of BraTS 2023/2024 and BraTS 2025
# --------------------------------------------------------------------------------------

HD95_LESION_2023 = 374.0  # a missed or false-positive lesion, BraTS 2023/2024
HD95_LESION_2025 = 373.0  # nothing matched, BraTS 2025 (the 240x240x155 diagonal)
MATCH_DICE_2025 = 1e-6  # pairs must overlap by more than this Dice to be matched

# per challenge: (dilation iterations, ground-truth lesions of at most this many mm^3 dropped)
LESION_RULES_2023 = {
    "glioma": (3, 50.0), "ssa": (3, 50.0), "ped": (3, 50.0), "meningioma": (1, 50.0),
    "metastases": (1, 2.0),
}


def _structure(connectivity):
    from scipy.ndimage import generate_binary_structure

    return generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])


def components(mask):
    """(labels, count): the 26-connected components of a 3D mask, numbered from 1."""
    from scipy.ndimage import label

    labels, count = label(np.asarray(mask, bool), structure=_structure(26))
    return labels, int(count)


def _border_distances(pred, true, spacing):
    """Directed distances (mm) between the one-voxel borders of two non-empty masks:
    (each border voxel of `true` to the border of `pred`, and the reverse)."""
    from scipy.ndimage import distance_transform_edt

    sp, st = _surface(pred), _surface(true)
    true_to_pred = distance_transform_edt(~sp, sampling=spacing)[st]
    pred_to_true = distance_transform_edt(~st, sampling=spacing)[sp]
    return true_to_pred, pred_to_true


def nsd(pred, true, spacing=(1.0, 1.0, 1.0), tolerance=None):
    """Normalized surface Dice: the mean of the two shares of border voxels lying within
    `tolerance` mm of the other mask's border (default: the smallest voxel spacing, as
    BraTS 2025). Both empty: 1; one empty: 0.

    >>> a = np.zeros((8, 8, 8), bool); a[2:6, 2:6, 2:6] = True
    >>> nsd(a, a)
    1.0
    """
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    if not pred.any() and not true.any():
        return 1.0
    if not pred.any() or not true.any():
        return 0.0
    tolerance = min(spacing) if tolerance is None else float(tolerance)
    true_to_pred, pred_to_true = _border_distances(pred, true, spacing)
    return float(((true_to_pred <= tolerance).mean() + (pred_to_true <= tolerance).mean()) / 2)


# The 2023 code measures HD95 as DeepMind's `surface-distance` does: surface elements sit
# at voxel corners (2x2x2 neighbourhood codes), each weighted by its marching-cubes area.
_KERNEL = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]])
_CODE_NORMALS = None


def _code_normals():
    """(256, 4, 3) area vectors of the marching-cubes triangles of each 2x2x2 code
    (Lorensen's table, triangles through the edge midpoints; zero-padded). As in the
    table the challenge code ships, a code with more than four corners inside takes the
    triangles of its complement, so a surface and its inverse have the same area."""
    global _CODE_NORMALS
    if _CODE_NORMALS is None:
        try:
            from skimage.measure import marching_cubes
        except ImportError:  # pragma: no cover - scikit-image is installed with the package
            raise ImportError("the BraTS 2023 lesion-wise HD95 weighs surface elements by "
                              "their marching-cubes area; pip install scikit-image") from None
        table = np.zeros((256, 4, 3))
        for code in range(1, 255):
            inside = code if bin(code).count("1") <= 4 else 255 - code
            cube = ((_KERNEL & inside) > 0).astype(np.float64)
            verts, faces, _, _ = marching_cubes(cube, 0.5, method="lorensen")
            tri = verts[faces]
            normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]) / 2
            table[code, :len(normals)] = normals
        _CODE_NORMALS = table
    return _CODE_NORMALS


def _surfels(mask, spacing):
    """(border, area): corner-grid surface elements of a padded mask and their areas."""
    from scipy.ndimage import correlate

    code = correlate(mask.astype(np.int32), _KERNEL, mode="constant", cval=0)
    scale = np.array([spacing[1] * spacing[2], spacing[0] * spacing[2], spacing[0] * spacing[1]])
    areas = np.linalg.norm(_code_normals() * scale, axis=-1).sum(-1)
    border = (code != 0) & (code != 255)
    return border, areas[code]


def surfel_hd95(pred, true, spacing=(1.0, 1.0, 1.0), percent=95):
    """The robust Hausdorff distance of the BraTS 2023/2024 code (DeepMind's convention):
    the larger of the two directed, area-weighted `percent`-th percentiles of the distances
    between corner-grid surface elements; inf when either mask is empty."""
    from scipy.ndimage import distance_transform_edt

    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    if not pred.any() or not true.any():
        return float("inf")
    both = np.argwhere(pred | true)
    lo, hi = both.min(0), both.max(0) + 1
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    padded = [np.pad(m[crop], ((0, 1),) * 3) for m in (true, pred)]
    (bt, at), (bp, ap) = (_surfels(m, spacing) for m in padded)
    result = 0.0
    for src, area, dst in ((bt, at, bp), (bp, ap, bt)):
        dist = distance_transform_edt(~dst, sampling=spacing)[src]
        weight = area[src]
        order = np.argsort(dist, kind="stable")
        cum = np.cumsum(weight[order]) / weight.sum()
        idx = min(int(np.searchsorted(cum, percent / 100.0)), len(dist) - 1)
        result = max(result, float(dist[order][idx]))
    return result


def lesionwise_2023(pred, true, spacing=(1.0, 1.0, 1.0), dilation=3, min_volume=50.0,
                    penalty=HD95_LESION_2023):
    """Lesion-wise Dice and HD95 of one region under the BraTS 2023/2024 rules.

    Returns {"dice", "hd95", "tp", "fp", "fn"}; see the module's notes for each rule.

    >>> gt = np.zeros((20, 20, 20), bool); gt[2:8, 2:8, 2:8] = True      # 216 mm^3
    >>> lesionwise_2023(gt, gt)["dice"], lesionwise_2023(gt, gt)["tp"]
    (1.0, 1)
    """
    from scipy.ndimage import binary_dilation

    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    voxel = float(np.prod(spacing))
    struct = _structure(18)
    pred_cc, _ = components(pred)
    blobs, n_gt = components(binary_dilation(true, struct, iterations=dilation))
    lesions = np.where(true, blobs, 0)  # GT pieces inside one dilated blob form one lesion
    matched, kept_dice, kept_hd, tp, fn = set(), [], [], 0, 0
    for lesion in range(1, n_gt + 1):
        gt = lesions == lesion
        near = binary_dilation(gt, struct, iterations=dilation)
        hits = np.unique(pred_cc[near])
        hits = hits[hits != 0]
        matched.update(hits.tolist())
        if gt.sum() * voxel <= min_volume:  # small GT lesions: dropped, yet their hits count
            continue
        found = np.isin(pred_cc, hits) if len(hits) else np.zeros_like(gt)
        kept_dice.append(dice(found, gt))
        hd = surfel_hd95(found, gt, spacing)
        kept_hd.append(penalty if not np.isfinite(hd) else hd)
        tp, fn = tp + bool(len(hits)), fn + (not len(hits))
    fp = len(set(np.unique(pred_cc[pred_cc != 0]).tolist()) - matched)
    n = len(kept_dice) + fp
    if n == 0:  # nothing to score: no kept GT lesion and no false positive
        return {"dice": 1.0, "hd95": 0.0, "tp": tp, "fp": fp, "fn": fn}
    return {"dice": float(sum(kept_dice) / n), "hd95": float((sum(kept_hd) + penalty * fp) / n),
            "tp": tp, "fp": fp, "fn": fn}


def match_lesions(pred_cc, n_pred, true_cc, n_true, threshold=MATCH_DICE_2025):
    """One-to-one matching of predicted to reference components maximising the summed
    Dice (Hungarian algorithm over pairs overlapping by more than `threshold` Dice):
    a list of (reference label, predicted label)."""
    from scipy.optimize import linear_sum_assignment

    if n_pred == 0 or n_true == 0:
        return []
    both = (pred_cc > 0) & (true_cc > 0)
    inter = np.zeros((n_true + 1, n_pred + 1))
    np.add.at(inter, (true_cc[both], pred_cc[both]), 1)
    size_t = np.bincount(true_cc.ravel(), minlength=n_true + 1)[1:]
    size_p = np.bincount(pred_cc.ravel(), minlength=n_pred + 1)[1:]
    d = 2 * inter[1:, 1:] / (size_t[:, None] + size_p[None, :])
    cost = np.where(d > threshold, 1.0 - d, 1.0 + 1e-6)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r) + 1, int(c) + 1) for r, c in zip(rows, cols) if cost[r, c] < 1.0]


def lesionwise_2025(pred, true, spacing=(1.0, 1.0, 1.0), tolerance=None,
                    penalty=HD95_LESION_2025):
    """Lesion-wise scores of one region under the BraTS 2025 rules (`brats-evaluation`,
    built on `panoptica`): {"dice", "nsd", "hd95", "tp", "fp", "fn", "f1"}; the three
    scores are means over matched lesions. No lesion in either mask: scores None.

    >>> gt = np.zeros((20, 20, 20), bool); gt[2:8, 2:8, 2:8] = True
    >>> lesionwise_2025(gt, gt)["f1"]
    1.0
    """
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    pred_cc, n_pred = components(pred)
    true_cc, n_true = components(true)
    pairs = match_lesions(pred_cc, n_pred, true_cc, n_true)
    tp = len(pairs)
    fp, fn = n_pred - tp, n_true - tp
    counts = {"tp": tp, "fp": fp, "fn": fn}
    if tp == 0:
        if n_pred + n_true == 0:
            return {"dice": None, "nsd": None, "hd95": None, **counts, "f1": None}
        return {"dice": 0.0, "nsd": 0.0, "hd95": penalty, **counts, "f1": 0.0}
    scores = []
    for t, p in pairs:
        a, b = pred_cc == p, true_cc == t
        scores.append((dice(a, b), nsd(a, b, spacing, tolerance), hd95(a, b, spacing)))
    dsc, nsd_, hd = (float(np.mean(s)) for s in zip(*scores))
    return {"dice": dsc, "nsd": nsd_, "hd95": hd, **counts,
            "f1": tp / (tp + 0.5 * fp + 0.5 * fn)}


METRICS = ("global", "nsd", "lesionwise_2023", "lesionwise_2025")
ALIASES = {"lesionwise": "lesionwise_2023", "lesionwise2023": "lesionwise_2023",
           "lesionwise2025": "lesionwise_2025", "surface_dice": "nsd"}


def metric_names(metrics):
    """Canonical names of `metrics` (a list or a comma-separated string); unknown names
    raise ValueError naming the closest known ones."""
    import difflib

    if isinstance(metrics, str):
        metrics = [m for m in metrics.split(",") if m.strip()]
    out = []
    for name in metrics:
        key = ALIASES.get(name.strip().lower(), name.strip().lower())
        if key not in METRICS:
            close = difflib.get_close_matches(key, [*METRICS, *ALIASES], n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ValueError(f"unknown metric {name!r}: choose from "
                             f"{', '.join(METRICS)} (lesionwise = lesionwise_2023){hint}")
        if key not in out:
            out.append(key)
    if not out:
        raise ValueError(f"no metric given: choose from {', '.join(METRICS)}")
    return out


def score(name, pred, true, spacing=(1.0, 1.0, 1.0), **options):
    """One metric by name on a pair of binary masks of one region."""
    name = metric_names([name])[0]
    if name == "global":
        return {"dice": dice(pred, true), "hd95": hd95(pred, true, spacing)}
    if name == "nsd":
        return {"nsd": nsd(pred, true, spacing, options.get("tolerance"))}
    if name == "lesionwise_2023":
        dilation, min_volume = LESION_RULES_2023[options.get("challenge", "glioma")]
        return lesionwise_2023(pred, true, spacing, dilation=options.get("dilation", dilation),
                               min_volume=options.get("min_volume", min_volume))
    return lesionwise_2025(pred, true, spacing, options.get("tolerance"))
