"""Layer benchmark: root implementations and low-rank bases vs a plain conv (see
benchmarks/layers.py)."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from ..argtypes import positive_int
from .timing import interleaved_median_ms, markdown_table

GROUPS = (1, 2, 4, 8, 16, 32, 64)
BASES = ("lr", "lr_join", "lr_lde", "lr_join_wfull", "sf")


def _layer_fns(layer, x):
    """Compiled forward and forward+backward callables for one layer on one input."""
    import keras
    import tensorflow as tf

    layer.build(x.shape)
    variables = layer.trainable_variables

    @tf.function
    def forward():
        return layer(x)

    @tf.function
    def train():
        with tf.GradientTape() as tape:
            loss = keras.ops.sum(keras.ops.square(layer(x)))
        return tape.gradient(loss, variables)

    return forward, train


def _macs(layer, shape):
    import keras

    from keras_priors import complexity

    inputs = keras.Input(shape[1:], batch_size=shape[0])
    model = keras.Model(inputs, layer(inputs))
    return complexity.profile(model, verbose=False).total_macs


def run(channels=256, size=28, batch=8, groups=GROUPS, bases=BASES, repeats=10, warmup=3):
    import keras

    from keras_priors.layers import LowRankConv2D, RootConv2D, choose_implementation

    shape = (batch, size, size, channels)
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    plain = keras.layers.Conv2D(channels, 3, padding="same")
    plain_macs = _macs(keras.layers.Conv2D(channels, 3, padding="same"), shape)
    fwd, trn = _layer_fns(plain, x)
    base = interleaved_median_ms({"fwd": fwd, "train": trn}, warmup, repeats)
    rows = [dict(layer="Conv2D 3x3", variant="plain", macs=plain_macs, **_pair(base))]

    for g in groups:
        fns, macs = {}, None
        impls = ("grouped",) if g == 1 else ("grouped", "split")  # g=1: both run one conv
        for impl in impls:
            layer = RootConv2D(channels, 3, groups=g, padding="same", implementation=impl)
            macs = macs or _macs(RootConv2D(channels, 3, groups=g, padding="same"), shape)
            fns[impl + "_fwd"], fns[impl + "_train"] = _layer_fns(layer, x)
        fns["plain_fwd"], fns["plain_train"] = fwd, trn
        t = interleaved_median_ms(fns, warmup, repeats)
        auto = choose_implementation(g)
        for impl in impls:
            rows.append(
                dict(
                    layer=f"RootConv2D g={g}", variant=impl, macs=macs,
                    fwd_ms=t[impl + "_fwd"], train_ms=t[impl + "_train"],
                    plain_fwd_ms=t["plain_fwd"], plain_train_ms=t["plain_train"],
                    auto=impl == auto,
                )
            )
    for basis in bases:
        layer = LowRankConv2D(channels, 3, basis=basis, padding="same")
        macs = _macs(LowRankConv2D(channels, 3, basis=basis, padding="same"), shape)
        f, tr = _layer_fns(layer, x)
        t = interleaved_median_ms({"fwd": f, "train": tr, "pf": fwd, "pt": trn}, warmup, repeats)
        rows.append(
            dict(layer=f"LowRankConv2D {basis}", variant="-", macs=macs, fwd_ms=t["fwd"],
                 train_ms=t["train"], plain_fwd_ms=t["pf"], plain_train_ms=t["pt"])
        )
    return {"shape": shape, "backend": keras.backend.backend(), "rows": rows}


def _pair(t):
    return {"fwd_ms": t["fwd"], "train_ms": t["train"], "plain_fwd_ms": t["fwd"],
            "plain_train_ms": t["train"]}


def targets(result):
    """Check the layer targets; returns a list of (target, met, detail)."""
    checks = []
    by_g = {}
    for r in result["rows"]:
        if r["layer"].startswith("RootConv2D"):
            by_g.setdefault(r["layer"], []).append(r)
    for name, rs in by_g.items():
        best = min(r["fwd_ms"] for r in rs)
        auto = next(r for r in rs if r.get("auto"))
        g = int(name.split("=")[1])
        checks.append((f"{name}: auto within 10% of best (fwd)", auto["fwd_ms"] <= 1.1 * best,
                       f"auto {auto['fwd_ms']:.2f} ms, best {best:.2f} ms"))
        best_t = min(r["train_ms"] for r in rs)
        checks.append((f"{name}: auto within 10% of best (fwd+bwd)",
                       auto["train_ms"] <= 1.1 * best_t,
                       f"auto {auto['train_ms']:.2f} ms, best {best_t:.2f} ms"))
        if g >= 4:
            checks.append((f"{name}: auto faster than plain 3x3 (fwd)",
                           auto["fwd_ms"] < auto["plain_fwd_ms"],
                           f"{auto['fwd_ms']:.2f} vs {auto['plain_fwd_ms']:.2f} ms"))
    return checks


def report(result):
    plain_macs = result["rows"][0]["macs"]
    rows = []
    for r in result["rows"]:
        rows.append([
            r["layer"], r["variant"] + (" (auto)" if r.get("auto") else ""),
            f"{r['macs'] / 1e6:.1f}", f"{r['macs'] / plain_macs:.2f}",
            f"{r['fwd_ms']:.2f}", f"{r['fwd_ms'] / r['plain_fwd_ms']:.2f}",
            f"{r['train_ms']:.2f}", f"{r['train_ms'] / r['plain_train_ms']:.2f}",
        ])
    header = ["layer", "implementation", "MMACs", "MACs ratio", "fwd ms", "fwd ratio",
              "fwd+bwd ms", "fwd+bwd ratio"]
    b, h, w, c = result["shape"]
    lines = [f"Input {b}x{h}x{w}x{c}, backend {result['backend']}; ratios are against a plain "
             "Conv2D 3x3 timed in the same round.", "", markdown_table(header, rows), ""]
    for name, met, detail in targets(result):
        lines.append(f"- [{'met' if met else 'NOT met'}] {name} ({detail})")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--repeats", type=positive_int, default=15,
                        help="timed rounds per layer (--quick uses 2)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        result = run(channels=16, size=8, batch=2, groups=(1, 4), bases=("lr",), repeats=2,
                     warmup=1)
    else:
        result = run(repeats=args.repeats)
    print(report(result))
    if args.json:
        from .. import io

        io.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
