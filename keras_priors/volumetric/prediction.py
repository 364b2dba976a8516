"""Segmentation inference: a trained model (run folder or zoo weights) applied to cases,
label maps written in each input's own grid and orientation.

    keras-priors seg predict --model runs/seg --input CASE_OR_DIR --out preds/ \\
        [--force] [--tta [AXES]] [--postprocess-et-min MM3] [--png]

Prediction never destroys data. `check_predict` runs every refusal before a model is built
or any inference runs: an `--out` folder equal to or inside an input case folder or the
dataset folder holding the cases (with or without `--force`), an output path that resolves
to any input image or label, `--out` naming an existing file, existing predictions without
`--force`, and images that are unreadable, off-grid, entirely non-finite or constant.

Options: test-time augmentation by mirroring (`tta`: all 8 flips of the RAS axes, or a
subset such as "x"), probabilities averaged as nnU-Net and MONAI do; BraTS post-processing
of small enhancing-tumour components (`postprocess`, off by default, see
`postprocess_labels`); quick-look PNG overlays (`png`, see `write_overlay`).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .. import io, zoo
from . import inference
from .config import SegConfig, build
from .layouts import REGIONS, discover, from_regions, load_case
from .nifti import require_signal, write_like
from .pipeline import zscore

RUN_WEIGHTS = {None: "weights.weights.h5", "last": "weights.weights.h5",
               "best": "best.weights.h5"}


def _is_run(source, weights):
    return weights in RUN_WEIGHTS and Path(str(source)).is_dir()


def model_for_inference(source, weights=None):
    """A trained segmentation model: a finished run folder (`weights` None / "last" for its
    final weights, "best" for the best validated ones), or a zoo model name with a weights
    tag (`model_for_inference("unet3d_lowrank", "synthetic_brats")`).

    The model carries `seg_config` (patch, overlap) and `seg_split` (regions, modalities,
    voxel spacing it was trained at) for `predict_case`. A model object that already carries
    `seg_config` is returned as it is.
    """
    if hasattr(source, "seg_config"):
        return source
    cfg, split = model_meta(source, weights)
    if _is_run(source, weights):
        model = build(cfg, split["channels"], split["outputs"], "sigmoid")
        model.load_weights(Path(source) / RUN_WEIGHTS[weights])
    else:
        model = zoo.load(cfg.model, weights=weights)
    model.seg_config, model.seg_split = cfg, split
    return model


def model_meta(source, weights=None):
    """(SegConfig, split) of a model source without building it: what `predict` checks the
    cases against before any model is loaded."""
    if hasattr(source, "seg_config"):
        return source.seg_config, getattr(source, "seg_split", {})
    if weights is not None and not _is_run(source, weights):
        return _zoo_meta(str(source), weights)
    run_dir = Path(source)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"model {str(source)!r} is not a run folder; give a segmentation run folder, or a zoo "
            f"model name with weights (e.g. --model unet3d_lowrank --weights synthetic_brats)")
    for name in ("config.json", "split.json", RUN_WEIGHTS[weights]):
        if not (run_dir / name).exists():
            hint = (" (best weights are kept when the run validates during training: "
                    "--val-every)" if weights == "best" else "")
            raise FileNotFoundError(f"--model {run_dir} is not a finished segmentation run: "
                                    f"no {name}{hint}")
    cfg = SegConfig(**json.loads((run_dir / "config.json").read_text()))
    return cfg, json.loads((run_dir / "split.json").read_text())


def _zoo_meta(name, tag):
    spec = zoo.registry.get(name)
    seg_tags = sorted(t for t, e in spec.weights.items() if e.extra.get("regions") is not None)
    if tag not in seg_tags:
        raise ValueError(f"{spec.name!r} has no segmentation weights {tag!r} (--weights); "
                         f"available: {seg_tags or 'none'}")
    entry = spec.weights[tag]
    cfg = SegConfig(model=spec.name, patch=entry.input_shape[:3],
                    widths=entry.build_kwargs.get("widths"),
                    overlap=entry.extra.get("overlap", 0.5))
    return cfg, {**entry.extra, "channels": entry.input_shape[-1], "outputs": entry.classes}


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




# ---------------------------------------------------------------- test-time augmentation

def tta_flips(tta):
    """The sets of RAS axes to mirror for `tta`: False/None -> only the identity; True or
    "xyz" -> all 8 combinations; "x", "xz", (0, 2) ... -> the combinations of those axes.

    >>> tta_flips(False), tta_flips("x"), len(tta_flips(True))
    ([()], [(), (0,)], 8)
    """
    if tta is None or tta is False:
        return [()]
    if tta is True:
        axes = (0, 1, 2)
    elif isinstance(tta, str):
        if not tta or set(tta) - set("xyz") or len(set(tta)) != len(tta):
            raise ValueError(f"--tta takes RAS axes among x, y, z, each at most once (e.g. xyz "
                             f"or x), received {tta!r}")
        axes = tuple("xyz".index(a) for a in tta)
    else:
        axes = tuple(tta)
        if not axes or any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
            raise ValueError(f"--tta axes must be distinct among 0, 1, 2, received {tta!r}")
    axes = tuple(sorted(axes))
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def predict_volume(model, volume, window, overlap=0.5, batch_size=2, tta=False):
    """Sliding-window probabilities (X, Y, Z, K) of a (X, Y, Z, C) volume; with `tta`, the
    mean over mirrored copies, each flipped back before averaging.

    >>> import numpy as np
    >>> ramp = lambda b: np.broadcast_to(np.linspace(0, 1, 4)[None, :, None, None, None],
    ...                                  b.shape[:4] + (1,))
    >>> float(predict_volume(ramp, np.zeros((4, 4, 4, 1)), (4, 4, 4), tta="x").std())
    0.0
    """
    flips = tta_flips(tta)
    total = None
    for axes in flips:
        x = np.ascontiguousarray(np.flip(volume, axes)) if axes else volume
        probs = inference.sliding_window(x, model, window, overlap, batch_size)
        probs = np.flip(probs, axes) if axes else probs
        total = np.array(probs, np.float32) if total is None else total + probs
    return total / np.float32(len(flips))


# ---------------------------------------------------------------- post-processing

POSTPROCESS_OPTIONS = {
    "et_min": "--postprocess-et-min",
    "et_total_min": "--postprocess-et-total-min",
}


def check_postprocess(postprocess):
    """`postprocess` as a dict of thresholds in mm^3 (None when off); errors name the flag."""
    if not postprocess:
        return None
    if not isinstance(postprocess, dict):
        raise ValueError(f"postprocess must be a dict with keys {sorted(POSTPROCESS_OPTIONS)}, "
                         f"received {postprocess!r}")
    unknown = sorted(set(postprocess) - set(POSTPROCESS_OPTIONS))
    if unknown:
        raise ValueError(f"unknown post-processing option(s) {unknown}; known: "
                         f"{sorted(POSTPROCESS_OPTIONS)}")
    out = {}
    for key, value in postprocess.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and value >= 0):
            raise ValueError(f"{POSTPROCESS_OPTIONS[key]} must be a volume in mm^3 >= 0, "
                             f"received {value!r}")
        out[key] = float(value)
    return out or None


def core_label(regions):
    """The label an enhancing-tumour voxel becomes under post-processing: the tumour-core
    label that is not enhancing (NCR in BraTS 2021/2023, non-enhancing tumour in MSD)."""
    rest = [v for v in regions["TC"] if v not in regions["ET"]]
    if not rest:
        raise ValueError(f"regions {regions} have no tumour-core label outside ET")
    return rest[0]


def postprocess_labels(labels, regions, voxel_mm3, et_min=0.0, et_total_min=0.0):
    """BraTS post-processing of a label map (X, Y, Z); returns a new map.

    1. every 26-connected enhancing-tumour (ET) component whose volume is below `et_min`
       mm^3 is relabelled as the core label (`core_label`: NCR);
    2. then, if the ET left in the case measures below `et_total_min` mm^3 in all, all of it
       is relabelled likewise (the rule several BraTS winners use, since a case without ET
       scores Dice 1 only when nothing is predicted).
    Tumour core and whole tumour are unchanged; only ET shrinks.

    >>> import numpy as np
    >>> lab = np.zeros((5, 5, 5), np.uint8); lab[0, 0, 0] = 4; lab[3:5, 3:5, 3:5] = 4
    >>> out = postprocess_labels(lab, {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}, 8.0, et_min=50)
    >>> int(out[0, 0, 0]), int((out == 4).sum())
    (1, 8)
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    core = core_label(regions)
    et = np.isin(labels, regions["ET"])
    out = labels.copy()
    if et_min > 0 and et.any():
        components, _ = ndimage.label(et, structure=np.ones((3, 3, 3), bool))
        small = np.bincount(components.ravel()) * voxel_mm3 < et_min
        small[0] = False
        drop = small[components]
        out[drop] = core
        et &= ~drop
    if et_total_min > 0 and et.sum() * voxel_mm3 < et_total_min:
        out[et] = core
    return out


