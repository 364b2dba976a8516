"""Training memory, training step and inference time of the 3D U-Nets at the patch sizes
people train at: full vs low-rank vs root, and what each change to the U-Net bought.

Each row runs in a fresh process: build the model at a (P, P, P, 4) patch, compile it with
Dice + BCE and AdamW, one warm-up step, then `steps` timed training steps at batch 2, then
inference (`predict_on_batch`, batch 2, after one warm-up call). Memory is the rise of the
process's peak resident set (ru_maxrss) from just before the first step (which also traces
the step) to the end of the training steps. Rows:

- `unet3d`, `unet3d_lowrank` (the default: recomputing units), `unet3d_root`;
- `unet3d_lowrank` with `recompute=False` (composites and norms keep their tensors) and
  with `recompute="per_sample"` (the backward pass one sample at a time);
- `unet3d` and `unet3d_lowrank` (`recompute=False`) with Keras' own GroupNormalization
  instead of this package's, i.e. the U-Nets as they were before the lean norm.

    keras-priors bench unet --patch 96 128 [--widths 16 32 64 128] [--json out.json]
    keras-priors bench unet --quick     # smoke run at 16^3
    keras-priors bench unet --patch 96 128 --mixed-precision   # bf16 compute, as seg train
    keras-priors bench unet --patch 96 --allocator-peak --no-keras-norm

`--allocator-peak` runs TensorFlow's BFC allocator on the CPU and adds its peak bytes in
use during a training step above those in use before it (the largest of the timed steps):
the tensors a step holds at once, without the process's other memory and with less noise
than the resident set (which varies by +-5% between runs with the executor's op order).

Also `python benchmarks/unet_memory.py ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROWS = [  # (model, recompute, norm): norm "ours" or "keras"
    ("unet3d", None, "keras"),
    ("unet3d", None, "ours"),
    ("unet3d_lowrank", False, "keras"),
    ("unet3d_lowrank", False, "ours"),
    ("unet3d_lowrank", True, "ours"),
    ("unet3d_lowrank", "per_sample", "ours"),
    ("unet3d_root", None, "ours"),
]

CHILD = r"""
import json, os, resource, sys, time
import numpy as np
import keras
from keras_priors import zoo
from keras_priors.zoo import unet3d
from keras_priors.layers import base, lowrank
from keras_priors.volumetric.losses import DiceCELoss


args = json.loads(sys.argv[1])
p = args["patch"]
if args.get("mixed"):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
if args["norm"] == "keras":
    unet3d.GroupNormalization = keras.layers.GroupNormalization
if "no2d" in args["ablate"]:  # axis members as 3D convs
    base._axis_conv_as_2d = lambda *a: None
if "nomark" in args["ablate"]:  # norms keep their own input
    lowrank.mark_recomputable = lambda *a: None
extra = {} if args["recompute"] is None else {"recompute": args["recompute"]}
model = zoo.load(args["model"], input_shape=(p, p, p, 4), classes=3,
                 classifier_activation="sigmoid", widths=tuple(args["widths"]), **extra)
model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=DiceCELoss())
rng = np.random.default_rng(0)
x = rng.normal(size=(2, p, p, p, 4)).astype("float32")
y = (rng.random((2, p, p, p, 3)) > 0.9).astype("float32")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model.train_on_batch(x, y)  # traces the step
bfc = os.environ.get("TF_CPU_ALLOCATOR_USE_BFC") == "true"
if bfc:
    import tensorflow as tf
alloc, elapsed = 0, 0.0
for _ in range(args["steps"]):
    if bfc:
        tf.config.experimental.reset_memory_stats("CPU:0")
        held = tf.config.experimental.get_memory_info("CPU:0")["current"]
    t0 = time.perf_counter()
    model.train_on_batch(x, y)
    elapsed += time.perf_counter() - t0
    if bfc:
        alloc = max(alloc, tf.config.experimental.get_memory_info("CPU:0")["peak"] - held)
step = elapsed / args["steps"]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model.predict_on_batch(x)
t0 = time.perf_counter()
for _ in range(args["steps"]):
    model.predict_on_batch(x)
infer = (time.perf_counter() - t0) / args["steps"]
result = {"memory_mb": round((peak - before) / 1024), "step_s": round(step, 3),
          "infer_s": round(infer, 3)}
if bfc:
    result["allocator_mb"] = round(alloc / 2**20)
