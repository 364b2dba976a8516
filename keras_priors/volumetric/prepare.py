"""A prepared dataset: cases preprocessed once into memory-mappable arrays.

Like nnU-Net's preprocessed folder. Per case, the images are cropped to the bounding box
of their non-zero voxels (union over modalities and the label), z-scored per channel over
the non-zero voxels (`pipeline.zscore`) and stored as uncompressed float32
`<case>_images.npy` (X,Y,Z,C); the targets as uint8 `<case>_targets.npy` (X,Y,Z,R) (region
masks for BraTS-like cases, else the label map as one channel); up to `FG_SAMPLES` random
foreground coordinates per region (seeded by the case id) as `<case>_fg.npz`, for
foreground oversampling without an `argwhere` over the volume at training time.

`manifest.json` is rewritten after every finished case, so a killed run loses at most the
cases in flight: running again skips cases whose source fingerprints and files match,
prepares changed cases again and drops removed ones. A source file's fingerprint is its
size, its mtime (ns) and the sha256 of its first and last 64 KiB (for `.nii.gz` the last
bytes hold the gzip CRC32 and length of the whole content); a case is up to date only when
all three match.

>>> ds = prepare_dataset("BraTS2021_Training_Data", "prepared", workers=4)  # doctest: +SKIP
>>> ds = PreparedDataset.open("prepared")                                   # doctest: +SKIP
>>> x = ds.images(ds.case_ids[0])   # np.memmap (X,Y,Z,C), float32          # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from .. import io
from .layouts import Case, discover

FORMAT = "keras-priors-prepared"
VERSION = 1  # bump when the stored arrays change: old folders are then prepared again
FG_SAMPLES = 10_000
HASH_BYTES = 64 * 1024

__all__ = ["PreparedDataset", "check_cases", "default_root", "fingerprint", "prepare_dataset"]


# ---------------------------------------------------------------- fingerprints and checks

def fingerprint(path) -> dict:
    """{"size", "mtime_ns", "sha256"} of a file: sha256 over its first and last 64 KiB."""
    path = Path(path)
    st = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(HASH_BYTES))
        if st.st_size > HASH_BYTES:
            f.seek(max(HASH_BYTES, st.st_size - HASH_BYTES))
            digest.update(f.read(HASH_BYTES))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest.hexdigest()}


def _source(entry):
    return entry if isinstance(entry, tuple) else (entry, None)


def _sources(case: Case) -> dict:
    images = {}
    for modality, entry in case.images.items():
        path, channel = _source(entry)
        images[modality] = {"path": str(Path(path).resolve()), "channel": channel,
                            **fingerprint(path)}
    label = None
    if case.label is not None:
        label = {"path": str(Path(case.label).resolve()), **fingerprint(case.label)}
    return {"images": images, "label": label}


def _header(path):
    """(RAS shape, RAS affine, number of channels or None) from the NIfTI header only."""
    import nibabel as nib

    from .nifti import NiftiError

    path = Path(path)
    if not path.is_file():
        raise NiftiError(f"NIfTI file {path} does not exist")
    try:
        img = nib.load(str(path))
        shape, affine = img.shape, img.affine
    except Exception as e:  # nibabel raises many kinds for broken headers
        raise NiftiError(f"cannot read NIfTI file {path}: it is corrupt or not NIfTI ({e})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise NiftiError(f"{path} is a {type(img).__name__}, not a NIfTI-1/2 image")
    if len(shape) not in (3, 4):
        raise NiftiError(f"{path} has {len(shape)} dimensions {shape}; expected a 3D or 4D volume")
    ornt = nib.io_orientation(affine)
    ras_affine = affine @ nib.orientations.inv_ornt_aff(ornt, shape[:3])
    ras_shape = tuple(int(shape[int(axis)]) for axis, _ in ornt)
    return ras_shape, ras_affine, (shape[3] if len(shape) == 4 else None)


def allowed_labels(case: Case):
    """The label values a case may hold: its regions' values (BraTS), the MSD labels, or
    None (any value 0..255)."""
    if case.regions:
        return sorted({0, *(v for values in case.regions.values() for v in values)})
    labels = case.extra.get("labels") if case.extra else None
    if labels:
        return sorted({0, *(int(k) for k in labels)})
    return None


def check_cases(cases) -> None:
    """Check every case from its NIfTI headers (no voxel data is read): files exist and are
    NIfTI, 4D files have the channels listed, images and label share shape and affine, and
    all cases list the same modalities. Raises ValueError naming the case and the file.

    >>> check_cases(discover("BraTS2021_Training_Data"))   # doctest: +SKIP
    """
    from .nifti import NiftiError

    cases = list(cases)
    if not cases:
        raise ValueError("no cases to check")
    modalities = cases[0].modalities
    for case in cases:
        if case.modalities != modalities:
            raise ValueError(f"case {case.case_id} has modalities {list(case.modalities)} but "
                             f"{cases[0].case_id} has {list(modalities)}")
        grids = []
        for modality, entry in case.images.items():
            path, channel = _source(entry)
            shape, affine, channels = _header(path)
            if channel is None and channels is not None:
                raise NiftiError(f"{path} ({modality}) is 4D; list its channels separately")
            if channel is not None and (channels is None or channel >= channels):
                raise NiftiError(f"{path} has no channel {channel} for modality {modality!r}")
            grids.append((path, shape, affine))
        if case.label is not None:
            shape, affine, channels = _header(case.label)
            if channels is not None:
                raise NiftiError(f"label {case.label} must be 3D, received a 4D file")
            grids.append((case.label, shape, affine))
        first = grids[0]
        for path, shape, affine in grids[1:]:
            if shape != first[1]:
                raise NiftiError(
                    f"case {case.case_id}: {path} has shape {shape} but {first[0]} has "
                    f"{first[1]}: the images and label of a case must share one voxel grid")
            if not np.allclose(affine, first[2], atol=1e-3):
                raise NiftiError(
                    f"case {case.case_id}: {path} and {first[0]} have different affines "
                    "(voxel-to-world maps): the images and label of a case must share one grid")


def _label_values(label, case: Case):
    """Sorted label values present; ValueError naming the file for values not allowed."""
    from .nifti import NiftiError

    low, high = int(label.min()), int(label.max())
    if low < 0 or high > 255:
        raise NiftiError(f"label {case.label} holds values outside 0..255 (min {low}, max {high})")
    values = np.flatnonzero(np.bincount(label.ravel().astype(np.int64), minlength=1)).tolist()
    allowed = allowed_labels(case)
    if allowed is not None and set(values) - set(allowed):
        bad = sorted(set(values) - set(allowed))
        raise NiftiError(f"label {case.label} holds values {bad} outside the {case.layout} "
                         f"label set {allowed}")
    return values


def _scan_label(case: Case):
    """Read a case's label data only and check its values (before anything is written)."""
    from .nifti import read_volume

    if case.label is None:
        return None
    return _label_values(np.rint(read_volume(case.label).data).astype(np.int64), case)


