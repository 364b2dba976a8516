"""Does a segmentation model generalise beyond the generator it was trained on? Held-out
evaluation sets that share nothing with training, a robustness table, and the scores of any
model on them.

    python scripts/seg_generalisation.py data              # write the sets (runs/seg_gen/data)
    python scripts/seg_generalisation.py train unet3d_lowrank unet3d   # RECIPE, resumable
    python scripts/seg_generalisation.py ship unet3d_lowrank   # its run -> the synthetic_brats tag
    python scripts/seg_generalisation.py score unet3d_lowrank:synthetic_brats [RUN_DIR ...]
    python scripts/seg_generalisation.py report            # -> docs/seg_generalisation.md / .json
    python scripts/seg_generalisation.py card unet3d_lowrank:synthetic_brats  # -> manifest + card

`train` runs RECIPE (generator v2 on the fly, MNI152 only; Colin27 held out for validation)
into runs/seg_gen/train/MODEL; interrupted, it resumes where it stopped. `ship` copies the
run's weights into the package under the `synthetic_brats` tag (replacing what was there),
writes the card, and scores, reports and records the new weights on the held-out sets.

Sets (all synthetic - no real tumour scan can be installed here - BraTS 2021 layout, 2 mm):

  v1         the first generator (fixed contrasts, 10-20 mm lesions), both brains
  id         generator v2 with its training ranges, on MNI152 (the training brain)
  ood        generator v2 with its held-out ranges (more irregular lesions, thinner rims,
             more oedema, more foci, contrasts further from the canonical ones), on Colin27:
             a brain, shapes and contrasts that v2 training on MNI152 never sees
  ood+<d>    the ood cases with their anatomy, lesions and contrasts unchanged, degraded by
             <d>: 4mm (isotropic), 7mm_axis (one thick axis), bias_0.7 (log-std 0.7 bias
             field), shuffled_contrast (every class mean drawn at random)

A model is a zoo name with a weights tag (`unet3d_lowrank:synthetic_brats`) or a finished
`seg train` run folder. Scores: mean Dice per region (WT, TC, ET) and the lowest WT.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "runs" / "seg_gen"
DOCS = ROOT / "docs"
CASES = 8
SETS = {  # name: write_cases arguments
    "v1": dict(version=1, seed=321, anatomies=("colin27", "mni152")),
    "id": dict(version=2, seed=1000, ranges="train", anatomies=("mni152",)),
    "ood": dict(version=2, seed=2000, ranges="ood", anatomies=("colin27",)),
}
DEGRADED = ("4mm", "7mm_axis", "bias_0.7", "shuffled_contrast")
for _d in DEGRADED:
    SETS[f"ood+{_d}"] = {**SETS["ood"], "degrade": _d}


TAG = "synthetic_brats"
RECIPE = {  # seg train options of the generator-v2 weights (docs/seg_study.md)
    "data": "synthetic", "synth_cases": 8, "synth_val_cases": 4, "synth_brains": ["mni152"],
    "synth_val_brains": ["colin27"], "widths": [16, 32, 64, 128], "patch": [48, 48, 48],
    "batch_size": 2, "learning_rate": 0.003, "epochs": 300, "steps_per_epoch": 48,
    "val_every": 25, "val_cases": 4, "seed": 0, "mixed_precision": True,
}


def run_folder(model):
    return WORK / "train" / model


def train(models, workers=2):
    """RECIPE for each model, resumable (a finished run is left as it is)."""
    from keras_priors import volumetric as seg

    for model in models:
        out = run_folder(model)
        if (out / "result.json").exists():
            print(f"{model}: finished ({out})")
            continue
        cfg = seg.SegConfig(model=model, **RECIPE)
        result = seg.fit_segmentation(cfg, out, resume=(out / "config.json").exists(),
                                      verbose=0, workers=workers)
        print(f"{model}: Dice " + ", ".join(f"{k} {v:.3f}" for k, v in result["dice"].items())
              + f" on the held-out brain, {result['train_seconds']:.0f} s", flush=True)


def ship(models):
    """Copy each finished run's final weights into the package as the `synthetic_brats`
    tag (the entry it replaces is dropped), write its card, then score the new weights on
    every set, regenerate the report and record the scores in manifest and card."""
    from seg_study import ship_weights  # its neighbour in scripts/

    manifest_path = ROOT / "keras_priors" / "zoo" / "weights" / TAG / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    for model in models:
        run = run_folder(model)
        if not (run / "result.json").exists():
            raise SystemExit(f"{model}: no finished run in {run}; run `train {model}` first")
        entry, cfg, _, _ = ship_weights(
            run, model, TAG, ("widths", "width", "patch", "epochs", "steps_per_epoch",
                              "batch_size", "learning_rate", "foreground", "seed",
                              "mixed_precision"),
            lambda split, result: {"data": split["prepared"], "held_out": split["held_out"],
                                   "train_seconds": result["train_seconds"]})
        manifest[model] = entry
        manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
        (ROOT / entry["card"]).write_text(card_text(model, entry, cfg))
    specs = [f"{m}:{TAG}" for m in models]
    for step in (["score", *specs], ["report"], ["card", *specs]):  # fresh processes: the
        subprocess.run([sys.executable, __file__, *step], check=True)  # zoo reads manifests once


def card_text(model, entry, cfg):
    """The card of generator-v2 weights (the scores on the held-out sets are added by
    `card` after scoring)."""
    from keras_priors.volumetric.synthetic import v2

    dice = ", ".join(f"{k} {v:.3f}" for k, v in entry["dice"].items())
    steps = cfg["epochs"] * cfg["steps_per_epoch"]
    hours = entry["recipe"]["train_seconds"] / 3600
    kind = ("LowRankConv3D `lr_join`: kx1x1 || 1xkx1 || 1x1xk + 1x1x1; first conv full"
            if model == "unet3d_lowrank" else "full 3x3x3 convs")
    return f"""# {model}, weight tag "{TAG}" (generator version {v2.VERSION})

