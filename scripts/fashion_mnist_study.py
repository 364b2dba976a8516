"""The papers' accuracy-vs-cost study on Fashion-MNIST (the only real labelled image set
installable offline), the width x schedule study that settles why narrow root models lag,
and the weights they ship.

    python scripts/fashion_mnist_study.py all     # the three steps below, in order
    python scripts/fashion_mnist_study.py train   # every model x seed into runs/study (resumable)
    python scripts/fashion_mnist_study.py report  # table, plots, covariance -> docs/study/
    python scripts/fashion_mnist_study.py ship    # seed-0 weights + cards -> the package
    python scripts/fashion_mnist_study.py ship --models nin nin_root8 --widths 2/3 \
        --tag fashion_mnist_wide                  # the width-2/3 cells, their own weight tag

    # the width x schedule grid (runs/grid; every cell resumable, several cells at once)
    python scripts/fashion_mnist_study.py grid --models nin nin_root8 --widths 1/3 \
        --schedules short converged --seeds 0 1 --jobs 2
    python scripts/fashion_mnist_study.py grid-report   # -> docs/study/grid.md, grid.json

`train` and `grid` skip finished runs and resume interrupted ones, so the studies can be run
in parts. The recipes are RECIPE and GRID_RECIPE, recorded in every run's config. `ship`
takes a model's converged grid run (seed 0, its shipped width) when there is one, else the
first study's seed-0 run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "study"
DOCS = ROOT / "docs" / "study"
SHIPPED = ROOT / "keras_priors" / "zoo" / "weights" / "fashion_mnist"

FAMILIES = {
    "nin": ("nin", "nin_root2", "nin_root4", "nin_root8", "nin_root16", "nin_c3_lr"),
    "resnet20": ("resnet20", "resnet20_root2", "resnet20_root4", "resnet20_root8"),
}
MODELS = tuple(m for family in FAMILIES.values() for m in family)
SEEDS = (0, 1, 2)
# Chosen to fit the study in about an hour of 2-core CPU time: a third of NiN's width
# (19 MMACs at 28x28 instead of 160) and half of ResNet-20's, the first 30,000 training
# images, 3 epochs. Evaluation always uses the full 10,000-image test set.
RECIPE = dict(data="fashion_mnist", epochs=3, batch_size=128, optimizer="sgd",
              learning_rate=0.05, weight_decay=5e-4, schedule="cosine", warmup_epochs=0.5,
              width=1 / 3, limit_train=30000)
WIDTHS = {"nin": 1 / 3, "resnet20": 0.5}


def family(model):
    return next(f for f, members in FAMILIES.items() if model in members)


def recipe(model):
    return {**RECIPE, "width": WIDTHS[family(model)]}
# (layer feeding a root layer, the root layer) per model; baselines use the same pair
COVARIANCE = {
    **{m: ("conv2c_relu", "conv3a") for m in FAMILIES["nin"][:5]},
    **{m: ("stage2_block1_out", "stage2_block2_conv1") for m in FAMILIES["resnet20"]},
}


def run_dir(model, seed):
    return RUNS / f"{model}_seed{seed}"


# ------------------------------------------------------------ width x schedule grid
GRID_RUNS = ROOT / "runs" / "grid"
# All 60,000 training images minus 5,000 held out for validation; the test set is scored
# once, at the end of each run. Precision per family: what trains fastest on an AVX-512 CPU
# (docs/training.md, `keras-priors bench train`): bfloat16 for NiN, float32 for ResNet-20.
GRID_RECIPE = dict(data="fashion_mnist", batch_size=128, optimizer="sgd", learning_rate=0.05,
                   weight_decay=5e-4, schedule="cosine", warmup_epochs=0.5, validation=5000)
PRECISION = {"nin": "bf16", "resnet20": "fp32"}
SCHEDULES = {"short": 3, "converged": 30}  # epochs
SHIPPED_WIDTH = {"nin": Fraction(1, 3), "resnet20": Fraction(1, 2)}


def cell_dir(model, width, schedule, seed, precision=None):
    """runs/grid/<model>_w<width>_<schedule>_seed<seed>[_<precision> if not the family's]."""
    w = Fraction(width).limit_denominator(12)
    precision = precision or PRECISION[family(model)]
    suffix = "" if precision == PRECISION[family(model)] else f"_{precision}"
    return GRID_RUNS / f"{model}_w{w.numerator}-{w.denominator}_{schedule}_seed{seed}{suffix}"


def _cell_command(model, width, schedule, seed, precision=None):
    r = GRID_RECIPE
    precision = precision or PRECISION[family(model)]
    argv = [sys.executable, "-m", "keras_priors.cli", "train", model, "--data", r["data"],
            "--width", repr(float(width)), "--epochs", str(SCHEDULES[schedule]),
            "--batch-size", str(r["batch_size"]), "--optimizer", r["optimizer"],
            "--learning-rate", str(r["learning_rate"]), "--weight-decay", str(r["weight_decay"]),
            "--schedule", r["schedule"], "--warmup-epochs", str(r["warmup_epochs"]),
            "--validation", str(r["validation"]), "--seed", str(seed), "--quiet",
            "--out", str(cell_dir(model, width, schedule, seed, precision))]
    return argv + (["--mixed-precision"] if precision == "bf16" else [])


def grid(models, widths, schedules, seeds, jobs=1, precision=None):
    """Train every (model, width, schedule, seed) cell, `jobs` at a time, each job with
    cpus / jobs intra-op threads (on 2 cores two one-thread jobs train as many images per
    second as one two-thread job, and the cells need no coordination). Finished cells are
    skipped, interrupted ones resumed. `precision`: "bf16" / "fp32", else the family's."""
    cells = [(m, w, sc, s, precision) for s in seeds for sc in schedules
             for m in models for w in (widths or [SHIPPED_WIDTH[family(m)]])]
    todo = []
    for cell in cells:
        out = cell_dir(*cell)
        if (out / "result.json").exists():
            print(f"{out.name}: done", flush=True)
        else:
            todo.append(cell)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = dict(os.environ, TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS="1",
               TF_CPP_MIN_LOG_LEVEL="3")
    running = []
    while todo or running:
        while todo and len(running) < jobs:
            cell = todo.pop(0)
            out = cell_dir(*cell)
            out.parent.mkdir(parents=True, exist_ok=True)
            argv = _cell_command(*cell) + (["--resume"] if out.exists() else [])
            log = open(out.parent / f"{out.name}.log", "a")
            running.append((cell, subprocess.Popen(argv, env=env, stdout=log, stderr=log), log))
            print(f"{out.name}: started", flush=True)
        time.sleep(5)
        for item in list(running):
            cell, proc, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            out = cell_dir(*cell)
            if proc.returncode:
                print(f"{out.name}: failed (exit {proc.returncode}; see {out.name}.log)",
                      flush=True)
            else:
                r = json.loads((out / "result.json").read_text())
                print(f"{out.name}: test {r['accuracy']:.4f}, validation "
                      f"{r['validation_accuracy']:.4f}, {r['train_seconds']:.0f} s", flush=True)


def _grid_runs():
    """{(model, width, schedule, precision): {seed: run}}: the runs recorded in
    docs/study/grid.json (runs/ does not travel between machines), updated with the finished
    runs under runs/grid. A run is its seed, test and validation accuracy, train seconds and,
    for runs trained here, its validation curve."""
    cells = {}
    recorded = DOCS / "grid.json"
    for row in json.loads(recorded.read_text())["rows"] if recorded.exists() else []:
        key = (row["model"], Fraction(row["width"]), row["schedule"], row["precision"])
        runs_ = row.get("runs") or [  # older rows kept only the mean validation and time
            {"seed": s, "accuracy": a, "validation_accuracy": row["validation_mean"] / 100,
             "train_seconds": row["train_seconds"]}
            for s, a in zip(row["seeds"], row["accuracies"])]
        cells[key] = {r["seed"]: {**r, "macs": row["macs"], "params": row["params"]}
                      for r in runs_}
    for result in sorted(GRID_RUNS.glob("*/result.json")):
        r = json.loads(result.read_text())
        cfg = r["config"]
        schedule = next(k for k, e in SCHEDULES.items() if e == cfg["epochs"])
        precision = "bf16" if cfg["mixed_precision"] else "fp32"
        key = (r["model"], Fraction(cfg["width"]).limit_denominator(12), schedule, precision)
        history = json.loads((result.parent / "state.json").read_text())["history"]
        cells.setdefault(key, {})[r["seed"]] = {
            "seed": r["seed"], "accuracy": r["accuracy"],
            "validation_accuracy": r["validation_accuracy"],
            "train_seconds": r["train_seconds"], "macs": r["macs"], "params": r["params"],
            "val_curve": [h["val_accuracy"] for h in history]}
    return cells


def _mean_std(values):
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _grid_plots(rows):
    """Error vs MACs per width (both schedules, the family's precision), and per family the
    validation accuracy per epoch of the converged runs (the plateau that chose the
    schedule); a family's curves are redrawn only when some of its runs carry them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_priors.analysis import plot_error_vs_cost

    main = [r for r in rows if r["precision"] == PRECISION[family(r["model"])]]
    for w in sorted({r["width"] for r in main}):
        at_w = [r for r in main if r["width"] == w]
        pts = [{"name": f"{r['model']} {r['epochs']}ep", "macs": r["macs"],
                "params": r["params"], "error_mean": 100 - r["mean"], "error_std": r["std"]}
               for r in at_w]
        names = " / ".join(sorted({family(r["model"]) for r in at_w}))
        plot_error_vs_cost(pts, DOCS / f"grid_w{w.replace('/', '-')}_error_vs_macs.png", "macs",
                           f"Fashion-MNIST, {names} at width {w}: error vs MACs "
                           "(mean ± std over seeds)")
    for fam in FAMILIES:
        curves = [(r, run) for r in rows if r["schedule"] == "converged"
                  and family(r["model"]) == fam for run in r["runs"] if run.get("val_curve")]
        if not curves:
            continue
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        for r, run in curves:
            ax.plot(range(1, len(run["val_curve"]) + 1), [100 * v for v in run["val_curve"]],
                    label=f"{r['model']} w{r['width']} {r['precision']} seed {run['seed']}",
                    lw=1)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy (%), 5,000 held-out images")
        ax.set_ylim(75, 95)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(DOCS / f"grid_validation_curves_{fam}.png")
        plt.close(fig)


def grid_report():
    """The width x schedule table (mean ± std over seeds, gap to the family's baseline in the
    same cell), as docs/study/grid.md and grid.json; runs recorded there before are kept."""
    cells = _grid_runs()
    lines = ["| width | schedule | precision | model | seeds | test accuracy % | validation % | "
             "vs baseline (points) | train s / run |", "|---|---|---|---|---|---|---|---|---|"]
    rows = []
    order = {m: i for i, m in enumerate(MODELS)}
    for key in sorted(cells, key=lambda k: (list(FAMILIES).index(family(k[0])), k[1],
                                            list(SCHEDULES).index(k[2]), k[3] != "bf16",
                                            order.get(k[0], 99))):
        model, w, schedule, precision = key
        runs_ = [cells[key][s] for s in sorted(cells[key])]
        acc, std = _mean_std([100 * r["accuracy"] for r in runs_])
        val, _ = _mean_std([100 * r["validation_accuracy"] for r in runs_])
        base = cells.get((FAMILIES[family(model)][0], w, schedule, precision))
        gap = acc - _mean_std([100 * r["accuracy"] for r in base.values()])[0] if base else None
        sec = statistics.mean(r["train_seconds"] for r in runs_)
        rows.append({"model": model, "width": str(w), "schedule": schedule,
                     "epochs": SCHEDULES[schedule], "precision": precision,
                     "seeds": [r["seed"] for r in runs_],
                     "accuracies": [r["accuracy"] for r in runs_], "mean": acc, "std": std,
                     "validation_mean": val, "gap_to_baseline": gap, "train_seconds": sec,
                     "macs": runs_[0]["macs"], "params": runs_[0]["params"],
                     "runs": [{k: v for k, v in r.items() if k not in ("macs", "params")}
                              for r in runs_]})
        lines.append(f"| {w} | {schedule} ({SCHEDULES[schedule]} ep) | {precision} | {model} | "
                     f"{len(runs_)} | {acc:.2f}{f' ± {std:.2f}' if len(runs_) > 1 else ''} | {val:.2f} | "
                     f"{'-' if gap is None else f'{gap:+.2f}'} | {sec:.0f} |")
    table = "\n".join(lines)
    DOCS.mkdir(parents=True, exist_ok=True)
    _grid_plots(rows)
    (DOCS / "grid.md").write_text(table + "\n")
    (DOCS / "grid.json").write_text(json.dumps({"recipe": GRID_RECIPE, "precision": PRECISION,
                                                "schedules": SCHEDULES, "rows": rows}, indent=1))
    print(table)
    return rows


def train(models, seeds):
    from keras_priors import training

    for seed in seeds:
        for model in models:
            out = run_dir(model, seed)
            if (out / "result.json").exists():
                print(f"{out.name}: done", flush=True)
                continue
            cfg = training.TrainConfig(model, seed=seed, **recipe(model))
            result = training.fit(cfg, out, resume=(out / "state.json").exists(), verbose=2)
            print(f"{out.name}: accuracy {result['accuracy']:.4f} in {result['train_seconds']} s",
                  flush=True)


def _results():
    rows = []
    for model in MODELS:
        runs = [json.loads((run_dir(model, s) / "result.json").read_text())
                for s in SEEDS if (run_dir(model, s) / "result.json").exists()]
        if not runs:
            continue
        errors = [100 * (1 - r["accuracy"]) for r in runs]
        rows.append({
            "name": model, "family": family(model), "seeds": len(runs), "accuracies": [r["accuracy"] for r in runs],
            "error_mean": statistics.mean(errors),
            "error_std": statistics.stdev(errors) if len(errors) > 1 else 0.0,
            "macs": runs[0]["macs"], "params": runs[0]["params"],
            "train_seconds": statistics.mean(r["train_seconds"] for r in runs),
        })
    return rows


def report():
    from keras_priors.analysis import plot_error_vs_cost

    rows = _results()
    DOCS.mkdir(parents=True, exist_ok=True)
    lines = ["| model | seeds | accuracy % (mean ± std) | vs baseline (points) | params | "
             "MACs (28x28) | MACs vs baseline | train s / run |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = next((b for b in rows if b["name"] == FAMILIES[r["family"]][0]), r)
        acc = 100 - r["error_mean"]
        lines.append(
            f"| {r['name']} | {r['seeds']} | {acc:.2f} ± {r['error_std']:.2f} | "
            f"{acc - (100 - base['error_mean']):+.2f} | {r['params']:,} | {r['macs'] / 1e6:.2f} M "
            f"| {r['macs'] / base['macs']:.2f} | {r['train_seconds']:.0f} |")
    table = "\n".join(lines)
    for fam, members in FAMILIES.items():
        fam_rows = [r for r in rows if r["name"] in members]
        if not fam_rows:
            continue
        label = f"Fashion-MNIST, {fam} family (width x{WIDTHS[fam]:.2f}, 3 seeds)"
        plot_error_vs_cost(fam_rows, DOCS / f"{fam}_error_vs_macs.png", "macs",
                           f"{label}: error vs MACs")
        plot_error_vs_cost(fam_rows, DOCS / f"{fam}_error_vs_params.png", "params",
                           f"{label}: error vs parameters")
    cov = covariance()
    (DOCS / "results.json").write_text(json.dumps({"recipe": RECIPE, "widths": WIDTHS, "rows": rows,
                                                   "covariance": cov}, indent=1))
    (DOCS / "table.md").write_text(table + "\n")
    print(table)
    print(json.dumps(cov, indent=1))


def covariance():
    """Block-diagonality of the correlations between a root layer's input and its output
    (NiN: conv2c -> conv3a; ResNet-20: stage-2 block 1 out -> block 2's first conv), seed 0,
    on test images, with 4 blocks for every model and with each root model's own groups."""
    import keras

    from keras_priors import analysis, data

    fm = data.load("fashion_mnist")
    batches = data.eval_batches(fm, 250)
    out = {}
    for model_name, (a, b) in COVARIANCE.items():
        state = run_dir(model_name, 0) / "state.json"
        if not state.exists():
            continue
        from keras_priors import runs

        path = runs.checkpoint_path(state.parent, json.loads(state.read_text()))
        model = keras.saving.load_model(path)
        own = getattr(model.get_layer(b), "groups", 1)
        res4 = analysis.filter_covariance(model, a, b, batches, groups=4, max_batches=8,
                                          png=DOCS / f"covariance_{model_name}.png")
        out[model_name] = {"root_layer_groups": own, "score_4_blocks": res4.score}
        if own > 1:
            out[model_name]["score_own_groups"] = analysis.block_diagonality(res4.corr, own)
    return out


def _shipped_run(model, width=None):
    """(run folder, recipe, all seeds' test accuracies) of the run to ship for `model`: its
    converged grid cell at `width` (default: the family's shipped width; seed 0), else the
    first study's seed-0 run (shipped width only), else None (the entry already shipped
    stays)."""
    cell = cell_dir(model, width or SHIPPED_WIDTH[family(model)], "converged", 0)
    if (cell / "result.json").exists():
        seeds = sorted(GRID_RUNS.glob(cell.name.replace("_seed0", "_seed*") + "/result.json"))
        accs = [json.loads(f.read_text())["accuracy"] for f in seeds]
        cfg = json.loads((cell / "result.json").read_text())["config"]
        keep = ("data", "epochs", "batch_size", "optimizer", "learning_rate", "weight_decay",
                "schedule", "warmup_epochs", "width", "validation", "mixed_precision")
        return cell, {k: cfg[k] for k in keep}, accs
    if width is None and (run_dir(model, 0) / "result.json").exists():
        rows = {r["name"]: r for r in _results()}
        return run_dir(model, 0), recipe(model), rows[model]["accuracies"]
    return None


def ship(models=MODELS, width=None, tag="fashion_mnist"):
    """Copy each model's chosen seed-0 weights into the package (weight tag `tag`) and update
    the manifest and cards; models with no run here keep the entry already shipped. `width`:
    ship the converged grid cells of that width (tag "fashion_mnist_wide": width 2/3)."""
    shipped = SHIPPED.parent / tag
    shipped.mkdir(parents=True, exist_ok=True)
    path = shipped / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    for model in models:
        chosen = _shipped_run(model, width)
        if chosen is None:
            continue
        src, rec, accs = chosen
        dst = shipped / f"{model}.weights.h5"
        shutil.copyfile(src / "weights.weights.h5", dst)
        result = json.loads((src / "result.json").read_text())
        accuracy = result["accuracy"]
        if rec.get("mixed_precision"):  # users run the weights in float32: card what they get
            from keras_priors import training

            accuracy = training.evaluate(model, str(dst), "fashion_mnist",
                                         width=rec["width"])["accuracy"]
        manifest[model] = {
            "file": f"zoo/weights/{tag}/{model}.weights.h5",
            "sha256": hashlib.sha256(dst.read_bytes()).hexdigest(),
            "accuracy": accuracy, "seed": 0, "accuracy_all_seeds": accs,
            "macs": result["macs"], "params": result["params"],
            "recipe": rec, "card": f"docs/cards/{model}_{tag}.md",
        }
        if tag != "fashion_mnist":
            manifest[model]["preprocessing"] = "fashion_mnist"
        if "validation_accuracy" in result:
            manifest[model]["validation_accuracy"] = result["validation_accuracy"]
        _card(model, manifest[model], src, tag)
        print(f"{model}: shipped {src.name} ({100 * accuracy:.2f}%)")
    path.write_text(json.dumps(manifest, indent=1) + "\n")


def _card(model, entry, src, tag="fashion_mnist"):
    cards = ROOT / "docs" / "cards"
    cards.mkdir(parents=True, exist_ok=True)
    r = entry["recipe"]
    held = r.get("validation", 0)
    if held:
        data = (f"Trained on the first {60000 - held:,} of the 60,000 training images; the "
                f"last {held:,} were held out to choose the schedule (validation accuracy "
                f"{100 * entry['validation_accuracy']:.2f}% at the end). The 10,000 test images "
                "were scored once, after training.")
        history = json.loads((src / "state.json").read_text())["history"]
        tail = [100 * h["val_accuracy"] for h in history[-5:]]
        why = (f"{r['epochs']} epochs is the converged schedule of the width x schedule study "
               "(docs/study.md): validation accuracy over the last five epochs was "
               f"{', '.join(f'{a:.2f}' for a in tail)}%. ")
        why += ("These weights replace the earlier 3-epoch, 30,000-image ones (nin 83.06%, "
                "nin_root8 77.64%)." if tag == "fashion_mnist" else
                f"Width x{r['width']:.3f} is the study's cell where nin_root8's groups are "
                "wide enough to come within a point of nin (docs/study.md); the weight tag "
                "\"fashion_mnist\" has the narrower, faster models.")
        repro = "keras-priors " + " ".join(_cell_command(model, r["width"], next(
            k for k, e in SCHEDULES.items() if e == r["epochs"]), 0)[3:])
        repro = repro.replace(str(cell_dir(model, r["width"], "converged", 0)), f"runs/{model}")
        precision = "bfloat16 mixed precision (float32 weights and softmax), " if r.get(
            "mixed_precision") else ""
    else:
        data = (f"Trained on the first {r['limit_train']:,} of the 60,000 training images; "
                "accuracy measured on all 10,000 test images.")
        why = ("the first study (10 models x 3 seeds) had to fit in about an hour of a 2-core "
               "CPU; reduced width, 30k images and 3 epochs are what fits. These are "
               "short-schedule models, well below what these networks reach with long "
               "training.")
        repro = (f"keras-priors train {model} --data fashion_mnist --width {r['width']:.6f} "
                 f"--epochs {r['epochs']} --batch-size {r['batch_size']} --learning-rate "
                 f"{r['learning_rate']} --warmup-epochs {r['warmup_epochs']} --limit-train "
                 f"{r['limit_train']} --seed 0 --out runs/{model}")
        precision = ""
    text = f"""# {model}, weight tag "{tag}"

- **Data**: Fashion-MNIST (real, 28x28 grey, 10 classes; Debian package
  `dataset-fashion-mnist`). {data}
- **Architecture**: `{model}` with width x{r['width']:.3f}, 28x28x1 input, 10 classes:
  {entry['params']:,} parameters, {entry['macs'] / 1e6:.2f} MMACs per image.
- **Recipe**: SGD (Nesterov momentum 0.9), learning rate {r['learning_rate']} with
  {r['warmup_epochs']} epoch linear warmup then cosine decay, weight decay
  {r['weight_decay']} (not on biases / BN), batch {r['batch_size']}, {r['epochs']} epochs,
  {precision}random crops (2-pixel padding) and horizontal flips, seed {entry['seed']}.
- **Preprocessing**: `(x / 255 - 0.2860) / 0.3530` (`zoo.preprocess_input(x, "{model}")`).
- **Test accuracy**: {100 * entry['accuracy']:.2f}% (seed 0{', in float32' if precision else ''}); all seeds{' (bfloat16, at the end of training)' if precision else ''}:
  {', '.join(f'{100 * a:.2f}%' for a in entry['accuracy_all_seeds'])}.
- **Why this recipe**: {why}
- **Reproduce**: `{repro}`
- **Check**: `keras-priors evaluate {model} --weights {tag} --data fashion_mnist`.
- **sha256**: `{entry['sha256']}`
"""
    (cards / f"{model}_{tag}.md").write_text(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["all", "train", "report", "ship", "grid",
                                         "grid-report"])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    parser.add_argument("--widths", nargs="*", type=Fraction, default=None,
                        help="grid: width multipliers, e.g. 1/3 2/3 1 (default: the shipped "
                             "width of each family, NiN 1/3, ResNet-20 1/2)")
    parser.add_argument("--schedules", nargs="*", choices=list(SCHEDULES),
                        default=list(SCHEDULES))
    parser.add_argument("--jobs", type=int, default=1, help="grid: cells trained at once")
    parser.add_argument("--tag", default="fashion_mnist",
                        help="ship: the weight tag to write (with --widths: one width)")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default=None,
                        help="grid: override the family's precision (the precision check)")
    args = parser.parse_args(argv)
    if args.step == "grid":
        grid(args.models, args.widths, args.schedules, args.seeds, args.jobs, args.precision)
    if args.step == "grid-report":
        grid_report()
    if args.step in ("all", "train"):
        train(args.models, args.seeds)
    if args.step in ("all", "report"):
        report()
    if args.step in ("all", "ship"):
        if args.widths and len(args.widths) != 1:
            parser.error("ship takes one width (--widths 2/3 --tag fashion_mnist_wide)")
        if bool(args.widths) != (args.tag != "fashion_mnist"):
            parser.error("ship: a width other than the shipped one needs its own --tag, "
                         "e.g. --widths 2/3 --tag fashion_mnist_wide")
        ship(args.models, args.widths[0] if args.widths else None, args.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