# ---------------------------------------------------------------- preparing one case

def _files(case_id):
    return {"images": f"{case_id}_images.npy", "targets": f"{case_id}_targets.npy",
            "foreground": f"{case_id}_fg.npz"}


def _case_seed(case_id):
    return zlib.crc32(case_id.encode())


def _bounding_box(mask):
    """[[start, stop] per axis] of the True voxels; the whole volume if there are none."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append([int(hits[0]), int(hits[-1]) + 1] if len(hits) else [0, mask.shape[axis]])
    return box


def _prepare_one(case: Case, out: str, sources: dict, fg_samples: int):
    """Prepare one case into `out`; returns its manifest entry (run in worker processes)."""
    from .layouts import load_case
    from .pipeline import targets, zscore

    start = time.perf_counter()
    images, label, ref = load_case(case)
    values = _label_values(label, case) if label is not None else None
    mask = np.any(images != 0, axis=-1)
    if label is not None:
        mask |= label > 0
    box = _bounding_box(mask)
    index = tuple(slice(a, b) for a, b in box)
    x = zscore(images[index])
    del images
    y = targets(case, label[index]) if label is not None else None
    out = Path(out)
    files = _files(case.case_id)
    io.save_npy(out / files["images"], x)
    foreground = None
    if y is not None:
        io.save_npy(out / files["targets"], y.astype(np.uint8))
        rng = np.random.default_rng(_case_seed(case.case_id))
        names = list(case.regions) if case.regions else ["foreground"]
        samples, foreground = {}, {}
        for r, name in enumerate(names):
            coords = np.argwhere(y[..., r] > 0) if case.regions else np.argwhere(y[..., 0] > 0)
            foreground[name] = int(len(coords))
            if len(coords) > fg_samples:
                coords = coords[np.sort(rng.choice(len(coords), fg_samples, replace=False))]
            samples[f"region_{r}"] = coords.astype(np.int32)
        with io.atomic_path(out / files["foreground"]) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **samples)
    else:
        files = {"images": files["images"]}
    return {
        "id": case.case_id, "shape": list(x.shape[:3]), "crop_box": box,
        "original_shape": list(ref.ras_shape), "spacing": list(ref.zooms),
        "affine": ref.ras_affine.tolist(), "sources": sources, "files": files,
        "label_values": values, "foreground": foreground,
        "seconds": round(time.perf_counter() - start, 3), "version": VERSION,
    }


def _up_to_date(entry, sources, out: Path):
    if not entry or entry.get("version") != VERSION:
        return False

    def same(a, b):
        keys = ("size", "mtime_ns", "sha256", "channel")
        return a is b or (a is not None and b is not None
                          and all(a.get(k) == b.get(k) for k in keys))

    old = entry.get("sources") or {}
    if set(old.get("images", {})) != set(sources["images"]):
        return False
    if not all(same(old["images"][m], s) for m, s in sources["images"].items()):
        return False
    if not same(old.get("label"), sources["label"]):
        return False
    return all((out / name).is_file() for name in entry.get("files", {}).values())


# ---------------------------------------------------------------- the dataset

def default_root():
    """Where `prepare_dataset(out=None)` keeps shared prepared datasets:
    `$KERAS_PRIORS_HOME/prepared` (~/.keras_priors/prepared)."""
    from ..zoo.weights import home

    return home() / "prepared"


def _content_key(cases, all_sources):
    parts = [FORMAT, VERSION, cases[0].layout, cases[0].regions]
    for case, sources in zip(cases, all_sources):
        files = [(m, s["channel"], s["size"], s["sha256"]) for m, s in sources["images"].items()]
        label = sources["label"]
        parts.append([case.case_id, files, label and [label["size"], label["sha256"]]])
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:20]


def _inside(path: Path, folder: Path):
    return path == folder or folder in path.parents


@contextlib.contextmanager
def _lock(out: Path):
    import fcntl

    with open(out / ".prepare.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _say(progress, message):
    if progress:
        print(message, file=sys.stderr, flush=True)


def prepare_dataset(data, out=None, layout="auto", workers=None, progress=True):
    """Prepare every case of `data` (a dataset folder, a manifest file, or a list of
    `Case`s) into `out` once; returns the `PreparedDataset`.

    `out=None` uses a shared folder keyed by the content of the sources:
    `$KERAS_PRIORS_HOME/prepared/<key>`, so runs on the same data share it. All cases are
    checked first (headers, then label values), so a broken case fails before anything is
    written; `out` equal to or inside the data is refused. Cases run in `workers`
    processes (default min(4, cpu count)); an interrupted run resumes where it stopped.

    >>> ds = prepare_dataset("BraTS2021_Training_Data", "prepared")   # doctest: +SKIP
    >>> ds.case_ids[:2], ds.channels, ds.outputs                       # doctest: +SKIP
    (['BraTS2021_00000', 'BraTS2021_00002'], 4, 3)
    """
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer, received workers={workers!r}")
    if isinstance(data, (list, tuple)):
        cases, data_dir = list(data), None
        if not cases or not all(isinstance(c, Case) for c in cases):
            raise ValueError("data must be a dataset folder, a manifest file or a non-empty "
                             "list of Case")
    else:
        data = Path(data)
        cases = discover(data, layout)
        data_dir = data.resolve() if data.is_dir() else None
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"case ids must be unique; repeated: {dup[:5]}")
    if len({c.layout for c in cases}) != 1 or any(c.regions != cases[0].regions for c in cases):
        raise ValueError("all cases must share one layout and region definition")
    check_cases(cases)
    all_sources = [_sources(c) for c in cases]
    if out is None:
        out = default_root() / _content_key(cases, all_sources)
    out = Path(out).expanduser().resolve()
    forbidden = ([data_dir] if data_dir else []) + sorted(
        {Path(s["path"]).parent for src in all_sources
         for s in [*src["images"].values(), *([src["label"]] if src["label"] else [])]})
    for folder in forbidden:
        if _inside(out, folder):
            raise ValueError(f"out={str(out)!r} is inside the data folder {folder}; a prepared "
                             "dataset is never written among the sources: choose another folder")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out={str(out)!r} is a file, not a folder (nothing was written)")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise FileExistsError(f"out={str(out)!r} exists and is not a prepared dataset (no "
                              "manifest.json); choose an empty or new folder (nothing was written)")
    out.mkdir(parents=True, exist_ok=True)
    with _lock(out):
        return _prepare_locked(cases, all_sources, out, workers, progress)


def _prepare_locked(cases, all_sources, out, workers, progress):
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from multiprocessing import get_context

    manifest_path = out / "manifest.json"
    old = {}
    if manifest_path.is_file():
        previous = io.read_json(manifest_path)
        if previous.get("format") != FORMAT:
            raise ValueError(f"{manifest_path} is not a keras-priors prepared dataset manifest")
        old = previous.get("cases", {})
    first = cases[0]
    manifest = {
        "format": FORMAT, "version": VERSION, "layout": first.layout,
        "modalities": list(first.modalities), "regions": first.regions,
        "channels": len(first.modalities),
        "outputs": len(first.regions) if first.regions else 1,
        "allowed_labels": allowed_labels(first), "foreground_samples": FG_SAMPLES,
        "fingerprint": "size, mtime_ns, sha256 of the first and last 64 KiB",
        "complete": False, "cases": {},
    }
    todo = []
    for case, sources in zip(cases, all_sources):
        entry = old.get(case.case_id)
        if _up_to_date(entry, sources, out):
            manifest["cases"][case.case_id] = entry
        else:
            todo.append((case, sources))
    dropped = set(old) - {c.case_id for c in cases}
    for case_id in dropped:  # files of removed cases are this folder's own
        for name in (old[case_id].get("files") or {}).values():
            with contextlib.suppress(FileNotFoundError):
                (out / name).unlink()
    io.write_json(manifest_path, manifest)
    _say(progress, f"prepare {out}: {len(cases)} cases, {len(cases) - len(todo)} up to date, "
                   f"{len(todo)} to prepare" + (f", {len(dropped)} removed" if dropped else ""))
    workers = workers or min(4, os.cpu_count() or 1)
    workers = max(1, min(workers, len(todo)))
    if todo:
        # fork is quick but unsafe once TensorFlow has started its threads: then spawn
        method = "spawn" if "tensorflow" in sys.modules or sys.platform != "linux" else "fork"
        pool = (ProcessPoolExecutor(workers, mp_context=get_context(method))
                if workers > 1 else None)
        try:
            # label values need the data: all labels are checked before any case is written
            if pool is None:
                for case, _ in todo:
                    _scan_label(case)
            else:
                for _ in pool.map(_scan_label, [c for c, _ in todo]):
                    pass
            done, start = 0, time.perf_counter()

            def finished(entry):
                nonlocal done
                done += 1
                manifest["cases"][entry["id"]] = entry
                io.write_json(manifest_path, manifest)
                _say(progress, f"[{done}/{len(todo)}] {entry['id']} {entry['shape']} in "
                               f"{entry['seconds']:.1f} s ({time.perf_counter() - start:.0f} s)")

            if pool is None:
                for case, sources in todo:
                    finished(_prepare_one(case, str(out), sources, FG_SAMPLES))
            else:
                pending = {pool.submit(_prepare_one, case, str(out), sources, FG_SAMPLES)
                           for case, sources in todo}
                while pending:
                    complete, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in complete:
                        finished(future.result())
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    manifest["cases"] = {c.case_id: manifest["cases"][c.case_id] for c in cases}
    manifest["complete"] = True
    io.write_json(manifest_path, manifest)
    return PreparedDataset.open(out)


class PreparedDataset:
    """A folder written by `prepare_dataset`: arrays are opened memory-mapped, so only the
    voxels read are paged in.

    >>> ds = PreparedDataset.open("prepared")          # doctest: +SKIP
    >>> ds.images(ds.case_ids[0])[10:74, 10:74, 10:74]  # reads one patch  # doctest: +SKIP
    """

    def __init__(self, root, manifest):
        self.root = Path(root)
        self.manifest = manifest
        self._fg = None

    @classmethod
    def open(cls, path):
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{path} is not a prepared dataset: no manifest.json (make "
                                    "one with prepare_dataset / `keras-priors seg prepare`)")
        manifest = io.read_json(manifest_path)
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{manifest_path} is not a keras-priors prepared dataset manifest")
        if manifest.get("version") != VERSION:
            raise ValueError(f"{path} was prepared with format version {manifest.get('version')}"
                             f", this version reads {VERSION}: prepare it again")
        if not manifest.get("complete"):
            raise ValueError(f"{path} is incompletely prepared (interrupted?); run "
                             "prepare_dataset again on the same data to finish it")
        return cls(path, manifest)

    @property
    def case_ids(self):
        return list(self.manifest["cases"])

    @property
    def modalities(self):
        return tuple(self.manifest["modalities"])

    @property
    def regions(self):
        """Region name -> label values (as `layouts.REGIONS`), or None for label maps."""
        regions = self.manifest["regions"]
        return None if regions is None else {k: tuple(v) for k, v in regions.items()}

    @property
    def layout(self):
        return self.manifest["layout"]

    @property
    def channels(self):
        return int(self.manifest["channels"])

    @property
    def outputs(self):
        return int(self.manifest["outputs"])

    def __len__(self):
        return len(self.manifest["cases"])

    def case(self, case_id):
        """The manifest entry of a case."""
        try:
            return self.manifest["cases"][case_id]
        except KeyError:
            raise KeyError(f"case {case_id!r} is not in {self.root}") from None

    def spacing(self, case_id):
        return tuple(self.case(case_id)["spacing"])

    def _path(self, case_id, kind):
        name = self.case(case_id)["files"].get(kind)
        if name is None:
            raise ValueError(f"case {case_id!r} in {self.root} has no label, so no {kind}")
        return self.root / name

    def images(self, case_id):
        """(X,Y,Z,C) float32 np.memmap of the cropped, z-scored images."""
        return np.load(self._path(case_id, "images"), mmap_mode="r")

    def targets(self, case_id):
        """(X,Y,Z,R) uint8 np.memmap of the cropped targets."""
        return np.load(self._path(case_id, "targets"), mmap_mode="r")

    def foreground_samples(self, case_id):
        """Per region, an (N,3) int32 array of foreground coordinates (at most FG_SAMPLES)."""
        cached = self._fg  # the last case read (one tuple: safe across loader threads)
        if cached and cached[0] == case_id:
            return cached[1]
        with np.load(self._path(case_id, "foreground")) as z:
            samples = [z[f"region_{r}"] for r in range(len(z.files))]
        self._fg = (case_id, samples)
        return samples

    def foreground(self, case_id):
        """(N,3) int array of sampled foreground coordinates of any region."""
        samples = [s for s in self.foreground_samples(case_id) if len(s)]
        if not samples:
            return np.empty((0, 3), np.int32)
        return np.unique(np.concatenate(samples), axis=0)
