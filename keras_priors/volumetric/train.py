"""Segmentation training on NIfTI datasets, out of core.

    keras-priors seg prepare DATA --out PREPARED          # once (or let train do it)
    keras-priors seg train --data PREPARED_OR_DATA --model unet3d_lowrank --out runs/seg

`--data` is a prepared folder (`seg prepare`) or a raw dataset, which is then prepared once
into a cache shared by every run on the same files (keyed by their content). Patches are
read from the prepared, memory-mapped arrays, so memory does not grow with the number of
cases. Every `val_every` epochs the model is scored by sliding-window Dice on up to
`val_cases` held-out cases; the best-scoring weights are kept as `best.weights.h5` beside
the last. The run folder follows `keras_priors.runs` (exact resume, non-finite guard) and
ends with `result.json`: Dice / HD95 per region on every held-out case.

>>> cfg = SegConfig(data="data/synthetic_brats", model="unet3d_lowrank", epochs=2)
>>> fit_segmentation(cfg, "runs/seg")["dice"]                       # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import keras
import numpy as np

from .. import complexity, io, runs
from . import inference, metrics
from .config import SegConfig, build
from .losses import DiceCELoss
from .pipeline import patch_dataset

__all__ = ["SegConfig", "fit_segmentation", "open_dataset", "score_prepared", "split_cases"]


def split_cases(cases, val_fraction, seed):
    """A seeded train / held-out split by case."""
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val = int(round(len(cases) * val_fraction)) if len(cases) > 1 else 0
    if val_fraction > 0 and len(cases) > 1:
        n_val = max(1, n_val)
    val = sorted(order[:n_val].tolist())
    return [cases[i] for i in range(len(cases)) if i not in val], [cases[i] for i in val]


def open_dataset(data, layout="auto", workers=None, progress=True):
    """The PreparedDataset of `data`: a prepared folder as it is, a raw dataset prepared
    (once) into the shared cache."""
    from .prepare import PreparedDataset, prepare_dataset

    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"--data {data}: no such folder")
    if (path / "manifest.json").is_file():
        return PreparedDataset.open(path)
    return prepare_dataset(path, None, layout=layout, workers=workers, progress=progress)


SYNTHETIC = "synthetic"  # --data value: cases generated on the fly


def synthetic_sources(cfg: SegConfig):
    """(training source, held-out source) of a run on generated cases: fresh v2 cases every
    epoch, and `synth_val_cases` fixed ones (on `synth_val_brains`, e.g. a held-out brain)."""
    from .synthetic import SyntheticSource

    train = SyntheticSource(cfg.synth_cases, cfg.seed, cfg.synth_downsample, cfg.synth_brains)
    val = SyntheticSource(cfg.synth_val_cases, cfg.seed, cfg.synth_downsample,
                          cfg.synth_val_brains or cfg.synth_brains, epoch=None)
    return train, val


def _compile(model, cfg, steps):
    total = max(cfg.epochs * steps, 1)
    lr = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, total, alpha=0.01)
    opt = keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay)
    opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    model.compile(optimizer=opt, loss=DiceCELoss(mode="sigmoid"))


def _check_targets(dataset):
    """Training needs region definitions or binary labels: a multi-class label map without
    regions would be fitted as if every label were foreground."""
    if dataset.regions:
        return
    for case_id in dataset.case_ids:
        values = dataset.case(case_id).get("label_values") or []
        if any(v > 1 for v in values):
            raise ValueError(
                f"case {case_id} has label values {values} but the dataset defines no regions: "
                "multi-class label maps need region definitions (BraTS layouts, or 'regions' "
                "in a manifest); otherwise give binary labels")


def score_prepared(model, dataset, case_ids, overlap=0.5, hd95=False, batch_size=2):
    """{case: {region: {"dice": d[, "hd95": h]}}} of `model` on prepared cases (sliding
    window over the cropped, normalised arrays; one case in memory at a time)."""
    names = list(dataset.regions) if dataset.regions else ["foreground"]
    patch = tuple(model.input_shape[1:4])
    out = {}
    for case_id in case_ids:
        x = np.asarray(dataset.images(case_id), np.float32)
        truth = np.asarray(dataset.targets(case_id)) > 0
        pred = inference.sliding_window(x, lambda b: np.asarray(model(b, training=False)),
                                        patch, overlap, batch_size) > 0.5
        if hd95:
            out[case_id] = metrics.region_scores(pred, truth, names, dataset.spacing(case_id))
        else:
            out[case_id] = {n: {"dice": metrics.dice(pred[..., i], truth[..., i])}
                            for i, n in enumerate(names)}
    return out


class Validation(keras.callbacks.Callback):
    """Every `every` epochs: mean sliding-window Dice per region on held-out cases, added to
    the epoch's logs (`val_dice_<region>`, `val_dice`), and the best weights saved."""

    def __init__(self, dataset, case_ids, every, overlap, folder, state, names, verbose=True):
        super().__init__()
        self.verbose = verbose
        self.dataset, self.case_ids, self.every, self.overlap = dataset, case_ids, every, overlap
        self.folder, self.state, self.names = Path(folder), state, names

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        keys = [f"val_dice_{n}" for n in self.names] + ["val_dice"]
        if not self.case_ids or not self.every or (epoch + 1) % self.every:
            logs.update(dict.fromkeys(keys, math.nan))  # CSV columns stay fixed
            return
        t0 = time.perf_counter()
        scores = score_prepared(self.model, self.dataset, self.case_ids, self.overlap)
        means = {n: float(np.mean([s[n]["dice"] for s in scores.values()])) for n in self.names}
        logs.update({f"val_dice_{n}": v for n, v in means.items()})
        logs["val_dice"] = float(np.mean(list(means.values())))
        best = self.state.get("best")
        if best is None or logs["val_dice"] > best["val_dice"]:
            io.save_weights(self.model, self.folder / "best.weights.h5")
            self.state["best"] = {"epoch": epoch + 1, "val_dice": logs["val_dice"], **{
                f"val_dice_{n}": v for n, v in means.items()}}
        if self.verbose:
            print(f"validation after epoch {epoch + 1}: Dice "
                  + ", ".join(f"{n} {v:.3f}" for n, v in means.items())
                  + f" ({len(scores)} cases, {time.perf_counter() - t0:.0f} s)", flush=True)


