"""Segmentation training, prediction and evaluation on NIfTI datasets.

    keras-priors seg train --data DIR --layout brats --model unet3d_lowrank --out runs/seg
    keras-priors seg predict --model runs/seg --input CASE_OR_DIR --out preds/
    keras-priors seg evaluate --pred preds/ --data DIR

A run folder is laid out like a classification run (keras_priors.training): config.json,
per-epoch checkpoints committed by state.json (with the RNG states), log.csv, and at the
end weights.weights.h5 and result.json with per-region Dice / HD95 on held-out cases.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

from .. import complexity, training, zoo
from . import inference, metrics
from .layouts import discover, from_regions, load_case
from .losses import DiceCELoss
from .nifti import read_volume, write_like
from .pipeline import patch_dataset, prepare, targets, zscore


@dataclass
class SegConfig:
    model: str = "unet3d_lowrank"
    data: str = ""
    layout: str = "auto"
    patch: tuple = (64, 64, 64)
    batch_size: int = 2
    epochs: int = 10
    steps_per_epoch: int | None = None  # default: 2 patches per training case
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    val_fraction: float = 0.2
    widths: tuple | None = None
    width: float = 1.0
    foreground: float = 0.5
    rotate: float = 0.0
    overlap: float = 0.5

    def __post_init__(self):
        self.patch = tuple(int(p) for p in self.patch)
        if len(self.patch) != 3 or min(self.patch) <= 0:
            raise ValueError(f"patch must be three positive sizes, received patch={self.patch!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), received {self.val_fraction!r}")
        if self.widths is not None:
            self.widths = tuple(int(w) for w in self.widths)


def split_cases(cases, val_fraction, seed):
    """A seeded train / held-out split by case."""
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val = int(round(len(cases) * val_fraction)) if len(cases) > 1 else 0
    if val_fraction > 0 and len(cases) > 1:
        n_val = max(1, n_val)
    val = sorted(order[:n_val].tolist())
    return [cases[i] for i in range(len(cases)) if i not in val], [cases[i] for i in val]


def build(cfg: SegConfig, channels, outputs, activation):
    options = {"width": cfg.width} | ({"widths": cfg.widths} if cfg.widths else {})
    return zoo.load(cfg.model, input_shape=(*cfg.patch, channels), classes=outputs,
                    classifier_activation=activation, **options)


def _compile(model, cfg, steps, mode):
    total = max(cfg.epochs * steps, 1)
    lr = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, total, alpha=0.01)
    opt = keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay)
    opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    model.compile(optimizer=opt, loss=DiceCELoss(mode=mode))


def fit_segmentation(cfg: SegConfig, out, resume=False, verbose="auto", cache_dir=None,
                     strategy=None):
    """Train on `cfg.data`, evaluate on held-out cases; returns the result dict.

    `strategy`: None / "default", "mirrored", "multiworker" or a tf.distribute strategy, as
    in `training.fit` (global batch `cfg.batch_size`; only the chief writes into `out`).
    """
    from .. import distribute

    out = Path(out)
    strategy, state, writes = training.open_run(out, cfg, resume, strategy)
    distributed, chief = not distribute.is_default(strategy), writes.chief
    keras.utils.set_random_seed(cfg.seed)
    cases = discover(cfg.data, cfg.layout)
    train_cases, val_cases = split_cases(cases, cfg.val_fraction, cfg.seed)
    cache_dir = cache_dir or writes.path / "cache"
    prepared = [prepare(c, cache_dir) for c in train_cases]
    channels, outputs = prepared[0][0].shape[-1], prepared[0][1].shape[-1]
    regions = train_cases[0].regions
    mode, activation = ("sigmoid", "sigmoid") if regions or outputs == 1 else ("softmax", "softmax")
    if mode == "softmax":
        raise ValueError("multi-class label maps without regions are not supported yet; "
                         "give region definitions (BraTS layouts) or binary labels")
    steps = cfg.steps_per_epoch or max(1, 2 * len(prepared) // cfg.batch_size)
    with distribute.scope(strategy):
        model = build(cfg, channels, outputs, activation)
        _compile(model, cfg, steps, mode)
    if state is None:
        state = {"epoch": 0, "train_seconds": 0.0, "history": [], "status": "running"}
        training.write_json_atomic(writes.path / "config.json", asdict(cfg))
        training.write_json_atomic(writes.path / "state.json", state)
        training.write_json_atomic(writes.path / "split.json", {
            "train": [c.case_id for c in train_cases], "val": [c.case_id for c in val_cases],
            "regions": list(regions) if regions else None, "layout": cases[0].layout,
            "channels": int(channels), "outputs": int(outputs),
            "modalities": list(train_cases[0].modalities),
            "spacing": list(load_case(train_cases[0])[2].zooms)})
    else:
        with distribute.scope(strategy):
            training.restore_checkpoint(model, training.checkpoint_path(out, state),
                                        state.get("rng"))
        if not chief:  # model_for_inference below reads this worker's own folder
            for name in ("config.json", "split.json"):
                (writes.path / name).write_bytes((out / name).read_bytes())
    keeper = training.RunKeeper(writes.path, state)
    if state["epoch"] < cfg.epochs:
        data = patch_dataset(prepared, cfg.patch, cfg.batch_size, cfg.seed, state["epoch"],
                             cfg.epochs, per_case=max(1, steps * cfg.batch_size // len(prepared)),
                             foreground=cfg.foreground, rotate=cfg.rotate)
        callbacks = [keeper, keras.callbacks.CSVLogger(writes.path / "log.csv", append=True)]
        if distributed:
            distribute.train_loop(model, data, strategy=strategy, epochs=cfg.epochs,
                                  initial_epoch=state["epoch"], steps_per_epoch=steps,
                                  global_batch_size=cfg.batch_size, verbose=verbose,
                                  callbacks=callbacks)
        else:
            model.fit(data, epochs=cfg.epochs, initial_epoch=state["epoch"],
                      steps_per_epoch=steps, shuffle=False, verbose=verbose, callbacks=callbacks)
    if keeper.bad_loss is not None:
        state["status"] = "stopped: non-finite loss"
        training.write_json_atomic(writes.path / "state.json", state)
        raise FloatingPointError(f"loss became non-finite at epoch {keeper.bad_loss['epoch']}; "
                                 f"the last good checkpoint is kept")
    training.save_weights_atomic(model, writes.path / "weights.weights.h5")
    scores = evaluate_cases(model_for_inference(writes.path), val_cases)
    prof = complexity.profile(model, verbose=False)
    result = {"model": cfg.model, "epochs": state["epoch"],
              "train_seconds": round(state["train_seconds"], 2), "macs_per_patch": prof.total_macs,
              "params": prof.total_params, "val_cases": [c.case_id for c in val_cases], **scores}
    if distributed:
        result["replicas"] = strategy.num_replicas_in_sync
    state["status"] = "completed"
    training.write_json_atomic(writes.path / "state.json", state)
    training.write_json_atomic(writes.path / "result.json", result)
    writes.close()
    return result


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
