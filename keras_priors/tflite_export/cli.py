"""`keras-priors export`: the exporter on the command line.

    keras-priors export MODEL_OR_PATH out.tflite [--quant none|fp16|dynamic|int8]
        [--target cpu|edgetpu] [--calib DATA] [--calib-samples N] [--input-shape H,W,C]
        [--weights TAG] [--classes N] [--width W] [--io-dtype int8|uint8] [--report out.json]
        [--no-verify] [--force]

Hooked into keras_priors.cli with `add_parser(sub)`; `python -m
keras_priors.tflite_export.cli ...` runs it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .. import argtypes


def add_parser(subparsers):
    """Add the `export` command to an argparse subparsers object."""
    from .convert import IO_DTYPES, QUANTIZATIONS, TARGETS

    p = subparsers.add_parser("export", help="convert a model to .tflite (CPU or Edge TPU)",
                              description="Convert a zoo name or .keras file to a .tflite, "
                              "with a JSON + Markdown report beside it.")
    p.add_argument("model", help="a zoo name or a .keras file")
    p.add_argument("out", help="output .tflite path (never overwritten without --force)")
    p.add_argument("--quant", choices=QUANTIZATIONS, default="none")
    p.add_argument("--target", choices=TARGETS, default="cpu")
    p.add_argument("--calib", default=None,
                   help="calibration data: fashion_mnist, tfds:NAME, an image folder, a "
                        "NIfTI folder (3D) or a .npy file")
    p.add_argument("--calib-samples", type=int, default=100)
    p.add_argument("--verify-data", default=None,
                   help="data for the agreement check (same forms as --calib)")
    p.add_argument("--verify-samples", type=int, default=64)
    p.add_argument("--input-shape", type=argtypes.shape, default=None, help="H,W,C or D,H,W,C (zoo names)")
    p.add_argument("--weights", default=None, help="a weight tag or weights file (zoo names)")
    p.add_argument("--classes", type=int, default=None)
    p.add_argument("--width", type=float, default=None,
                   help="width multiplier (zoo families nin, resnet_cifar, unet3d)")
    p.add_argument("--io-dtype", choices=IO_DTYPES, default="int8")
    p.add_argument("--report", default=None, help="JSON report path (default: OUT with .json)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the agreement check and the latency measurement")
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    p.set_defaults(func=run)
    return p


def _data(spec):
    if spec is not None and spec.endswith(".npy") and os.path.isfile(spec):
        import numpy as np

        return np.load(spec)
    return spec


def run(args):
    """Run the export described by parsed `args`; prints the summary, returns 0."""
    from .convert import export

    report = export(args.model, args.out, quantization=args.quant,
                    representative_data=_data(args.calib), target=args.target,
                    verify=args.verify, io_dtype=args.io_dtype, force=args.force,
                    calibration_samples=args.calib_samples,
                    verify_data=_data(args.verify_data), verify_samples=args.verify_samples,
                    input_shape=args.input_shape, weights=args.weights, classes=args.classes,
                    report_path=args.report,
                    **({"width": args.width} if args.width is not None else {}))
    print(report.to_markdown())
    print(json.dumps({"tflite": report.output, "bytes": report.file_size_bytes,
                      "report": str(args.report or os.path.splitext(args.out)[0] + ".json")}))
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="keras-priors")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv=None):
    """`keras-priors export ...` alone: argv starts with "export"."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
