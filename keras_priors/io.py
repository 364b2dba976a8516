"""Atomic, permission-correct file output: every file keras-priors writes goes through here.

A file is written to a temporary name in its own folder and renamed over the target only
when complete, so a killed process never leaves a partial file under the real name. The
result gets the permissions a plain ``open(path, "w")`` would give (the umask), not the
owner-only mode of ``tempfile.mkstemp``.

>>> import tempfile, pathlib
>>> from keras_priors import io
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> io.write_json(folder / "result.json", {"dice": 0.91}).name
'result.json'
>>> io.read_json(folder / "result.json")
{'dice': 0.91}
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_path", "jsonable", "read_json", "refuse_existing", "save_model",
           "save_nifti", "save_npy", "save_weights", "write_bytes", "write_json", "write_text"]


def _umask_mode():
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _double_suffix(name):
    """'.weights.h5', '.nii.gz', '.keras': what writers that look at the suffix need."""
    for suffix in (".weights.h5", ".nii.gz", ".tar.gz"):
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path` with the same suffix; on normal exit it is
    renamed onto `path` with umask permissions, on an exception it is removed.

    >>> with atomic_path("/tmp/model.keras") as tmp:   # doctest: +SKIP
    ...     model.save(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                               suffix=".tmp" + _double_suffix(path.name))
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path, data: bytes):
    """Write `data` to `path` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path, text: str):
    return write_bytes(path, text.encode())


def jsonable(obj):
    """`json.dumps(default=...)` for numpy scalars and arrays, tuples, sets and paths."""
    import numpy as np

    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (tuple, set, frozenset)):
        return list(obj)
    if isinstance(obj, (Path, np.dtype)):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def write_json(path, obj, indent=1):
    return write_text(path, json.dumps(obj, indent=indent, default=jsonable))


def read_json(path):
    with open(path) as f:
        return json.load(f)


def save_model(model, path):
    """`model.save(path)` (a `.keras` file) atomically."""
    with atomic_path(path) as tmp:
        model.save(tmp)
    return Path(path)


def save_weights(model, path):
    """`model.save_weights(path)` (a `.weights.h5` file) atomically."""
    with atomic_path(path) as tmp:
        os.remove(tmp)  # h5py refuses to open an existing empty file in some modes
        model.save_weights(tmp)
    return Path(path)


def save_npy(path, array):
    """One uncompressed `.npy` (memory-mappable with `np.load(mmap_mode="r")`) atomically."""
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
    return Path(path)


def save_nifti(image, path):
    """`nibabel.save(image, path)` atomically (the suffix picks .nii or .nii.gz)."""
    import nibabel as nib

    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return Path(path)


def refuse_existing(path, flag="--force"):
    """Raise FileExistsError naming `path` and the option that allows replacing it."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; pass {flag} to replace it "
                              "(nothing was written)")
