"""Classifier training speed on the CPU: which precision, compiler and thread settings make
a Fashion-MNIST training step fastest, and whether the input pipeline keeps up.

Each row runs in a fresh process (precision policy, XLA and op determinism are global):
build the model as `keras-priors train` does, compile it with the training recipe, run
`warmup` steps, then time `steps` training steps of `model.fit` on the real tf.data
pipeline (shuffle, crop, flip, normalise, batch, prefetch). Variants:

- `fp32`: float32, op determinism on (what `keras-priors train` does by default);
- `fp32_nondet`: float32 without op determinism;
- `bf16`: mixed bfloat16 (`--mixed-precision`), determinism on;
- `xla`, `bf16_xla`: the same with `jit_compile=True`;
- `fp32_1thread`: float32 with one intra-op thread (what a second job on 2 cores gets);
- `pipeline`: the input pipeline alone, images per second with no model.

    keras-priors bench train [--models nin nin_root8 resnet20] [--variants ...] [--json F]
    keras-priors bench train --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

VARIANTS = ("fp32", "fp32_nondet", "bf16", "xla", "bf16_xla", "fp32_1thread", "pipeline")
WIDTHS = {"nin": 1 / 3, "resnet": 0.5}

CHILD = r"""
import json, sys, time
args = json.loads(sys.argv[1])
import tensorflow as tf
if args["variant"] == "fp32_1thread":
    tf.config.threading.set_intra_op_parallelism_threads(1)
import keras
from keras_priors import data as data_lib, runs, training

v = args["variant"]
cfg = training.TrainConfig(args["model"], width=args["width"], batch_size=args["batch"],
                           mixed_precision=v.startswith("bf16"), epochs=1)
keras.utils.set_random_seed(0)
if v != "fp32_nondet":
    tf.config.experimental.enable_op_determinism()
data = data_lib.load("fashion_mnist", limit_train=args["batch"] * (args["steps"] + args["warmup"]))
batches = data_lib.train_batches(data, cfg.batch_size, 0, 0, 1)
n = args["steps"] + args["warmup"]
if v == "pipeline":
    it = iter(batches)
    for _ in range(args["warmup"]):
        next(it)
    t0 = time.perf_counter()
    for _ in range(args["steps"]):
        next(it)
    sec = (time.perf_counter() - t0) / args["steps"]
    print("RESULT", json.dumps({"step_ms": round(1e3 * sec, 2),
                                "images_per_s": round(cfg.batch_size / sec)}))
    sys.exit(0)
keras.mixed_precision.set_global_policy(runs.precision_policy(cfg.mixed_precision))
model = training.build_model(cfg, data)
training.compile_model(model, cfg, n)
if v.endswith("xla"):
    model.compile(optimizer=model.optimizer, loss=model.loss, metrics=["accuracy"],
                  jit_compile=True)
times = []
class Clock(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        self.t0 = time.perf_counter()
    def on_train_batch_end(self, batch, logs=None):
        times.append(time.perf_counter() - self.t0)
model.fit(batches, epochs=1, steps_per_epoch=n, verbose=0, callbacks=[Clock()])
steady = sorted(times[args["warmup"]:])
sec = steady[len(steady) // 2]
print("RESULT", json.dumps({"step_ms": round(1e3 * sec, 2),
                            "images_per_s": round(cfg.batch_size / sec)}))
"""


def width(model):
    return next(w for prefix, w in WIDTHS.items() if model.startswith(prefix))


def measure(model, variant, batch=128, steps=40, warmup=8):
    """One row in a fresh process: {"step_ms", "images_per_s"} (median step after warm-up)."""
    args = {"model": model, "variant": variant, "width": width(model), "batch": batch,
            "steps": steps, "warmup": warmup}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], env=env,
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{model} {variant} failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None):
    from .unet import machine

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["nin", "nin_root8", "resnet20"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="smoke run: nin_root8, 3 steps")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.variants, args.steps = ["nin_root8"], ["fp32", "bf16", "pipeline"], 3
    for m in args.models:
        if not any(m.startswith(p) for p in WIDTHS):
            raise ValueError(f"--models {m}: bench train measures the NiN and CIFAR ResNet "
                             "families (nin*, resnet*)")
    info = machine()
    print(f"machine: {info['cpus']} CPUs, AVX-512 {' '.join(info['avx512']) or 'none'}, "
          f"TF_ENABLE_ONEDNN_OPTS={info['TF_ENABLE_ONEDNN_OPTS']}; Fashion-MNIST 28x28, "
          f"batch {args.batch}, median of {args.steps} steps")
    print("| model | width | variant | step ms | images/s | x fp32 |")
    print("|---|---|---|---|---|---|")
    rows = []
    for m in args.models:
        base = None
        for v in args.variants:
            r = {"model": m, "width": width(m), "variant": v,
                 **measure(m, v, args.batch, args.steps, 2 if args.quick else 8)}
            if v == "fp32":
                base = r
            ratio = (f"{base['step_ms'] / r['step_ms']:.2f}" if base and v != "pipeline"
                     else "-")
            r["speedup_vs_fp32"] = ratio
            rows.append(r)
            print(f"| {m} | {r['width']:.2f} | {v} | {r['step_ms']:.1f} | {r['images_per_s']} "
                  f"| {ratio} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "batch": args.batch, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
