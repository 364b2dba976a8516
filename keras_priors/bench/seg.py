"""Segmentation at BraTS size: prepare time, peak memory, loader and training speed vs the
number of cases.

Writes N synthetic BraTS 2021 cases of 240x240x155 voxels at 1 mm (synthetic lesions on
the real Colin27 / MNI152 brains of `volumetric.synthetic`, whose 1 mm grids are padded in
x, y and cropped in z, about the brain's centre, to 240x240x155), prepares them with
`prepare_dataset` (growing one prepared folder as N grows: only new cases are prepared),
then for every N and patch size, in a fresh process: the loader's patches/s alone, and one
short epoch of `unet3d_lowrank` (DiceCE sigmoid, AdamW) from the prepared folder with its
steps/s and the process's peak resident memory.

    python benchmarks/seg.py --quick                       # smoke test, ~1-2 min
    python benchmarks/seg.py --cases 4 16 40 --patch 64 128 --json seg.json

Memory: `peak_rss_mb` is VmHWM (ru_maxrss) and includes file pages of the memory-mapped
arrays that were read (reclaimable page cache); `anon_mb` is the process's own memory at
the end of the epoch (RssAnon).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BRATS_SHAPE = (240, 240, 155)
QUICK = {"shape": (48, 48, 40), "downsample": 4, "cases": [2, 3], "patch": [16, 24],
         "steps": 3, "loader_batches": 4}


def _fit(array, shape, centre):
    """Crop / zero-pad `array` to `shape` about voxel `centre`; returns (array, offset) where
    new voxel i is old voxel i + offset."""
    offset = [int(c) - s // 2 for c, s in zip(centre, shape)]
    out = np.zeros(shape, array.dtype)
    src, dst = [], []
    for o, n, s in zip(offset, array.shape, shape):
        a, b = max(o, 0), min(o + s, n)
        src.append(slice(a, b))
        dst.append(slice(a - o, b - o))
    out[tuple(dst)] = array[tuple(src)]
    return out, np.array(offset)


def write_cases(root, start, n, seed=0, shape=BRATS_SHAPE, downsample=1):
    """Synthetic BraTS 2021 cases `start .. start+n-1` of `shape` under `root`; each case is
    seeded by (seed, index), so case i is the same whatever N."""
    import nibabel as nib

    from .. import io
    from ..volumetric import synthetic

    root = Path(root)
    brains = {}
    for i in range(start, start + n):
        name = synthetic.ANATOMIES[i % len(synthetic.ANATOMIES)]
        if name not in brains:
            brains[name] = synthetic.load_anatomy(name, downsample)
        anatomy = brains[name]
        volumes, labels = synthetic.make_case(anatomy, np.random.default_rng([seed, i]))
        hits = np.argwhere(anatomy.brain)
        centre = (hits.min(0) + hits.max(0)) // 2
        labels, offset = _fit(labels, shape, centre)
        affine = anatomy.affine.copy()
        affine[:3, 3] += affine[:3, :3] @ offset
        case_id = f"BraTS2021_{i:05d}"
        folder = root / case_id
        for modality, vol in volumes.items():
            io.save_nifti(nib.Nifti1Image(_fit(vol, shape, centre)[0], affine),
                          folder / f"{case_id}_{modality}.nii.gz")
        io.save_nifti(nib.Nifti1Image(labels, affine), folder / f"{case_id}_seg.nii.gz")


def _memory():
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) / 1024
    return fields


def measure(prepared, n, patch, batch, steps, loader_batches, workers=None, seed=0):
    """Loader patches/s, training steps/s and memory for the first `n` cases of `prepared`
    (run this in a fresh process: the peak is the process's)."""
    import keras

    from .. import zoo
    from ..volumetric.losses import DiceCELoss
    from ..volumetric.pipeline import patch_dataset
    from ..volumetric.prepare import PreparedDataset

    ds = PreparedDataset.open(prepared)
    if n > len(ds):
        raise ValueError(f"{prepared} holds {len(ds)} cases, fewer than n={n}")
    case_ids = ds.case_ids[:n]
    size = (patch,) * 3
    loader = patch_dataset(ds, case_ids, size, batch, seed, 0, 1, workers=workers,
                           steps_per_epoch=loader_batches + 1)
    batches = iter(loader)
    next(batches)  # start the pipeline
    start = time.perf_counter()
    count = sum(1 for _ in batches)
    patches_per_s = count * batch / (time.perf_counter() - start)

    keras.utils.set_random_seed(seed)
    model = zoo.load("unet3d_lowrank", input_shape=(*size, ds.channels), classes=ds.outputs,
                     classifier_activation="sigmoid")
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=DiceCELoss(mode="sigmoid"))
    ends = []
    timer = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda *_, **__: ends.append(time.perf_counter()))
    data = patch_dataset(ds, case_ids, size, batch, seed, 1, 2, workers=workers,
                         steps_per_epoch=steps)
    model.fit(data, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0, callbacks=[timer])
    steps_per_s = (len(ends) - 1) / (ends[-1] - ends[0]) if len(ends) > 1 else float("nan")
    memory = _memory()
    return {"cases": n, "patch": patch, "batch": batch, "steps": steps,
            "loader_patches_per_s": round(patches_per_s, 2),
            "train_steps_per_s": round(steps_per_s, 3),
            "loader_over_train": round(patches_per_s / (steps_per_s * batch), 2),
            "peak_rss_mb": round(memory["VmHWM"], 1), "anon_mb": round(memory["RssAnon"], 1),
            "file_mb": round(memory["RssFile"], 1)}