print("RESULT", json.dumps(result))
"""


def measure(model, recompute, norm, patch, widths, steps, ablate=(), mixed=False,
            allocator=False):
    """One row in a fresh process: {"memory_mb", "step_s", "infer_s"}. `ablate`: parts of
    the lean path to turn off, "no2d" (3D axis members as 3D convs) and "nomark" (norms
    keep their own input instead of recomputing it); benchmarks/unet_ablation.py.
    `mixed`: under the mixed_bfloat16 policy (bf16 compute, float32 weights).
    `allocator`: with TensorFlow's BFC allocator, adding "allocator_mb" (see above)."""
    args = {"model": model, "recompute": recompute, "norm": norm, "patch": patch,
            "widths": widths, "steps": steps, "ablate": list(ablate), "mixed": mixed}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if allocator:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
    else:
        env.pop("TF_CPU_ALLOCATOR_USE_BFC", None)
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], env=env,
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{model} at {patch}^3 failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _ratio(row, base, key):
    """row[key] / base[key] to two places, "-" where the base is 0 (tiny smoke sizes can
    raise the peak resident set by less than a megabyte)."""
    return f"{row[key] / base[key]:.2f}" if base[key] else "-"


def machine():
    """What the numbers depend on: CPU count and vector extensions, and whether
    TensorFlow's oneDNN kernels are on (keras_priors turns them on unless told not to)."""
    import platform

    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "avx512": sorted(f for f in flags if f.startswith("avx512")),
            "avx2": "avx2" in flags,
            "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, nargs="+", default=[96, 128])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: 16^3, widths 4-8")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="every row under the mixed_bfloat16 policy (as seg train "
                             "--mixed-precision on CPU)")
    parser.add_argument("--allocator-peak", action="store_true",
                        help="also TensorFlow's allocator peak during a step (BFC allocator)")
    parser.add_argument("--no-keras-norm", action="store_true",
                        help="skip the rows with Keras' own GroupNormalization")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.quick:
        args.patch, args.widths, args.steps = [16], [4, 8], 1
    for p in args.patch:
        if p <= 0 or p % 2 ** (len(args.widths) - 1):
            raise ValueError(f"--patch {p}: must be a positive multiple of "
                             f"{2 ** (len(args.widths) - 1)} for {len(args.widths)} levels")
    info = machine()
    print(f"machine: {info['cpus']} CPUs, AVX2 {info['avx2']}, AVX-512 "
          f"{' '.join(info['avx512']) or 'none'}, TF_ENABLE_ONEDNN_OPTS="
          f"{info['TF_ENABLE_ONEDNN_OPTS']}; widths {'-'.join(map(str, args.widths))}, batch 2, "
          f"{'mixed_bfloat16' if args.mixed_precision else 'float32'}")
    alloc = args.allocator_peak
    print("| patch | model | recompute | norm | training memory MB | x unet3d | "
          + ("allocator peak MB | x unet3d | " if alloc else "")
          + "step s | x unet3d | inference s | x unet3d |")
    print("|---" * (12 if alloc else 10) + "|")
    rows = [row for row in ROWS if not (args.no_keras_norm and row[2] == "keras")]
    results = []
    for patch in args.patch:
        full = None
        for model, recompute, norm in rows:
            r = measure(model, recompute, norm, patch, args.widths, args.steps,
                        mixed=args.mixed_precision, allocator=alloc)
            r.update(model=model, recompute=recompute, norm=norm, patch=patch,
                     widths=args.widths,
                     precision="mixed_bfloat16" if args.mixed_precision else "float32")
            if model == "unet3d" and norm == "ours":
                full = r
            results.append(r)
        for r in (r for r in results if r["patch"] == patch):
            cells = [f"{patch}^3", r["model"], "-" if r["recompute"] is None else r["recompute"],
                     r["norm"], r["memory_mb"], _ratio(r, full, "memory_mb")]
            if alloc:
                cells += [r["allocator_mb"], _ratio(r, full, "allocator_mb")]
            cells += [f"{r['step_s']:.2f}", _ratio(r, full, "step_s"), f"{r['infer_s']:.2f}",
                      _ratio(r, full, "infer_s")]
            print("| " + " | ".join(map(str, cells)) + " |", flush=True)
    if args.json:
        from .. import io

        io.write_json(args.json, {"machine": info, "rows": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
