"""Time a RootConv2D with its groups placed round-robin on N devices against the same layer
on one device, forward and forward+backward (TensorFlow backend), and print a Markdown table.

    python benchmarks/root_devices.py                    # N=2 logical CPU devices
    python benchmarks/root_devices.py --devices /GPU:0 /GPU:1   # physical devices
    python benchmarks/root_devices.py --quick            # tiny smoke run

Logical CPU devices share the same cores and thread pools, so they show the cost of the
placement (extra copies, smaller ops) rather than a speed-up; see docs/scaling.md.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _time(fn, repeats):
    fn()  # trace and warm up
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logical-cpus", type=int, default=2)
    parser.add_argument("--devices", nargs="+", default=None,
                        help="devices to place the groups on (default: the logical CPUs)")
    parser.add_argument("--groups", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.groups, args.channels, args.size, args.batch, args.repeats = [2], 32, 8, 2, 2

    from keras_priors import distribute

    if args.devices is None:
        distribute.configure_logical_cpus(args.logical_cpus)
    import numpy as np
    import tensorflow as tf

    from keras_priors.layers import RootConv2D

    devices = args.devices or [d.name for d in tf.config.list_logical_devices("CPU")]
    shape = (args.batch, args.size, args.size, args.channels)
    x = tf.constant(np.random.default_rng(0).normal(size=shape).astype("float32"))
    print(f"RootConv2D 3x3 {args.channels}->{args.channels}, {args.size}x{args.size}, batch "
          f"{args.batch}, TF {tf.__version__}, devices {devices}; best of {args.repeats}, ms\n")
    print("| groups | one device fwd | placed fwd | one device fwd+bwd | placed fwd+bwd |")
    print("|---|---|---|---|---|")
    for g in args.groups:
        one = RootConv2D(args.channels, 3, groups=g, padding="same", implementation="split")
        placed = RootConv2D(args.channels, 3, groups=g, padding="same", devices=devices)
        one.build(shape)
        placed.build(shape)
        placed.set_weights(one.get_weights())
        row = []
        for layer in (one, placed):
            fwd = tf.function(lambda v, layer=layer: layer(v))
            np.asarray(fwd(x))
            row.append(_time(lambda f=fwd: np.asarray(f(x)), args.repeats))
        for layer in (one, placed):
            @tf.function
            def step(v, layer=layer):
                with tf.GradientTape() as tape:
                    loss = tf.reduce_sum(layer(v))
                return tape.gradient(loss, layer.trainable_variables)

            row.append(_time(lambda f=step: [np.asarray(t) for t in f(x)], args.repeats))
        np.testing.assert_allclose(np.asarray(one(x)), np.asarray(placed(x)), rtol=1e-5, atol=1e-5)
        print(f"| {g} | {row[0]:.2f} | {row[1]:.2f} | {row[2]:.2f} | {row[3]:.2f} |")


if __name__ == "__main__":
    main()
