"""Scoring segmentations: a model on held-out cases, or prediction files against labels.

    keras-priors seg evaluate --pred preds/ --data DIR --metrics global,lesionwise,nsd

`evaluate_predictions` checks every pair before scoring anything: a prediction must share
shape and affine with its label (the readers' tolerance), and the label values of both
must belong to the case's label scheme (BraTS 2021 / 2023 / 2024, see `layouts`).

>>> result = evaluate_predictions("preds", "BraTS2021_Training_Data",
...                               metrics=("global", "lesionwise"))     # doctest: +SKIP
>>> print(format_table(result))                                        # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import metrics
from .layouts import check_labels, discover, label_scheme, to_regions
from .nifti import NiftiError, read_volume

AFFINE_ATOL = 1e-3  # as nifti.check_same_grid


def _region_names(case):
    return list(case.regions) if case.regions else ["foreground"]


def evaluate_cases(model, cases):
    """Mean and per-case Dice / HD95 per region on `cases` (sliding window)."""
    from .pipeline import targets
    from .prediction import predict_case

    if not cases:
        return {"dice": {}, "hd95": {}, "per_case": {}}
    per_case = {}
    for case in cases:
        _, probs, ref, label = predict_case(model, case)
        truth = targets(case, label)
        per_case[case.case_id] = metrics.region_scores(probs > 0.5, truth.astype(bool),
                                                       _region_names(case), ref.zooms)
    return {**metrics.mean_scores(per_case), "per_case": per_case}


def _read_label(path):
    vol = read_volume(path)
    if vol.data.ndim != 3:
        raise NiftiError(f"label map {path} must be 3D, received shape {vol.data.shape}")
    return vol, np.rint(vol.data).astype(np.int32)


def check_pair(pred_path, label_path, scheme):
    """Read and check one prediction against its label; -> (prediction, label, Volume).

    Raises NiftiError naming both files when shape or affine differ, and ValueError naming
    the file and the values when labels fall outside `scheme`.
    """
    ref, label = _read_label(label_path)
    vol, pred = _read_label(pred_path)
    if vol.ras_shape != ref.ras_shape:
        raise NiftiError(f"prediction {pred_path} has shape {vol.ras_shape} but its label "
                         f"{label_path} has {ref.ras_shape}")
    if not np.allclose(vol.ras_affine, ref.ras_affine, atol=AFFINE_ATOL):
        shift = np.abs(vol.ras_affine[:3, 3] - ref.ras_affine[:3, 3]).max()
        raise NiftiError(
            f"prediction {pred_path} and its label {label_path} have different affines "
            f"(voxel-to-world maps; origins {shift:.3g} mm apart): a prediction must lie on "
            "its label's voxel grid")
    check_labels(np.unique(label), scheme, label_path)
    check_labels(np.unique(pred), scheme, pred_path)
    return pred, label, ref


def _masks(case, label_map):
    if case.regions:
        return to_regions(label_map, case.regions).astype(bool)
    return (label_map > 0)[..., None]


def score_case(pred, label, case, spacing, names, options=None):
    """{metric: {region: scores}} for one case's prediction and label maps."""
    p, t = _masks(case, pred), _masks(case, label)
    regions = _region_names(case)
    out = {}
    for name in names:
        out[name] = {r: metrics.score(name, p[..., i], t[..., i], spacing, **(options or {}))
                     for i, r in enumerate(regions)}
    return out


def _mean(per_case, names):
    """Means over cases of each metric, region and score (None scores left out); TP / FP /
    FN counts are summed."""
    mean = {}
    for name in names:
        regions = []
        for scores in per_case.values():
            regions += [r for r in scores[name] if r not in regions]
        mean[name] = {}
        for region in regions:
            rows = [s[name][region] for s in per_case.values() if region in s[name]]
            summary = {}
            for key in rows[0]:
                values = [row[key] for row in rows if row.get(key) is not None]
                if key in ("tp", "fp", "fn"):
                    summary[key] = int(sum(values))
                else:
                    summary[key] = float(np.mean(values)) if values else None
            mean[name][region] = summary
    return mean


