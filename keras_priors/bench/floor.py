"""Amdahl floor: how fast could a structured model be if its structured convs cost nothing?

    keras-priors bench floor [--size full|quick|smoke] [--only BASELINE ...] [--json F]

For each pair of the model benchmark, the *floor* model is the baseline with every spatial
conv except the first (the layers a root or low-rank variant replaces; the first conv sees
the raw input and stays full in every variant) turned into a 1x1 (1x1x1) conv of the same
widths and strides: everything the structure cannot shrink (normalisation, activations,
pooling, residual adds, concatenations, 1x1 convs, the classifier) is left as it is. Its
time ratio to the baseline, measured side by side with the structured models, is the best
that any structure of those convs can reach on this machine; a target below it cannot be
met by changing the convs.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from . import models
from .timing import markdown_table

SUFFIX = "_floor"
KERAS = ("infer_bs{b0}", "infer_bs{b1}", "train")
TFLITE = ("tflite_fp32_t1", "tflite_fp32_t2", "tflite_int8_t1", "tflite_int8_t2")


def floor_model(model):
    """`model` with every conv of kernel > 1 but the first as a 1x1 conv (same filters,
    strides, bias and activation; padding "same", so every output keeps its shape).

    >>> import keras
    >>> x = keras.Input((16, 16, 3))
    >>> y = keras.layers.Conv2D(8, 3, padding="same")(x)
    >>> y = keras.layers.Conv2D(8, 3, strides=2, padding="same")(y)
    >>> [l.kernel_size for l in floor_model(keras.Model(x, y)).layers[1:]]
    [(3, 3), (1, 1)]
    """
    import keras

    convs = [layer for layer in model.layers if type(layer) in (keras.layers.Conv2D,
                                                                  keras.layers.Conv3D)]
    spatial = [c for c in convs[1:] if max(c.kernel_size) > 1]
    names = {c.name for c in spatial}

    def clone(layer):
        if layer.name not in names:
            return layer.__class__.from_config(layer.get_config())
        cfg = layer.get_config()
        cfg.update(kernel_size=(1,) * len(layer.kernel_size), padding="same",
                   dilation_rate=(1,) * len(layer.kernel_size))
        return layer.__class__.from_config(cfg)

    if not spatial:
        raise ValueError(f"model '{model.name}' has no spatial conv after its first: no floor "
                         "to measure")
    return keras.models.clone_model(model, clone_function=clone)


def _build(name, pair):
    if name.endswith(SUFFIX):
        return floor_model(models._build(name[: -len(SUFFIX)], pair))
    return models._build(name, pair)


def run(size="quick", tflite=True, only=None, progress=print):
    """{"size", "pairs", "models": {name: measurements}} with `<baseline>_floor` added."""
    results = {"size": size, "machine": models._machine(), "pairs": [], "models": {}}
    for pair in models.select_pairs(size, only):
        names = (pair.baseline, *pair.structured, pair.baseline + SUFFIX)
        progress(f"-- {', '.join(names)} at {pair.input_shape}")
        results["models"].update(models.measure(pair, names, size, tflite, build=_build))
        results["pairs"].append(asdict(pair))
    return results


def table(results):
    """Markdown: ratios to the baseline for the structured models and the floor, and for each
    structured model whether the MAC targets lie above the floor (reachable) or below it."""
    rows = []
    for pair in results["pairs"]:
        base = results["models"][pair["baseline"]]
        b0, b1 = pair["batches"][0], pair["batches"][-1]
        keys = [k.format(b0=b0, b1=b1) for k in KERAS] + [k for k in TFLITE if k in base]
        floor = results["models"][pair["baseline"] + SUFFIX]
        for name in (*pair["structured"], pair["baseline"] + SUFFIX):
            row = results["models"][name]
            r = {k: row[k] / base[k] for k in ("macs", *keys)}
            cells = [pair["baseline"], name, f"{r['macs']:.2f}"]
            cells += [f"{r[k]:.2f}" for k in keys]
            if name.endswith(SUFFIX):
                cells.append("-")
            else:
                f = {k: floor[k] / base[k] for k in keys}
                keras_ok = all(f[k] <= models.KERAS_FACTOR * r["macs"] for k in keys[:3])
                int8 = [k for k in keys if k.startswith("tflite_int8")]
                int8_ok = all(f[k] <= models.INT8_FACTOR * r["macs"] for k in int8)
                cells.append(f"keras {'yes' if keras_ok else 'NO'}"
                             + (f", int8 {'yes' if int8_ok else 'NO'}" if int8 else ""))
            rows.append(cells)
    tfl = [k.replace("tflite_", "").replace("_t", " ") + "t" for k in TFLITE
           if any(k in results["models"][p["baseline"]] for p in results["pairs"])]
    header = ["pair", "model", "MACs", "Keras bs1", "Keras bsN", "Keras train", *tfl,
              "MAC targets above the floor?"]
    return ("Ratios to the baseline; `_floor` = the baseline with every spatial conv but the "
            "first as a 1x1:\n\n" + markdown_table(header, rows))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="keras-priors bench floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=tuple(models.SIZES), default="quick")
    parser.add_argument("--only", nargs="+", help="baselines of the pairs to run")
    parser.add_argument("--no-tflite", action="store_true")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    results = run(args.size, tflite=not args.no_tflite, only=args.only,
                  progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(table(results))
    if args.json:
        from .. import io

        io.write_json(Path(args.json), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
