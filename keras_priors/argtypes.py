"""Argument types and option groups shared by the command-line front ends
(`keras_priors.cli`, `keras_priors.tflite_export.cli`, `keras_priors.volumetric.cli`)."""

from __future__ import annotations

import argparse


def shape(text, ranks=(3, 4)):
    """'32,32,3' -> (32, 32, 3): H,W,C (or D,H,W,C when 4 is among `ranks`) positive integers."""
    names = " or ".join({3: "H,W,C", 4: "D,H,W,C"}[r] for r in ranks)
    try:
        values = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 32,32,3, "
                                         f"received {text!r}") from None
    if len(values) not in ranks or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected {names} positive integers, received {text!r}")
    return values


def positive_int(text, minimum=1):
    """'8' -> 8; zero, negatives and non-integers are usage errors (exit code 2)."""
    kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind}, received {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {kind}, received {text!r}")
    return value


def non_negative_int(text):
    """'0' -> 0; negatives and non-integers are usage errors."""
    return positive_int(text, minimum=0)


def image_shape(text):
    """H,W,C only."""
    return shape(text, ranks=(3,))


def add_strategy_args(p):
    p.add_argument("--strategy", choices=["default", "mirrored", "multiworker"],
                   default="default",
                   help="tf.distribute strategy (docs/scaling.md); --batch-size is the global batch")
    p.add_argument("--logical-cpus", type=int, default=None,
                   help="split the CPU into N logical devices (--strategy mirrored without GPUs)")


def strategy(args):
    """The tf.distribute strategy of --strategy (set up before anything creates a tensor)."""
    from . import distribute

    return distribute.get_strategy(args.strategy, logical_cpus=args.logical_cpus)
