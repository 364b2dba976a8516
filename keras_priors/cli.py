"""`keras-priors`: a thin command-line front end over the public functions.

    keras-priors zoo list [PATTERN] [--pretrained]
    keras-priors zoo info NAME [--json]
    keras-priors zoo profile NAME [--input-shape 32,32,3] [--json]
    keras-priors zoo predict NAME IMAGE... [--weights imagenet] [--top 5]
    keras-priors train MODEL --data fashion_mnist --epochs N --batch-size B --out DIR
        [--resume] [--seed S] [--mixed-precision] [--optimizer sgd|adamw] ...
    keras-priors evaluate MODEL --weights TAG_OR_PATH --data fashion_mnist
    keras-priors seg synth OUT_DIR [--cases N] [--seed S] [--downsample 2] [--start I]
    keras-priors seg train --data DIR --layout brats|msd|manifest --model unet3d_lowrank --out DIR
    keras-priors seg predict --model RUN_DIR|NAME [--weights TAG] --input CASE_OR_DIR --out DIR
    keras-priors seg evaluate --pred DIR --data DIR
    keras-priors export MODEL_OR_PATH out.tflite [--quant int8] [--target cpu|edgetpu] [--calib DATA]
    keras-priors profile MODEL.keras
    keras-priors bench [models|layers|floor|seg|unet|train] [--size full|quick|smoke] [--only BASELINE ...]
                       [--json F] [--compare F]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import argtypes


def _zoo_list(args):
    from . import zoo

    names = zoo.list_models(args.pattern, pretrained=True if args.pretrained else None)
    for name in names:
        spec = zoo.registry.get(name)
        tags = ",".join(spec.weights) or "-"
        print(f"{name:28s} {spec.family:18s} weights: {tags:12s} {spec.description}")
    if not names:
        print(f"no model matches {args.pattern!r}", file=sys.stderr)
        return 1
    aliases = zoo.registry.aliases()
    if aliases and args.pattern == "*":
        print("aliases: " + ", ".join(f"{a} -> {t}" for a, t in sorted(aliases.items())))
    return 0


def _fmt(v, unit):
    return "-" if v is None else f"{v / (1e9 if unit == 'G' else 1e6):.3f} {unit}"


def _zoo_info(args):
    from . import zoo

    info = zoo.info(args.name)
    if args.json:
        print(json.dumps(info, indent=1, default=str))
        return 0
    print(f"{info['name']}  ({info['family']}; aliases: {', '.join(info['aliases']) or '-'})")
    print(f"  {info['description']}")
    print(f"  input {info['input_shape']}, {info['classes']} classes, "
          f"preprocessing {info['preprocessing']!r}")
    build, paper = info["build"], info["paper"]
    if paper:
        print(f"  paper: {paper['reference']}")
        print(f"    MACs {_fmt(paper['macs'], 'G')}, params {_fmt(paper['params'], 'M')} "
              f"({paper['param_convention']}), at input {paper['input_shape']}")
        if paper["accuracy"]:
            print(f"    accuracy: {paper['accuracy']}")
        if paper["notes"]:
            print(f"    notes: {paper['notes']}")
    line = f"  this build: MACs {_fmt(build['macs'], 'G')}, params {_fmt(build['params'], 'M')}"
    if "params_paper_convention" in build:
        line += f" ({_fmt(build['params_paper_convention'], 'M')} counted as the paper does)"
    print(line + f", at input {build['input_shape']}")
    for tag, w in info["weights"].items():
        print(f"  weights {tag!r}: {w['description']} [{w['source']}, sha256 {w['sha256'][:12]}...]")
    if not info["weights"]:
        print("  weights: none shipped (architecture only)")
    return 0


def _zoo_profile(args):
    from . import complexity, zoo

    model = zoo.load(args.name, input_shape=args.input_shape)
    result = complexity.profile(model, verbose=not args.json)
    if args.json:
        print(result.to_json(indent=1))
    return 0


def _zoo_predict(args):
    import numpy as np

    from . import zoo
    from .zoo import imagenet

    spec = zoo.registry.get(args.name)
    if args.weights not in spec.weights and not os.path.isfile(args.weights):
        tags = ", ".join(spec.weights) or "none"
        print(f"error: {args.name} has no weights {args.weights!r} (available: {tags})",
              file=sys.stderr)
        return 2
    model = zoo.load(args.name, weights=args.weights)
    size = model.input_shape[1]
    images = []
    for path in args.images:
        try:
            images.append(imagenet.load_image(path, size=size))
        except (OSError, ValueError) as e:
            print(f"error: cannot read image {path!r}: {e}", file=sys.stderr)
            return 2
    x = zoo.preprocess_input(np.stack(images), args.name)
    preds = model.predict(x, verbose=0)
    if preds.shape[-1] != 1000:
        for path, row in zip(args.images, preds):
            top = np.argsort(-row)[: args.top]
            print(path + ": " + ", ".join(f"class {i} ({row[i]:.3f})" for i in top))
        return 0
    for path, decoded in zip(args.images, zoo.decode_predictions(preds, top=args.top)):
        print(path)
        for synset, name, score in decoded:
            print(f"  {score:6.3f}  {name} ({synset})")
    return 0


def _profile(args):
    import keras

    from . import (
        complexity,
        layers,  # noqa: F401  (registers the structured layers for deserialization)
        zoo,
    )

    path = args.model
    if not os.path.isfile(path):
        if path.endswith(".keras") or os.sep in path or "/" in path:
            raise FileNotFoundError(f"model file {path} does not exist (give a .keras file or "
                                    "a zoo model name)")
        model = zoo.load(path, input_shape=args.input_shape)
    else:
        if not path.endswith(".keras"):
            raise ValueError(f"{path} is not a .keras model file (give a .keras file or a zoo "
                             "model name)")
        zoo.weights.check_readable(path)
        try:
            model = keras.saving.load_model(path, compile=False)
        except (ValueError, TypeError, OSError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"{path} is a zip file but not a loadable .keras model: "
                             f"{first[:300]}") from None
    complexity.profile(model)
    return 0


def _check_data(args):
    """The --data value names a dataset or an existing folder whose images all open."""
    from . import data

    data.check(args.data, args.data_dir, option="--data")


def _train(args):
    from . import training, zoo

    zoo.registry.get(args.model)  # unknown names fail before the run folder is made
    _check_data(args)

    fields = training.TrainConfig.__dataclass_fields__
    cfg = training.TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        result = training.fit(cfg, args.out, resume=args.resume,
                              verbose="auto" if not args.quiet else 0, strategy=argtypes.strategy(args))
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    print(json.dumps(result, indent=1, default=str))
    return 0


def _evaluate(args):
    from . import training, zoo

    zoo.check_weights(args.model, args.weights)
    _check_data(args)
    result = training.evaluate(args.model, args.weights, args.data, args.data_dir,
                               args.limit_test, width=args.width)
    print(json.dumps(result, indent=1, default=str))
    return 0


_BENCH_OPTIONS = {  # option: (attribute, the benchmarks that take it)
    "--size": ("size", ("models", "floor")), "--only": ("only", ("models", "floor")),
    "--no-tflite": ("no_tflite", ("models", "floor")), "--compare": ("compare", ("models",)),
    "--no-memory": ("no_memory", ("models",)),
    "--cases": ("cases", ("seg",)), "--patch": ("patch", ("seg", "unet")),
    "--widths": ("widths", ("unet",)), "--models": ("models", ("train",)),
    "--mixed-precision": ("mixed_precision", ("unet",)),
    "--allocator-peak": ("allocator_peak", ("unet",)),
    "--no-keras-norm": ("no_keras_norm", ("unet",)),
}


def _bench(args):
    for option, (attr, takers) in _BENCH_OPTIONS.items():
        value = getattr(args, attr)
        given = value not in (None, False) and not (attr == "size" and value == "full")
        if given and args.what not in takers:
            raise ValueError(f"bench {args.what} takes no {option} (only bench "
                             f"{' and '.join(takers)} do)")
    if args.compare and not os.path.isfile(args.compare):
        raise FileNotFoundError(f"--compare {args.compare}: no such file (a JSON saved by "
                                "bench --json)")
    if args.what == "seg":
        from .bench import seg

        argv = ["--quick"] if args.quick else []
        argv += ["--cases", *map(str, args.cases)] if args.cases else []
        argv += ["--patch", *map(str, args.patch)] if args.patch else []
        return seg.main(argv + (["--json", args.json] if args.json else []))
    if args.what == "unet":
        from .bench import unet

        argv = ["--quick"] if args.quick else []
        argv += ["--patch", *map(str, args.patch)] if args.patch else []
        argv += ["--widths", *map(str, args.widths)] if args.widths else []
        argv += ["--mixed-precision"] if args.mixed_precision else []
        argv += ["--allocator-peak"] if args.allocator_peak else []
        argv += ["--no-keras-norm"] if args.no_keras_norm else []
        return unet.main(argv + (["--json", args.json] if args.json else []))
    if args.what == "train":
        from .bench import train

        argv = ["--quick"] if args.quick else []
        argv += ["--models", *args.models] if args.models else []
        return train.main(argv + (["--json", args.json] if args.json else []))
    if args.what == "layers":
        from .bench import layers

        argv = ["--quick"] if args.quick else []
        return layers.main(argv + (["--json", args.json] if args.json else []))
    from .bench import floor, models

    argv = ["--size", "smoke" if args.quick else args.size]
    argv += ["--json", args.json] if args.json else []
    argv += ["--only", *args.only] if args.only else []
    argv += ["--no-tflite"] if args.no_tflite else []
    if args.what == "floor":
        return floor.main(argv)
    argv += ["--compare", args.compare] if args.compare else []
    argv += ["--no-memory"] if args.no_memory else []
    return models.main(argv)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (no usage block), exit code 2; sub-commands inherit it."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def build_parser():
    from . import __version__

    parser = _Parser(
        prog="keras-priors",
        description="Structural priors for Keras: structured layers, model zoo, export.",
    )
    parser.add_argument("--version", action="version", version=f"keras-priors {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    zoo = sub.add_parser("zoo", help="the model zoo").add_subparsers(dest="zoo_command",
                                                                     required=True)
    p = zoo.add_parser("list", help="list registered models")
    p.add_argument("pattern", nargs="?", default="*", help="glob, e.g. 'resnet50*'")
    p.add_argument("--pretrained", action="store_true", help="only models with weights")
    p.set_defaults(func=_zoo_list)
    p = zoo.add_parser("info", help="paper figures vs this build, weights")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_zoo_info)
    p = zoo.add_parser("profile", help="per-layer params and MACs")
    p.add_argument("name")
    p.add_argument("--input-shape", type=argtypes.image_shape, default=None, help="H,W,C")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_zoo_profile)
    p = zoo.add_parser("predict", help="classify images with a pretrained model")
    p.add_argument("name")
    p.add_argument("images", nargs="+")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--top", type=argtypes.positive_int, default=5)
    p.set_defaults(func=_zoo_predict)

    p = sub.add_parser("train", help="train a zoo model on a classification dataset")
    p.add_argument("model", help="a zoo name, e.g. nin_root8")
    p.add_argument("--data", default="fashion_mnist",
                   help="fashion_mnist, a tfds name (tfds:NAME) or an image folder")
    p.add_argument("--data-dir", default=None, help="IDX folder / tfds data_dir")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", required=True, help="output folder (never overwritten)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixed-precision", action="store_true",
                   help="bfloat16 compute on CPU (float16 on GPU), float32 weights")
    p.add_argument("--jit-compile", action="store_true", help="XLA-compile the training step")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--schedule", choices=["cosine", "step"], default="cosine")
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--width", type=float, default=None, help="width multiplier (nin, resnet20)")
    p.add_argument("--limit-train", type=argtypes.positive_int, default=None,
                   help="use the first N training examples (default: all)")
    p.add_argument("--limit-test", type=argtypes.positive_int, default=None,
                   help="use the first N test examples (default: all)")
    p.add_argument("--validation", type=argtypes.positive_int, default=0, metavar="N",
                   help="hold out the last N training examples and validate on them each "
                        "epoch; the test set is then scored once, at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    argtypes.add_strategy_args(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="test accuracy, loss, MACs and params as JSON")
    p.add_argument("model")
    p.add_argument("--weights", required=True, help="a weight tag or a weights file")
    p.add_argument("--data", default="fashion_mnist",
                   help="fashion_mnist, a tfds name (tfds:NAME) or an image folder")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--limit-test", type=argtypes.positive_int, default=None,
                   help="use the first N test examples (default: all)")
    p.add_argument("--width", type=float, default=None)
    p.set_defaults(func=_evaluate)

    from .volumetric import cli as seg_cli

    seg_cli.add_parser(sub)

    p = sub.add_parser("profile", help="params and MACs of a saved .keras model or zoo name")
    p.add_argument("model")
    p.add_argument("--input-shape", type=argtypes.image_shape, default=None, help="H,W,C (zoo names)")
    p.set_defaults(func=_profile)

    from .tflite_export import cli as export_cli

    export_cli.add_parser(sub)

    p = sub.add_parser("bench", help="benchmarks that print tables (default: models)")
    p.add_argument("what", nargs="?", choices=["models", "layers", "floor", "seg", "unet", "train"],
                   default="models")
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    p.add_argument("--size", choices=["full", "quick", "smoke"], default="full",
                   help="models: input sizes and pairs")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--compare", help="models: a saved JSON to compare with")
    p.add_argument("--only", nargs="+", metavar="BASELINE",
                   help="models: only the pairs of these baselines, e.g. resnet50 unet3d")
    p.add_argument("--no-tflite", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--cases", type=int, nargs="+", metavar="N",
                   help="seg: numbers of BraTS-size cases (default 4 16 40)")
    p.add_argument("--patch", type=int, nargs="+", metavar="P",
                   help="seg: cubic patch sizes (default 64 128); unet: (default 96 128)")
    p.add_argument("--widths", type=int, nargs="+", metavar="W",
                   help="unet: filters per level (default 16 32 64 128)")
    p.add_argument("--mixed-precision", action="store_true",
                   help="unet: every row under mixed_bfloat16, as seg train --mixed-precision")
    p.add_argument("--allocator-peak", action="store_true",
                   help="unet: also TensorFlow's allocator peak during a step")
    p.add_argument("--no-keras-norm", action="store_true",
                   help="unet: skip the rows with Keras' own GroupNormalization")
    p.add_argument("--models", nargs="+", metavar="NAME",
                   help="train: NiN / CIFAR ResNet models (default nin nin_root8 resnet20)")
    p.set_defaults(func=_bench)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
