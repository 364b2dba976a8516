"""Does a segmentation model generalise beyond the generator it was trained on? Held-out
evaluation sets that share nothing with training, a robustness table, and the scores of any
model on them.

    python scripts/seg_generalisation.py data              # write the sets (runs/seg_gen/data)
    python scripts/seg_generalisation.py score unet3d_lowrank:synthetic_brats [RUN_DIR ...]
    python scripts/seg_generalisation.py report            # -> docs/seg_generalisation.md / .json
    python scripts/seg_generalisation.py card unet3d_lowrank:synthetic_brats  # -> manifest + card

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
    parser.add_argument("step", choices=["data", "score", "report", "card"])
    parser.add_argument("models", nargs="*", default=["unet3d_lowrank:synthetic_brats"])
    parser.add_argument("--cases", type=int, default=CASES)
    args = parser.parse_args(argv)
    if args.step == "data":
        write_data(args.cases)
    elif args.step == "score":
        score(args.models)
    elif args.step == "card":
        card(args.models)
    else:
        report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