def run(cases, patches, batch=2, steps=10, loader_batches=16, workers=None, prepare_workers=None,
        workdir=None, shape=BRATS_SHAPE, downsample=1, progress=print):
    """Write, prepare and measure; returns one dict per (N, patch)."""
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="bench-seg-") if own else workdir)
    try:
        return _run(sorted(set(cases)), patches, batch, steps, loader_batches, workers,
                    prepare_workers, workdir, shape, downsample, progress)
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(cases, patches, batch, steps, loader_batches, workers, prepare_workers, workdir, shape,
         downsample, progress):
    from ..volumetric.prepare import prepare_dataset

    data, prepared = workdir / "data", workdir / "prepared"
    results, written = [], 0
    for n in cases:
        if n > written:
            start = time.perf_counter()
            write_cases(data, written, n - written, shape=shape, downsample=downsample)
            progress(f"wrote cases {written}..{n - 1} in {time.perf_counter() - start:.0f} s")
            start = time.perf_counter()
            ds = prepare_dataset(data, prepared, workers=prepare_workers, progress=False)
            wall = (time.perf_counter() - start) / (n - written)
            worker = np.mean([ds.case(c)["seconds"] for c in ds.case_ids[written:n]])
            written = n
        for patch in patches:
            command = [sys.executable, "-m", "keras_priors.bench.seg", "--measure", str(prepared),
                       "--n", str(n), "--patch", str(patch), "--batch", str(batch),
                       "--steps", str(steps), "--loader-batches", str(loader_batches)]
            if workers:
                command += ["--workers", str(workers)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"measuring N={n} patch={patch} failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result |= {"prepare_s_per_case": round(wall, 2),
                       "prepare_worker_s_per_case": round(float(worker), 2),
                       "case_shape": list(shape)}
            progress(json.dumps(result))
            results.append(result)
    return results


def table(results):
    head = ("| cases | patch | prepare s/case | peak RSS MB | anon MB | loader patches/s "
            "| train steps/s | loader / train |")
    rows = [head, "|" + "---|" * 8]
    for r in results:
        rows.append(f"| {r['cases']} | {r['patch']}^3 | {r['prepare_s_per_case']} | "
                    f"{r['peak_rss_mb']:.0f} | {r['anon_mb']:.0f} | {r['loader_patches_per_s']} | "
                    f"{r['train_steps_per_s']} | {r['loader_over_train']} |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="keras-priors bench seg", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, nargs="+", default=[4, 16, 40])
    parser.add_argument("--patch", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="training steps of the epoch")
    parser.add_argument("--loader-batches", type=int, default=16)
    parser.add_argument("--workers", type=int, help="loader parallel calls (default autotune)")
    parser.add_argument("--prepare-workers", type=int)
    parser.add_argument("--workdir", help="keep cases and prepared folder here (default: temp)")
    parser.add_argument("--quick", action="store_true", help="tiny cases and patches (smoke)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("cases", "patch"):
        if min(getattr(args, name)) < 1:
            parser.error(f"--{name} values must be positive, received {getattr(args, name)}")
    if args.measure:  # the child process of one measurement
        print(json.dumps(measure(args.measure, args.n, args.patch[0], args.batch, args.steps,
                                 args.loader_batches, args.workers)))
        return 0
    options = {}
    if args.quick:
        options = {"shape": QUICK["shape"], "downsample": QUICK["downsample"]}
        args.cases, args.patch = QUICK["cases"], QUICK["patch"]
        args.steps, args.loader_batches = QUICK["steps"], QUICK["loader_batches"]
    if args.workdir and Path(args.workdir).exists() and any(Path(args.workdir).iterdir()):
        parser.error(f"--workdir {args.workdir} is not empty; give a new or empty folder")
    results = run(args.cases, args.patch, args.batch, args.steps, args.loader_batches,
                  args.workers, args.prepare_workers, args.workdir,
                  progress=lambda m: print(m, file=sys.stderr, flush=True), **options)
    print(table(results))
    if args.json:
        from .. import io

        io.write_json(Path(args.json), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