**Not a clinical model.** It has never seen a real tumour: it was trained on synthetic,
domain-randomised lesions painted onto a real, healthy brain. Do not use it on patients.

This version replaces the first `{TAG}` weights, which learned generator version 1 only
(fixed contrasts, 10-20 mm lesions) and failed on anything else (docs/seg_study.md).

- **Data**: generator version {v2.VERSION} (`keras_priors.volumetric.synthetic.v2`, training
  ranges), {cfg["synth_cases"]} fresh cases every epoch, generated on the fly from
  (seed, epoch) on the MNI152 2009 template (PyPI `nilearn`) at 2 mm:
  {cfg["epochs"] * cfg["synth_cases"]:,} cases in all. Lesions of about 1-400 cm^3, single or
  multifocal, with or without necrosis, enhancement and oedema, with mass effect; contrast
  per tissue and compartment drawn at random; bias field, noise, gamma, low resolution,
  random affine and elastic deformation. Validation: {cfg["synth_val_cases"]} fixed cases
  on the Colin27 brain (Debian `mricron-data`), which training never sees.
- **Architecture**: `{model}` ({kind}), widths {tuple(cfg["widths"])}, instance norm,
  {cfg["patch"][0]}^3 patches of 4 channels, 3 sigmoid outputs (WT, TC, ET):
  {entry["params"]:,} parameters, {entry["macs"] / 1e9:.2f} GMACs per patch.
- **Training budget**: AdamW, learning rate {cfg["learning_rate"]} with cosine decay,
  weight decay {cfg["weight_decay"]}, batch {cfg["batch_size"]}, {cfg["epochs"]} epochs x
  {cfg["steps_per_epoch"]} steps = {steps:,} steps, {int(100 * cfg["foreground"])}% of
  patches centred on tumour, soft Dice + BCE, {"bf16 mixed precision, " if cfg["mixed_precision"] else ""}seed
  {cfg["seed"]}: {hours:.1f} h on 2 CPU cores.
- **Preprocessing**: per-channel z-score over non-zero voxels; channels in the order
  {entry["segmentation"]["modalities"]} (BraTS 2023 names t2f / t1n / t1c / t2w are
  mapped); inputs at a voxel size other than {entry["segmentation"]["spacing"]} mm (BraTS'
  1 mm) are resampled to it and the label map is written on the input's own grid.
- **Held-out brain** (the validation cases, sliding window, 50% overlap, gaussian
  blending): Dice {dice}.
- **Use**: `keras-priors seg predict --model {model} --weights {TAG} --input CASE_OR_DIR
  --out DIR`.
- **Reproduce**: `python scripts/seg_generalisation.py data && python
  scripts/seg_generalisation.py train {model} && python scripts/seg_generalisation.py ship
  {model}`.