def evaluate_predictions(pred_dir, data, layout="auto", metrics=("global",), labels=None,
                         options=None, progress=None):
    """Scores of `<case>_seg.nii.gz` files in `pred_dir` against a labelled dataset.

    `metrics`: names from `metrics.METRICS` ('global', 'nsd', 'lesionwise_2023' alias
    'lesionwise', 'lesionwise_2025'), a list or a comma-separated string. `labels` forces
    the label scheme ('brats2021', 'brats2023', 'brats2024'). Returns {"cases", "metrics",
    "labels": {case: scheme}, "mean": {metric: {region: scores}}, "per_case": {case:
    {metric: {region: scores}}}} and, with 'global', the mean "dice" / "hd95" per region.
    """
    from . import metrics as m

    names = m.metric_names(metrics)
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction folder {pred_dir} does not exist")
    pairs = []
    for case in discover(data, layout, labels=labels):
        pred_path = pred_dir / f"{case.case_id}_seg.nii.gz"
        if pred_path.exists():
            pairs.append((case, pred_path))
    if not pairs:
        raise ValueError(f"no <case>_seg.nii.gz predictions in {pred_dir} match cases of {data}")
    for case, pred_path in pairs:  # every check before any scoring
        check_pair(pred_path, case.label, label_scheme(case))
    per_case, schemes = {}, {}
    for case, pred_path in pairs:
        pred, label, ref = check_pair(pred_path, case.label, label_scheme(case))
        per_case[case.case_id] = score_case(pred, label, case, ref.zooms, names, options)
        schemes[case.case_id] = label_scheme(case)
        if progress:
            progress(case.case_id)
    mean = _mean(per_case, names)
    result = {"cases": len(per_case), "metrics": names, "labels": schemes, "mean": mean}
    if "global" in names:
        for key in ("dice", "hd95"):
            result[key] = {r: s[key] for r, s in mean["global"].items()}
    result["per_case"] = per_case
    return result


# table columns per metric: (key, header, format)
_COLUMNS = {
    "global": [("dice", "Dice", "{:.4f}"), ("hd95", "HD95", "{:.2f}")],
    "nsd": [("nsd", "NSD", "{:.4f}")],
    "lesionwise_2023": [("dice", "LW23 Dice", "{:.4f}"), ("hd95", "LW23 HD95", "{:.2f}"),
                        ("tp", "TP", "{}"), ("fp", "FP", "{}"), ("fn", "FN", "{}")],
    "lesionwise_2025": [("dice", "LW25 Dice", "{:.4f}"), ("nsd", "LW25 NSD", "{:.4f}"),
                        ("hd95", "LW25 HD95", "{:.2f}"), ("f1", "F1", "{:.4f}"),
                        ("tp", "TP", "{}"), ("fp", "FP", "{}"), ("fn", "FN", "{}")],
}


def _table(scores, names):
    regions = []
    for name in names:
        regions += [r for r in scores[name] if r not in regions]
    header = ["region"] + [h for n in names for _, h, _ in _COLUMNS[n]]
    rows = [header]
    for region in regions:
        row = [region]
        for name in names:
            cell = scores[name].get(region, {})
            for key, _, fmt in _COLUMNS[name]:
                value = cell.get(key)
                row.append("-" if value is None else fmt.format(value))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(r, widths))) for r in rows)


def format_table(result, per_case=False):
    """A text table (regions x metrics) of `evaluate_predictions`' means, and of every
    case with `per_case`. Lesion-wise TP / FP / FN of the mean are totals over cases."""
    names = result["metrics"]
    parts = [f"mean over {result['cases']} case(s)", _table(result["mean"], names)]
    if per_case:
        for case_id, scores in result["per_case"].items():
            parts += ["", f"{case_id} ({result['labels'].get(case_id) or 'classes'})",
                      _table(scores, names)]
    return "\n".join(parts)
