"""Where a U-Net training step's memory peak is: a liveness simulation of the traced step.

Traces one training step (forward, loss, gradients) of a zoo U-Net at a P^3 x 4 patch,
batch 2, then runs its graph in a topological order (first ready, first run), allocating
each op's outputs before freeing its inputs and freeing a tensor after its last consumer;
views (Identity, Reshape, ...) share their input's buffer. It prints the simulated peak,
the op at which it occurs, and the largest tensors alive there. The real executor runs ops
two at a time in an order of its own, so its peak differs somewhat; the allocator peaks of
`keras-priors bench unet --allocator-peak` agreed with these within 5-10% at 64^3 and 96^3.

    python benchmarks/unet_liveness.py unet3d_lowrank 96
    python benchmarks/unet_liveness.py unet3d 96
    python benchmarks/unet_liveness.py unet3d_lowrank 96 --recompute off
"""

import argparse
import collections
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_priors import zoo  # noqa: E402
from keras_priors.volumetric.config import RECOMPUTE  # noqa: E402
from keras_priors.volumetric.losses import DiceCELoss  # noqa: E402

VIEWS = {"Identity", "IdentityN", "Reshape", "Squeeze", "ExpandDims", "StopGradient",
         "Snapshot"}


def traced_step(model_name, patch, recompute):
    extra = {"recompute": RECOMPUTE[recompute]}
    model = zoo.load(model_name, input_shape=(patch,) * 3 + (4,), classes=3,
                     classifier_activation="sigmoid", widths=(16, 32, 64, 128), **extra)
    loss = DiceCELoss()

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
        return [value, *tape.gradient(value, model.trainable_variables)]

    x = tf.TensorSpec((2, patch, patch, patch, 4), tf.float32)
    y = tf.TensorSpec((2, patch, patch, patch, 3), tf.float32)
    return step.get_concrete_function(x, y).graph


def nbytes(t):
    if t.dtype in (tf.resource, tf.variant) or not t.shape.is_fully_defined():
        return 0
    return int(np.prod(t.shape.as_list() or [1])) * t.dtype.size


def simulate(graph):
    """(peak bytes, the op at the peak, {tensor name: bytes} alive there)."""
    ops = graph.get_operations()
    tensors = {o.name: o for op in ops for o in op.outputs}
    owner = {}  # a view's buffer is its input's
    for op in ops:
        if op.type in VIEWS:
            for i, o in enumerate(op.outputs):
                if len(op.inputs) > (i if op.type == "IdentityN" else 0):
                    owner[o.name] = op.inputs[i if op.type == "IdentityN" else 0].name

    def buffer(name):
        while name in owner:
            name = owner[name]
        return name

    readers = collections.Counter()
    for op in ops:
        for t in {buffer(t.name) for t in op.inputs}:
            readers[t] += 1
    after = collections.defaultdict(list)
    waiting = {}
    for op in ops:
        before = {t.op.name for t in op.inputs} | {c.name for c in op.control_inputs}
        waiting[op.name] = len(before)
        for name in before:
            after[name].append(op)
    ready = collections.deque(op for op in ops if not waiting[op.name])
    alive, now, peak = {}, 0, (0, None, {})
    while ready:
        op = ready.popleft()
        for o in op.outputs:
            if buffer(o.name) == o.name and readers[o.name]:
                alive[o.name] = nbytes(o)
                now += alive[o.name]
        if now > peak[0]:
            peak = (now, op.name, dict(alive))
        for name in {buffer(t.name) for t in op.inputs}:
            readers[name] -= 1
            if not readers[name] and name in alive:
                now -= alive.pop(name)
        for nxt in after[op.name]:
            waiting[nxt.name] -= 1
            if not waiting[nxt.name]:
                ready.append(nxt)
    return peak[0], peak[1], {n: (b, tensors[n].op.type) for n, b in peak[2].items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=["unet3d", "unet3d_lowrank", "unet3d_root"])
    parser.add_argument("patch", type=int)
    parser.add_argument("--recompute", choices=["on", "off", "per_sample"], default="on",
                        help="low-rank only (per_sample's loop is not simulated inside)")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    peak, at, alive = simulate(traced_step(args.model, args.patch, args.recompute))
    print(f"{args.model} {args.patch}^3 (recompute {args.recompute}): simulated peak "
          f"{peak / 2**20:.0f} MB at {at}")
    print("| MB | op | tensor |\n|---|---|---|")
    for name, (size, kind) in sorted(alive.items(), key=lambda kv: -kv[1][0])[:args.top]:
        print(f"| {size / 2**20:.1f} | {kind} | {name} |")


if __name__ == "__main__":
    main()
