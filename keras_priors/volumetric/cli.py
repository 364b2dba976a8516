"""`keras-priors seg`: segmentation on the command line.

    keras-priors seg synth OUT_DIR [--cases N] [--seed S] [--downsample 2] [--start I] [--generator 1|2] [--ranges train|ood]
    keras-priors seg prepare DATA [--out PREPARED] [--workers N]
    keras-priors seg train --data DIR --layout brats|msd|manifest --model unet3d_lowrank --out DIR
    keras-priors seg predict --model RUN_DIR|NAME [--weights TAG] --input CASE_OR_DIR --out DIR
    keras-priors seg evaluate --pred DIR --data DIR [--metrics global,lesionwise,nsd] [--json FILE]

Hooked into keras_priors.cli with `add_parser(sub)`.
"""

from __future__ import annotations

import json

from .. import argtypes


def run(args):
    from .. import volumetric as seg
    from . import synthetic

    if args.seg_command == "synth":
        folders = synthetic.write_cases(args.out, n=args.cases, seed=args.seed,
                                        downsample=args.downsample, start=args.start,
                                        allow_other_files=args.allow_other_files,
                                        version=args.generator, ranges=args.ranges)
        print(f"wrote {len(folders)} synthetic BraTS 2021 cases (generator {args.generator}"
              f"{f', ranges {args.ranges}' if args.generator == 2 else ''}) under {args.out}")
        return 0
    if args.seg_command == "prepare":
        from .prepare import prepare_dataset

        ds = prepare_dataset(args.data, args.out, layout=args.layout, workers=args.workers)
        print(f"prepared {len(ds.case_ids)} cases in {ds.root}")
        return 0
    if args.seg_command == "train":
        fields = seg.SegConfig.__dataclass_fields__
        cfg = seg.SegConfig(**{k: v for k, v in vars(args).items() if k in fields and v is not None})
        result = seg.fit_segmentation(cfg, args.out, resume=args.resume,
                                      verbose=0 if args.quiet else "auto",
                                      strategy=argtypes.strategy(args), workers=args.workers)
        print(json.dumps({k: v for k, v in result.items() if k != "per_case"}, indent=1))
        return 0
    if args.seg_command == "predict":
        post = {"et_min": args.postprocess_et_min, "et_total_min": args.postprocess_et_total_min}
        seg.predict(args.model, args.input, args.out, args.layout, overwrite=args.force,
                    weights=args.weights, tta=args.tta or False, png=args.png,
                    postprocess={k: v for k, v in post.items() if v is not None} or None)
        return 0
    if args.seg_command == "evaluate":
        return _evaluate(args)
    raise ValueError(f"unknown seg command {args.seg_command!r}")


def _evaluate(args):
    """`seg evaluate`: a table on stdout; the JSON to --json FILE ('-': stdout instead)."""
    from pathlib import Path

    from .. import io
    from . import evaluation, metrics

    names = metrics.metric_names(args.metrics)  # bad names fail before any reading
    out = None if args.json in (None, "-") else Path(args.json)
    if out is not None:
        if out.suffix.lower() in (".nii", ".gz") or out.name.endswith(".nii.gz"):
            raise ValueError(f"--json {out} looks like a NIfTI file; give a .json path")
        if not args.force:
            io.refuse_existing(out)
    result = evaluation.evaluate_predictions(args.pred, args.data, args.layout, names,
                                             labels=args.labels)
    if args.json == "-":
        print(json.dumps(result, indent=1, default=io.jsonable))
        return 0
    print(evaluation.format_table(result, per_case=args.per_case))
    if out is not None:
        io.write_json(out, result)
        print(f"wrote {out}")
    return 0