# ---------------------------------------------------------------- PNG overlays

OVERLAY_PANEL_PX = 256  # each slice panel is this many pixels square
OVERLAY_TITLE_PX = 24  # a band above the panels for the case name
OVERLAY_SLICES = 3
# background preference: FLAIR, then T1ce (BraTS 2021 and 2023 names)
OVERLAY_BACKGROUND = ("flair", "t2f", "t1ce", "t1c")
# colours by role: oedema/SNFH green, necrosis/NCR red, enhancing yellow
_ROLE_COLOURS = {"oedema": (0.1, 0.9, 0.1), "core": (0.95, 0.1, 0.1), "et": (1.0, 0.9, 0.0)}
_OTHER_COLOURS = [(0.1, 0.5, 1.0), (1.0, 0.3, 1.0), (0.0, 0.9, 0.9), (1.0, 0.55, 0.0)]


def label_colours(values, regions=None):
    """{label value: RGB} for the overlay: BraTS roles get fixed colours (oedema green,
    necrosis red, enhancing yellow), any other value one of a few saturated colours."""
    colours, others = {}, itertools.cycle(_OTHER_COLOURS)
    roles = {}
    if regions and {"WT", "TC", "ET"} <= set(regions):
        roles = {v: "oedema" for v in regions["WT"] if v not in regions["TC"]}
        roles |= {v: "core" for v in regions["TC"] if v not in regions["ET"]}
        roles |= {v: "et" for v in regions["ET"]}
    for v in sorted(int(v) for v in values if v != 0):
        colours[v] = _ROLE_COLOURS[roles[v]] if v in roles else next(others)
    return colours