- **sha256**: `{entry["sha256"]}`
"""


def write_data(cases=CASES, downsample=2):
    from keras_priors.volumetric import synthetic

    for name, kwargs in SETS.items():
        out = WORK / "data" / name
        if out.exists():
            continue
        t0 = time.time()
        synthetic.write_cases(out, n=cases, downsample=downsample, **kwargs)
        print(f"{name}: {cases} cases in {time.time() - t0:.0f} s", flush=True)


def _load(spec):
    from keras_priors import volumetric as seg

    if Path(spec).is_dir():
        return Path(spec).name, seg.model_for_inference(spec)
    name, _, tag = spec.partition(":")
    if not tag:
        raise ValueError(f"model {spec!r}: give NAME:WEIGHTS_TAG or a run folder")
    return f"{name}:{tag}", seg.model_for_inference(name, tag)


def score(specs):
    from keras_priors import volumetric as seg
    from keras_priors.volumetric.evaluation import evaluate_cases

    out = WORK / "scores"
    out.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        label, model = _load(spec)
        result = {}
        for name in SETS:
            cases = seg.discover(WORK / "data" / name)
            t0 = time.time()
            r = evaluate_cases(model, cases)
            wt = [c["WT"]["dice"] for c in r["per_case"].values()]
            result[name] = {"dice": r["dice"], "hd95": r["hd95"], "min_wt": min(wt),
                            "cases": len(cases), "per_case": r["per_case"]}
            print(f"{label} {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in r["dice"].items())
                  + f", min WT {min(wt):.3f} ({time.time() - t0:.0f} s)", flush=True)
        path = out / f"{label.replace(':', '@').replace('/', '_')}.json"
        path.write_text(json.dumps({"model": label, "sets": result}, indent=1, default=float))


def report():
    rows = [json.loads(p.read_text()) for p in sorted((WORK / "scores").glob("*.json"))]
    lines = ["| model | set | Dice WT | TC | ET | lowest WT | cases |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        for name, s in r["sets"].items():
            d = s["dice"]
            lines.append(f"| {r['model']} | {name} | {d['WT']:.3f} | {d['TC']:.3f} | "
                         f"{d['ET']:.3f} | {s['min_wt']:.3f} | {s['cases']} |")
    robust = ["| model | degradation | drop in mean Dice vs ood (WT / TC / ET) |",
              "|---|---|---|"]
    for r in rows:
        base = r["sets"]["ood"]["dice"]
        for d in DEGRADED:
            got = r["sets"][f"ood+{d}"]["dice"]
            robust.append(f"| {r['model']} | {d} | " + " / ".join(
                f"{base[k] - got[k]:+.3f}" for k in ("WT", "TC", "ET")) + " |")
    text = "\n".join(lines) + "\n\n" + "\n".join(robust) + "\n"
    (DOCS / "seg_generalisation.json").write_text(json.dumps(
        [{k: v for k, v in r.items()} for r in rows], indent=1, default=float))
    (DOCS / "seg_generalisation.md").write_text(text)
    print(text)


CARD_HEADING = "## Out of distribution (generator v2, scored by scripts/seg_generalisation.py)"


def card(specs):
    """Write a shipped model's scores on the held-out sets into its manifest entry (the
    `generalisation` block tests/volumetric/test_shipped_seg.py holds fresh cases to) and
    into its card. Run after `score` and `report`; shipping new weights drops both, so the
    new weights must be scored again."""
    import numpy as np

    scores = {r["model"]: r for r in json.loads((DOCS / "seg_generalisation.json").read_text())}
    for spec in specs:
        name, _, tag = spec.partition(":")
        if spec not in scores:
            raise SystemExit(f"{spec}: not in docs/seg_generalisation.json; run score and report")
        manifest_path = ROOT / "keras_priors" / "zoo" / "weights" / tag / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        if name not in manifest:
            raise SystemExit(f"{spec}: no shipped weights in {manifest_path}")
        block = {"sets": {}, "settings": SETS}
        for set_name, s in scores[spec]["sets"].items():
            per_case = s["per_case"].values()
            block["sets"][set_name] = {
                "dice": s["dice"], "min_wt": s["min_wt"], "cases": s["cases"],
                "dice_std": {k: float(np.std([c[k]["dice"] for c in per_case]))
                             for k in s["dice"]}}
        entry = manifest[name]
        entry["generalisation"] = block
        manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
        card_path = ROOT / entry["card"]
        text = card_path.read_text().split(CARD_HEADING)[0].rstrip() + "\n\n"
        lines = [CARD_HEADING, "",
                 "Cases written after training (docs/seg_generalisation.md says how each set "
                 "is made): v1 is the first generator with fresh seeds; id is generator v2 "
                 "with its training ranges; ood and its degraded copies share nothing with "
                 "v2's training (another brain, held-out shape and contrast ranges). Mean "
                 "Dice over the cases, per-case spread in brackets:", "",
                 "| set | cases | Dice WT | TC | ET | lowest WT |", "|---|---|---|---|---|---|"]
        for set_name, s in block["sets"].items():
            cells = " | ".join(f"{s['dice'][k]:.3f} (±{s['dice_std'][k]:.2f})"
                               for k in ("WT", "TC", "ET"))
            lines.append(f"| {set_name} | {s['cases']} | {cells} | {s['min_wt']:.3f} |")
        card_path.write_text(text + "\n".join(lines) + "\n")
        print(f"{spec}: generalisation written to {manifest_path} and {card_path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["data", "train", "ship", "score", "report", "card"])
    parser.add_argument("models", nargs="*", default=["unet3d_lowrank:synthetic_brats"])
    parser.add_argument("--cases", type=int, default=CASES)
    args = parser.parse_args(argv)
    if args.step == "data":
        write_data(args.cases)
    elif args.step in ("train", "ship"):  # zoo names: a default "NAME:TAG" means NAME
        (train if args.step == "train" else ship)([m.partition(":")[0] for m in args.models])
    elif args.step == "score":
        score(args.models)
    elif args.step == "card":
        card(args.models)
    else:
        report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