def add_parser(sub):
    seg = sub.add_parser("seg", help="3D segmentation on NIfTI volumes").add_subparsers(
        dest="seg_command", required=True)
    p = seg.add_parser("synth", help="write synthetic BraTS 2021 cases on real anatomy")
    p.add_argument("out")
    p.add_argument("--cases", type=argtypes.positive_int, default=8)
    p.add_argument("--seed", type=argtypes.non_negative_int, default=0)
    p.add_argument("--downsample", type=argtypes.positive_int, default=2,
                   help="1 = 1 mm, 2 = 2 mm voxels")
    p.add_argument("--start", type=argtypes.non_negative_int, default=0,
                   help="number of the first case (add cases to a folder of synthetic ones)")
    p.add_argument("--allow-other-files", action="store_true",
                   help="write into a folder that holds other files too")
    p.add_argument("--generator", type=int, choices=[1, 2], default=1,
                   help="1: fixed contrasts, 10-20 mm lesions; 2: domain-randomised")
    p.add_argument("--ranges", choices=["train", "ood"], default="train",
                   help="generator 2: training ranges or the held-out (out-of-distribution) ones")
    p.set_defaults(func=run)
    p = seg.add_parser("prepare", help="preprocess a dataset once into memory-mappable arrays")
    p.add_argument("data", help="a dataset folder (BraTS, MSD or manifest layout)")
    p.add_argument("--out", default=None,
                   help="the prepared folder (default: a shared cache keyed by the data's content)")
    p.add_argument("--layout", default="auto", choices=["auto", "brats", "brats2021",
                                                         "brats2023", "brats2024", "msd",
                                                         "manifest"])
    p.add_argument("--workers", type=int, default=None, help="parallel processes")
    p.set_defaults(func=run)
    p = seg.add_parser("train", help="train a 3D U-Net on a NIfTI dataset")
    p.add_argument("--data", required=True,
                   help="a prepared folder (seg prepare), a dataset, or 'synthetic' (cases "
                        "generated on the fly, nothing written)")
    p.add_argument("--layout", default="auto", choices=["auto", "brats", "brats2021",
                                                         "brats2023", "brats2024", "msd",
                                                         "manifest"])
    p.add_argument("--model", default="unet3d_lowrank")
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument("--patch", type=int, nargs=3, default=None)
    p.add_argument("--widths", type=int, nargs="+", default=None)
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--val-fraction", type=float, default=None)
    p.add_argument("--foreground", type=float, default=None,
                   help="share of patches centred on a foreground voxel (default 0.5)")
    p.add_argument("--rotate", type=float, default=None, help="max axial rotation, degrees")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--overlap", type=float, default=None, help="sliding-window overlap")
    p.add_argument("--val-every", type=int, default=None,
                   help="epochs between validations during training (default 1; 0: only at the end)")
    p.add_argument("--val-cases", type=int, default=None,
                   help="held-out cases scored during training (default 3; all at the end)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes preparing a raw dataset and parallel patch loaders")
    p.add_argument("--mixed-precision", action="store_true", default=None,
                   help="bfloat16 compute on CPU, float16 on GPU; weights stay float32 "
                        "(U-Net training 1.3-1.5x faster on an AVX-512 BF16 CPU: docs/performance.md)")
    p.add_argument("--recompute", choices=["on", "off", "per_sample"], default=None,
                   help="low-rank U-Nets: recompute the member convs in the backward pass "
                        "(on, default), store them (off: faster, more memory), or recompute "
                        "one sample at a time (per_sample: least memory; docs/performance.md)")
    g = p.add_argument_group("--data synthetic: cases generated on the fly (generator 2)")
    g.add_argument("--synth-cases", type=argtypes.positive_int, default=None,
                   help="fresh cases per epoch (default 16)")
    g.add_argument("--synth-val-cases", type=argtypes.positive_int, default=None,
                   help="fixed held-out cases (default 4)")
    g.add_argument("--synth-downsample", type=argtypes.positive_int, default=None,
                   help="2 = 2 mm voxels (default)")
    g.add_argument("--synth-brains", nargs="+", choices=["colin27", "mni152"], default=None)
    g.add_argument("--synth-val-brains", nargs="+", choices=["colin27", "mni152"],
                   default=None, help="brains of the held-out cases (default: --synth-brains)")
    p.add_argument("--quiet", action="store_true")
    argtypes.add_strategy_args(p)
    p.set_defaults(func=run)
    p = seg.add_parser("predict", help="label maps for a case or a dataset")
    p.add_argument("--model", required=True,
                   help="a training output folder, or a zoo model name with --weights")
    p.add_argument("--weights", default=None,
                   help="weights tag of a zoo model, e.g. synthetic_brats; for a run folder "
                        "'last' (default) or 'best' (the best validated weights)")
    p.add_argument("--input", required=True, help="a case folder or a dataset folder")
    p.add_argument("--out", required=True)
    p.add_argument("--layout", default="auto")
    p.add_argument("--force", action="store_true",
                   help="replace existing predictions (never inputs: an --out inside the "
                        "input folders is refused regardless)")
    p.add_argument("--tta", nargs="?", const="xyz", default=None, metavar="AXES",
                   help="test-time augmentation: mirror along these RAS axes (default xyz: "
                        "all 8 flips) and average the probabilities")
    p.add_argument("--postprocess-et-min", type=float, default=None, metavar="MM3",
                   help="relabel each 26-connected enhancing-tumour component below this "
                        "volume (mm^3, e.g. 50) as necrosis / tumour core; off by default")
    p.add_argument("--postprocess-et-total-min", type=float, default=None, metavar="MM3",
                   help="relabel all enhancing tumour as necrosis when the case has less than "
                        "this volume of it in all (mm^3); off by default")
    p.add_argument("--png", action="store_true",
                   help="also write <case>_overlay.png: axial slices, labels over FLAIR/T1ce")
    p.set_defaults(func=run)
    p = seg.add_parser("evaluate", help="BraTS metrics of predictions against labels: global "
                       "Dice / HD95, NSD, lesion-wise (2023/2024 and 2025 rules)")
    p.add_argument("--pred", required=True, help="folder of <case>_seg.nii.gz predictions")
    p.add_argument("--data", required=True, help="the labelled dataset")
    p.add_argument("--layout", default="auto")
    p.add_argument("--metrics", default="global",
                   help="comma-separated: global, nsd, lesionwise (= lesionwise_2023), "
                        "lesionwise_2025 (default: global)")
    p.add_argument("--labels", default=None, choices=["brats2021", "brats2023", "brats2024"],
                   help="label scheme (default: from the case names)")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="also write all scores as JSON to FILE ('-': JSON on stdout, no table)")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    p.add_argument("--per-case", action="store_true", help="print a table for every case too")
    p.set_defaults(func=run)