def overlay_slices(labels, n=OVERLAY_SLICES):
    """Axial (RAS z) slice indices for an overlay: `n` spread through the labelled extent,
    or through the middle half of the volume when nothing is labelled."""
    z = np.nonzero(np.asarray(labels).any(axis=(0, 1)))[0]
    depth = labels.shape[2]
    lo, hi = (z[0], z[-1]) if len(z) else ((depth - 1) / 4, 3 * (depth - 1) / 4)
    return [int(round(v)) for v in np.linspace(lo, hi, n + 2)[1:-1]]


def overlay_background(case, images):
    """(name, (X, Y, Z) image) the overlay is drawn over: FLAIR, else T1ce, else the first."""
    names = [SAME_MODALITY.get(m, m) for m in case.modalities]
    for want in OVERLAY_BACKGROUND:
        want = SAME_MODALITY.get(want, want)
        if want in names:
            i = names.index(want)
            return case.modalities[i], images[..., i]
    return case.modalities[0], images[..., 0]


def write_overlay(path, background, labels, zooms=(1.0, 1.0, 1.0), regions=None, title="",
                  slices=None, alpha=0.6):
    """Write a quick-look PNG: axial slices of `background` (X, Y, Z, RAS+) in grey with
    `labels` coloured over it (neurological view: patient right on the right, anterior up),
    atomically. The image is `OVERLAY_SLICES * OVERLAY_PANEL_PX` wide and
    `OVERLAY_PANEL_PX + OVERLAY_TITLE_PX` high; each slice is fitted into its panel keeping
    the voxel aspect. Returns the path.

    >>> import numpy as np, tempfile, pathlib
    >>> lab = np.zeros((8, 8, 8), np.uint8); lab[2:4, 2:4, 3:5] = 1
    >>> png = write_overlay(pathlib.Path(tempfile.mkdtemp()) / "x_overlay.png",
    ...                     np.random.rand(8, 8, 8), lab)
    >>> png.name
    'x_overlay.png'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    background, labels = np.asarray(background, np.float32), np.asarray(labels)
    if background.shape != labels.shape or background.ndim != 3:
        raise ValueError(f"background {background.shape} and labels {labels.shape} must be "
                         "one (X, Y, Z) grid")
    slices = overlay_slices(labels) if slices is None else list(slices)
    colours = label_colours(np.unique(labels), regions)
    finite = background[np.isfinite(background)]
    body = finite[finite != 0] if (finite != 0).any() else finite
    vmin, vmax = (np.percentile(body, [1, 99]) if body.size else (0.0, 1.0))
    vmax = vmax if vmax > vmin else vmin + 1
    n, panel, band, dpi = len(slices), OVERLAY_PANEL_PX, OVERLAY_TITLE_PX, 100
    fig = Figure(figsize=(n * panel / dpi, (panel + band) / dpi), dpi=dpi, facecolor="black")
    FigureCanvasAgg(fig)
    aspect = zooms[1] / zooms[0]  # displayed rows are y (anterior), columns x (right)
    for i, z in enumerate(slices):
        ax = fig.add_axes((i / n, 0, 1 / n, panel / (panel + band)))
        ax.set_axis_off()
        ax.imshow(background[:, :, z].T, cmap="gray", vmin=vmin, vmax=vmax, origin="lower",
                  aspect=aspect, interpolation="nearest")
        rgba = np.zeros((*labels.shape[:2], 4), np.float32)
        for value, rgb in colours.items():
            rgba[labels[:, :, z] == value] = (*rgb, alpha)
        ax.imshow(rgba.transpose(1, 0, 2), origin="lower", aspect=aspect,
                  interpolation="nearest")
        fig.text(i / n + 0.01, 0.02, f"z={z}", color="white", ha="left", va="bottom",
                 fontsize=9)
    top = 1 - band / 2 / (panel + band)
    if title:
        fig.text(0.01, top, title, color="white", ha="left", va="center", fontsize=9)
    if regions and {"WT", "TC", "ET"} <= set(regions):
        fig.text(0.99, top, "green oedema, red necrosis, yellow enhancing", color="white",
                 ha="right", va="center", fontsize=9)
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, facecolor="black")
    return Path(path)


# ---------------------------------------------------------------- prediction

def predict_case(model, case, batch_size=2, tta=False):
    """(label map in RAS+, region probabilities, reference Volume, reference label or None)
    of one case; the case's files are read once.

    Channels are put in the model's modality order; a case whose voxel size differs from the
    model's training spacing by more than 5% is resampled to it and the probabilities are
    resampled back onto the case's own grid. `tta` mirrors as `predict_volume` does.
    """
    images, label, ref = load_case(case)
    labels, probs = _infer(model, case, images, ref, batch_size, tta)
    return labels, probs, ref, label


def _infer(model, case, images, ref, batch_size=2, tta=False):
    cfg, split = model.seg_config, getattr(model, "seg_split", {})
    x = zscore(images)
    if split.get("modalities"):
        x = x[..., channel_order(case, split["modalities"])]
    spacing = split.get("spacing")
    resample = spacing is not None and not np.allclose(ref.zooms, spacing, rtol=0.05)
    if resample:
        shape = [max(1, round(n * z / s)) for n, z, s in zip(x.shape[:3], ref.zooms, spacing)]
        x = _resample(x, shape, order=1)
    probs = predict_volume(model, x, cfg.patch, cfg.overlap, batch_size, tta)
    if resample:
        probs = _resample(probs, ref.ras_shape, order=1)
    if case.regions:
        labels = from_regions(probs > 0.5, case.regions, _region_layout(case))
    else:
        labels = (probs[..., 0] > 0.5).astype(np.uint8)
    return labels, probs


def _region_layout(case):
    """The label scheme a region map is written back in (the case's own where it names one)."""
    scheme = case.extra.get("labels")  # a scheme name for BraTS; MSD keeps its label names
    if isinstance(scheme, str) and scheme in REGIONS:
        return scheme
    return "msd_brats" if case.layout == "msd" else case.layout


@dataclass
class PredictPlan:
    """What `predict` will do, every check passed: (case, label map path, PNG path or None)
    per case, and the model's (SegConfig, split)."""

    jobs: list
    seg_config: SegConfig
    split: dict


def _files(case):
    paths = [s[0] if isinstance(s, tuple) else s for s in case.images.values()]
    return [Path(p) for p in paths + ([case.label] if case.label is not None else [])]


def _inside(path, folder):
    return path == folder or folder in path.parents


def check_predict(model, inputs, out_dir, layout="auto", overwrite=False, weights=None,
                  tta=False, postprocess=None, png=False, progress=None):
    """Every refusal of `predict`, before any model is built or inference runs; returns a
    `PredictPlan`. Messages name the command-line flags (--out, --force, ...).

    Refused, with or without --force: an --out folder equal to or inside a folder holding an
    input file, or inside the dataset folder given as --input (or holding the case folder
    given); an output path that resolves (symlinks followed) to any image or label of any
    case; --out naming an existing file; two cases with one case id. Refused without
    --force: existing outputs, all listed. Then each case is read once: unreadable files,
    images off the label's grid, modalities the model was not trained on, and images with
    no finite voxel or a constant value are refused, naming the file. So each case's images
    are read twice (here and at inference): the price of naming a broken case before any
    model is built or any output is written.
    """
    tta_flips(tta)
    postprocess = check_postprocess(postprocess)
    out_dir, inputs = Path(out_dir), Path(inputs)
    for folder in [out_dir, *out_dir.parents]:
        if folder.exists() and not folder.is_dir():
            raise FileExistsError(f"--out {out_dir}: {folder} is an existing file, not a folder; "
                                  "give a folder for the label maps (nothing was written)")
        if folder.exists():
            break
    if not inputs.exists():
        raise FileNotFoundError(f"--input {inputs} does not exist")
    case_folder = _is_case_folder(inputs)
    cases = discover(inputs.parent if case_folder else inputs, layout, require_label=False)
    if case_folder:
        cases = [c for c in cases if c.case_id == inputs.name]
        if not cases:
            raise ValueError(f"--input {inputs} is not a case of a {layout} dataset: no case "
                             f"{inputs.name!r} under {inputs.parent}")
    ids = [c.case_id for c in cases]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise ValueError(f"--input {inputs} has several cases named {twice}; their predictions "
                         "would overwrite each other")

    inputs_resolved = {p.resolve() for c in cases for p in _files(c)}
    guarded = {p.parent for p in inputs_resolved}
    if inputs.is_dir():
        guarded.add((inputs.parent if case_folder else inputs).resolve())
    out_resolved = out_dir.resolve()
    for folder in sorted(guarded, key=lambda f: (-len(f.parts), f)):  # innermost first
        if _inside(out_resolved, folder):
            where = "is" if out_resolved == folder else "is inside"
            raise ValueError(
                f"--out {out_dir} {where} the input folder {folder}: predictions are never "
                "written among the inputs, with or without --force; choose a folder outside "
                "the dataset (nothing was written)")

    jobs, existing = [], []
    for case in cases:
        seg_path = out_dir / f"{case.case_id}_seg.nii.gz"
        png_path = out_dir / f"{case.case_id}_overlay.png" if png else None
        for path in filter(None, (seg_path, png_path)):
            if path.resolve() in inputs_resolved:
                raise ValueError(f"--out {out_dir}: writing {path} would overwrite the input "
                                 f"file {path.resolve()}; refused with or without --force "
                                 "(nothing was written)")
            if path.is_dir():
                raise FileExistsError(f"--out {out_dir}: {path} is a folder; a prediction "
                                      "cannot replace it, with or without --force")
            if path.exists() or path.is_symlink():
                existing.append(path)
        jobs.append((case, seg_path, png_path))
    if existing and not overwrite:
        shown = ", ".join(p.name for p in existing[:10])
        more = f" and {len(existing) - 10} more" if len(existing) > 10 else ""
        what = (f"{existing[0]} exists" if len(existing) == 1 else
                f"{len(existing)} outputs already exist in {out_dir}: {shown}{more}")
        raise FileExistsError(f"{what}; pass --force to replace "
                              f"{'it' if len(existing) == 1 else 'them'} (nothing was written)")

    cfg, split = model_meta(model, weights)
    for case in cases:
        if split.get("modalities"):
            channel_order(case, split["modalities"])
        if postprocess and not (case.regions and {"TC", "ET"} <= set(case.regions)):
            raise ValueError(f"--postprocess-et-min / --postprocess-et-total-min need BraTS "
                             f"tumour regions; case {case.case_id} ({case.layout}) has none")
    for i, case in enumerate(cases):
        images, _, _ = load_case(case)
        for c, (modality, source) in enumerate(case.images.items()):
            path = source[0] if isinstance(source, tuple) else source
            require_signal(images[..., c], path, f"case {case.case_id}, modality {modality}")
        if progress:
            progress(f"checked {case.case_id} ({i + 1}/{len(cases)})")
    return PredictPlan(jobs, cfg, split)


def predict(model, inputs, out_dir, layout="auto", overwrite=False, progress=print,
            weights=None, tta=False, postprocess=None, png=False):
    """Write `<case>_seg.nii.gz` (and `<case>_overlay.png` with `png`) for every case of
    `inputs` (a case folder, a dataset folder or a manifest) into `out_dir`; returns the
    label map paths.

    `model` is a run folder, a zoo model name together with a `weights` tag, or a model
    object carrying `seg_config`. Every check (`check_predict`) runs before the model is
    built; existing outputs are replaced, atomically, only with `overwrite` (--force).
    `tta`: see `tta_flips`; `postprocess`: {"et_min": mm^3, "et_total_min": mm^3}, see
    `postprocess_labels`.

    >>> predict("runs/seg", "BraTS2021_00001", "preds", tta=True, png=True)  # doctest: +SKIP
    """
    plan = check_predict(model, inputs, out_dir, layout, overwrite, weights, tta, postprocess,
                         png, progress)
    postprocess = check_postprocess(postprocess)
    model = model_for_inference(model, weights)
    written = []
    for case, seg_path, png_path in plan.jobs:
        t0 = time.perf_counter()
        images, _, ref = load_case(replace(case, label=None))
        labels, _ = _infer(model, case, images, ref, tta=tta)
        if postprocess:
            labels = postprocess_labels(labels, case.regions, float(np.prod(ref.zooms)),
                                        **postprocess)
        try:
            path = write_like(ref, labels, seg_path, overwrite=overwrite)
        except FileExistsError:  # appeared after the checks
            raise FileExistsError(f"{seg_path} exists (written while predicting); pass --force "
                                  "to replace it") from None
        written.append(path)
        if png_path is not None:
            name, background = overlay_background(case, images)
            write_overlay(png_path, background, labels, ref.zooms, case.regions,
                          f"{case.case_id} over {name}")
        if progress:
            progress(f"{case.case_id}: {path} ({time.perf_counter() - t0:.1f} s)")
    return written


def _is_case_folder(path):
    """A folder holding one case's NIfTI files (rather than a dataset of case folders)."""
    return path.is_dir() and any(p.name.endswith((".nii", ".nii.gz")) for p in path.iterdir())
