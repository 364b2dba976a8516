"""Training memory and step time of the 3D U-Nets at the patch sizes people train at.

Each row runs in a fresh process: build the model at a (P, P, P, 4) patch, compile it with
Dice + BCE and AdamW, one warm-up step, then `--steps` timed training steps at batch 2;
memory is the rise of the process's peak resident set (ru_maxrss) over the state before
the first step. `unet3d_lowrank` is measured with its LowRankConv3D layers recomputing
their member convs in the backward pass (`recompute=True`) and without (the default).

    python benchmarks/unet_memory.py --patch 96 128 [--widths 16 32 64 128] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROWS = [("unet3d", None), ("unet3d_lowrank", True), ("unet3d_lowrank", False),
        ("unet3d_root", None)]

CHILD = r"""
import json, os, resource, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np, keras
from keras_priors import zoo
from keras_priors.layers import LowRankConv3D
from keras_priors.volumetric.losses import DiceCELoss
args = json.loads(sys.argv[1])
p = args["patch"]
model = zoo.load(args["model"], input_shape=(p, p, p, 4), classes=3,
                 classifier_activation="sigmoid", widths=tuple(args["widths"]))
if args["recompute"] is not None:
    for layer in model.layers:
        if isinstance(layer, LowRankConv3D):
            layer.recompute = args["recompute"]
model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=DiceCELoss())
rng = np.random.default_rng(0)
x = rng.normal(size=(2, p, p, p, 4)).astype("float32")
y = (rng.random((2, p, p, p, 3)) > 0.9).astype("float32")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model.train_on_batch(x, y)
t0 = time.perf_counter()
for _ in range(args["steps"]):
    model.train_on_batch(x, y)
step = (time.perf_counter() - t0) / args["steps"]
rise = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print("RESULT", json.dumps({"memory_mb": round(rise), "step_s": round(step, 3)}))
"""


def measure(model, recompute, patch, widths, steps):
    args = {"model": model, "recompute": recompute, "patch": patch, "widths": widths,
            "steps": steps}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], env=env,
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{model} at {patch}^3 failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, nargs="+", default=[96, 128])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    results = []
    print("| patch | model | recompute | peak training memory MB | x full | step s | x full |")
    print("|---|---|---|---|---|---|---|")
    for patch in args.patch:
        full = None
        for model, recompute in ROWS:
            r = measure(model, recompute, patch, args.widths, args.steps)
            r.update(model=model, recompute=recompute, patch=patch, widths=args.widths)
            full = full or r
            results.append(r)
            print(f"| {patch}^3 | {model} | {'-' if recompute is None else recompute} | "
                  f"{r['memory_mb']} | {r['memory_mb'] / full['memory_mb']:.2f} | "
                  f"{r['step_s']:.2f} | {r['step_s'] / full['step_s']:.2f} |", flush=True)
    if args.json:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from keras_priors import io

        io.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
