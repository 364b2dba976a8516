"""QAT vs post-training quantization, and pruning vs root structure, on Fashion-MNIST.

    python scripts/tfmot_study.py                 # the budget recorded in docs/tfmot.md
    python scripts/tfmot_study.py --train 2048 --test 1000   # a quick smoke run

Starts from the shipped `fashion_mnist` weights (trained on training images 0..29,999) and
fine-tunes on the next `--train` training images (30,000 on), without augmentation.
Every accuracy is on the test set (all 10,000 images by default); int8 accuracies are
measured on full-integer .tflite files in the LiteRT interpreter.

(a) For each `--qat-models` model: float Keras accuracy; int8 after post-training
    quantization (PTQ) of the shipped weights; int8 after QAT fine-tuning (ranges first
    calibrated on the representative images, BN statistics re-estimated after tuning);
    and, as a control for the fine-tuning itself, the float accuracy after the same
    fine-tuning without quantization.
(b) `--full` pruned (polynomial schedule, one sparsity per layer) to the sparsity that
    leaves it the nonzero parameter count of `--root`, against `--root` fine-tuned for the
    same budget, and `--root` pruned by `--root-sparsity` (pruning and roots compose):
    float and int8 (PTQ of the stripped model) accuracy, nonzero parameters.

Results go to runs/tfmot_study/results.json and are printed as markdown tables.
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
sys.path.insert(0, str(ROOT))
OUT = ROOT / "runs" / "tfmot_study"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--qat-models", nargs="+", default=["resnet20", "resnet20_root4"])
    p.add_argument("--full", default="nin")
    p.add_argument("--root", default="nin_root8")
    p.add_argument("--root-sparsity", type=float, default=0.5)
    p.add_argument("--train", type=int, default=10_000, help="fine-tuning images")
    p.add_argument("--test", type=int, default=10_000, help="test images (10,000 = all)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3, help="peak SGD learning rate (cosine)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--representative", type=int, default=200)
    p.add_argument("--bn-images", type=int, default=2048,
                   help="fine-tuning images that re-estimate BN statistics after tuning")
    p.add_argument("--out", type=Path, default=OUT)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import numpy as np

    from keras_priors import data, io, zoo
    from keras_priors.tflite_export import tfmot_bridge as tb
    from keras_priors.zoo.imagenet import PREPROCESSING

    t_start = time.perf_counter()
    fm = data.fashion_mnist()
    pre = PREPROCESSING["fashion_mnist"][0]
    x_all, y_all = fm.arrays["train"]
    x_train = pre(x_all[30_000:30_000 + args.train].astype("float32"))
    y_train = y_all[30_000:30_000 + args.train].astype("int64")
    x_rep = pre(x_all[:args.representative].astype("float32"))
    x_test, y_test = fm.arrays["test"]
    x_test = pre(x_test[:args.test].astype("float32"))
    y_test = y_test[:args.test].astype("int64")
    x_bn = x_train[:args.bn_images]
    steps = args.epochs * -(-len(x_train) // args.batch_size)
    tune = dict(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size)

    def acc_keras(model):
        probs = model.predict(x_test, batch_size=500, verbose=0)
        return float(np.mean(np.argmax(probs, -1) == y_test))

    def acc_int8(model):
        return tb.evaluate_tflite(tb.to_tflite_int8(model, x_rep), x_test, y_test)

    def nonzero(model):
        return int(sum(np.count_nonzero(w) for w in model.get_weights()))

    def timed(fn, *a, **k):
        t0 = time.perf_counter()
        out = fn(*a, **k)
        return out, time.perf_counter() - t0

    results = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "steps": steps, "qat": [], "prune": []}

    # ------------------------------------------------------------- (a) PTQ vs QAT
    for name in args.qat_models:
        model = zoo.load(name, weights="fashion_mnist")
        row = {"model": name, "params": model.count_params(), "float": acc_keras(model)}
        twin = tb.to_tf_keras(model)
        row["int8_ptq"], row["ptq_s"] = timed(acc_int8, twin)
        qat = tb.quantize_aware(model, calibration_data=x_rep)
        row["fake_quant_before_tuning"] = acc_keras(qat)
        _, row["qat_fit_s"] = timed(tb.fine_tune, qat, (x_train, y_train), **tune)
        tb.recalibrate_batch_norm(qat, x_bn)
        row["int8_qat"], row["qat_convert_eval_s"] = timed(acc_int8, qat)
        control = tb.to_tf_keras(model)
        _, row["float_fit_s"] = timed(tb.fine_tune, control, (x_train, y_train), **tune)
        tb.recalibrate_batch_norm(control, x_bn)
        row["float_tuned"] = acc_keras(control)
        results["qat"].append(row)
        print(json.dumps(row), flush=True)

    # ---------------------------------------------- (b) pruning vs root structure
    full = zoo.load(args.full, weights="fashion_mnist")
    root = zoo.load(args.root, weights="fashion_mnist")
    full_twin = tb.to_tf_keras(full)
    kernels = sum(int(np.prod(layer.kernel.shape)) for layer in full_twin.layers
                  if type(layer).__name__ in ("Conv2D", "Dense"))
    target = (full.count_params() - root.count_params()) / kernels
    frequency = max(1, steps // 10)  # prune over the first ~60% of the steps, then recover
    end_step = frequency * max(1, round(0.6 * steps / frequency))
    runs = [
        (f"{args.full} pruned to {target:.1%}", full, target),
        (f"{args.root} (fine-tuned, not pruned)", root, None),
        (f"{args.root} pruned to {args.root_sparsity:.0%}", root, args.root_sparsity),
    ]
    for label, model, sparsity in runs:
        row = {"run": label, "params": model.count_params(), "float_start": acc_keras(model)}
        if sparsity is None:
            tuned = tb.to_tf_keras(model)
        else:
            tuned = tb.prune(model, sparsity, begin_step=0, end_step=end_step,
                             frequency=frequency)
        _, row["fit_s"] = timed(tb.fine_tune, tuned, (x_train, y_train), **tune)
        tuned = tb.strip(tuned)
        row["float_before_bn_recalibration"] = acc_keras(tuned)
        tb.recalibrate_batch_norm(tuned, x_bn)
        row["sparsity"] = tb.sparsity(tuned)
        row["nonzero"] = nonzero(tuned)
        row["float"] = acc_keras(tuned)
        row["int8"], row["convert_eval_s"] = timed(acc_int8, tuned)
        results["prune"].append(row)
        print(json.dumps(row), flush=True)

    results["total_s"] = round(time.perf_counter() - t_start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    io.write_json(args.out / "results.json", results)
    print_tables(results, len(x_test))


def print_tables(results, n_test):
    pct = lambda a: f"{100 * a:.2f}"  # noqa: E731
    print(f"\n(a) int8 accuracy % on {n_test} test images\n")
    print("| model | params | float (shipped) | int8 PTQ | QAT graph before tuning (fake-quant) "
          "| int8 QAT | float, same fine-tune |")
    print("|---|---|---|---|---|---|---|")
    for r in results["qat"]:
        print(f"| {r['model']} | {r['params']:,} | {pct(r['float'])} | {pct(r['int8_ptq'])} | "
              f"{pct(r['fake_quant_before_tuning'])} | {pct(r['int8_qat'])} | "
              f"{pct(r['float_tuned'])} |")
    print(f"\n(b) pruning vs roots, accuracy % on {n_test} test images\n")
    print("| run | params | nonzero after | kernel sparsity | float before | float after "
          "(stale BN) | float after | int8 after |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["prune"]:
        print(f"| {r['run']} | {r['params']:,} | {r['nonzero']:,} | {r['sparsity']:.1%} | "
              f"{pct(r['float_start'])} | {pct(r['float_before_bn_recalibration'])} | "
              f"{pct(r['float'])} | {pct(r['int8'])} |")
    print(f"\ntotal {results['total_s']:.0f} s")


if __name__ == "__main__":
    main()