def fit_segmentation(cfg: SegConfig, out, resume=False, verbose="auto", strategy=None,
                     workers=None):
    """Train on `cfg.data`, score the held-out cases; returns the result dict.

    `strategy`: None / "default", "mirrored", "multiworker" or a tf.distribute strategy, as
    in `training.fit` (global batch `cfg.batch_size`; only the chief writes into `out`).
    `workers`: processes preparing a raw dataset, and parallel patch loaders.
    """
    with runs.Run(out, cfg, resume, strategy) as run:
        keras.mixed_precision.set_global_policy(runs.precision_policy(cfg.mixed_precision))
        try:
            return _fit(cfg, run, verbose, workers)
        finally:
            keras.mixed_precision.set_global_policy("float32")


def _fit(cfg, run, verbose, workers):
    """fit_segmentation inside its run folder and dtype policy."""
    if cfg.data == SYNTHETIC:
        dataset, held_out = synthetic_sources(cfg)
        train_ids, val_ids = dataset.case_ids, held_out.case_ids
    else:
        dataset = held_out = open_dataset(cfg.data, cfg.layout, workers,
                                          progress=verbose != 0)
        _check_targets(dataset)
        train_ids, val_ids = split_cases(list(dataset.case_ids), cfg.val_fraction, cfg.seed)
    if not train_ids:
        raise ValueError(f"--data {cfg.data}: no case left for training "
                         f"({len(dataset.case_ids)} cases, val_fraction={cfg.val_fraction})")
    names = list(dataset.regions) if dataset.regions else ["foreground"]
    steps = cfg.steps_per_epoch or max(1, 2 * len(train_ids) // cfg.batch_size)
    with run.scope():
        model = build(cfg, dataset.channels, dataset.outputs, "sigmoid")
        _compile(model, cfg, steps)
    split = {"train": train_ids, "val": val_ids,
             "regions": dict(dataset.regions) if dataset.regions else None,
             "layout": dataset.layout, "channels": int(dataset.channels),
             "outputs": int(dataset.outputs), "modalities": list(dataset.modalities),
             "spacing": list(dataset.spacing(train_ids[0])),
             "prepared": (dataset.describe() if cfg.data == SYNTHETIC
                          else str(dataset.root))}
    if cfg.data == SYNTHETIC:
        split["held_out"] = held_out.describe()
    state = run.start(model, files={"split.json": split})
    validation = Validation(held_out, val_ids[:cfg.val_cases], cfg.val_every, cfg.overlap,
                            run.path, state, names, verbose=verbose != 0)
    if state["epoch"] < cfg.epochs:
        batches = patch_dataset(dataset, train_ids, cfg.patch, cfg.batch_size, cfg.seed,
                                state["epoch"], cfg.epochs, steps_per_epoch=steps,
                                foreground=cfg.foreground, rotate=cfg.rotate,
                                workers=workers)
        run.train(model, batches, steps=steps, epochs=cfg.epochs, verbose=verbose,
                  callbacks=[validation])
    per_case = score_prepared(model, held_out, val_ids, cfg.overlap, hd95=True)
    prof = complexity.profile(model, verbose=False)
    result = {"model": cfg.model, "epochs": state["epoch"],
              "train_seconds": round(state["train_seconds"], 2),
              "macs_per_patch": prof.total_macs, "params": prof.total_params,
              "val_cases": val_ids, "best": state.get("best"),
              **(metrics.mean_scores(per_case) if per_case else {"dice": {}, "hd95": {}}),
              "per_case": per_case}
    if run.distributed:
        result["replicas"] = run.strategy.num_replicas_in_sync
    return run.finish(model, result)
