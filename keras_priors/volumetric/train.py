"""Segmentation training on NIfTI datasets.

    keras-priors seg train --data DIR --layout brats --model unet3d_lowrank --out runs/seg

A run folder is laid out like a classification run (keras_priors.runs): config.json,
per-epoch checkpoints committed by state.json (with the RNG states), log.csv, and at the
end weights.weights.h5 and result.json with per-region Dice / HD95 on held-out cases.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import keras
import numpy as np

from .. import complexity, io, training
from .config import SegConfig, build
from .evaluation import evaluate_cases
from .layouts import discover, load_case
from .losses import DiceCELoss
from .pipeline import patch_dataset, prepare
from .prediction import model_for_inference

__all__ = ["SegConfig", "fit_segmentation", "split_cases"]


def split_cases(cases, val_fraction, seed):
    """A seeded train / held-out split by case."""
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val = int(round(len(cases) * val_fraction)) if len(cases) > 1 else 0
    if val_fraction > 0 and len(cases) > 1:
        n_val = max(1, n_val)
    val = sorted(order[:n_val].tolist())
    return [cases[i] for i in range(len(cases)) if i not in val], [cases[i] for i in val]


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
        io.write_json(writes.path / "config.json", asdict(cfg))
        io.write_json(writes.path / "state.json", state)
        io.write_json(writes.path / "split.json", {
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
        io.write_json(writes.path / "state.json", state)
        raise FloatingPointError(f"loss became non-finite at epoch {keeper.bad_loss['epoch']}; "
                                 f"the last good checkpoint is kept")
    io.save_weights(model, writes.path / "weights.weights.h5")
    scores = evaluate_cases(model_for_inference(writes.path), val_cases)
    prof = complexity.profile(model, verbose=False)
    result = {"model": cfg.model, "epochs": state["epoch"],
              "train_seconds": round(state["train_seconds"], 2), "macs_per_patch": prof.total_macs,
              "params": prof.total_params, "val_cases": [c.case_id for c in val_cases], **scores}
    if distributed:
        result["replicas"] = strategy.num_replicas_in_sync
    state["status"] = "completed"
    io.write_json(writes.path / "state.json", state)
    io.write_json(writes.path / "result.json", result)
    writes.close()
    return result
