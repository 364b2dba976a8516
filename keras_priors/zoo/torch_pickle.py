"""Read a PyTorch `.pth` state dict into numpy arrays without importing torch.

Both serialisations of `torch.save` are understood: the zip archive (torch >= 1.6:
`<prefix>/data.pkl` plus one `<prefix>/data/<key>` file per storage) and the older
"legacy" stream (magic number, protocol, system info, the pickled object, the list of
storage keys, then each storage as an int64 element count followed by its raw bytes). Only
what a state dict needs is unpickled (tensors, parameters, `OrderedDict`); any other global
is refused, so reading a file never runs code from it.

>>> from keras_priors.zoo.torch_pickle import load_state_dict
>>> sd = load_state_dict("model.pth")  # doctest: +SKIP
>>> sd["_fc.weight"].shape  # doctest: +SKIP
(1000, 1280)
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import tarfile
import zipfile

import numpy as np

__all__ = ["load_state_dict", "STORAGE_DTYPES"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# Storage class name (as pickled by torch) -> numpy dtype. BFloat16 has no numpy dtype: it
# is read as uint16 and widened to float32 below.
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    """Stands in for `torch.<X>Storage` inside the pickle; only its name matters."""

    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class _Storage:
    """A flat typed buffer (numpy 1-D array) plus whether it holds bfloat16 bits."""

    def __init__(self, array, bfloat16=False):
        self.array = array
        self.bfloat16 = bfloat16


class _LazyTensor:
    """A tensor as pickled: a strided window on a storage whose bytes may come later."""

    def __init__(self, storage, storage_offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, storage_offset, size, stride

    def materialize(self):
        flat = self.storage.array
        if any(s == 0 for s in self.size):
            out = np.zeros(self.size, dtype=flat.dtype)
        else:
            view = np.lib.stride_tricks.as_strided(
                flat[self.offset:], shape=self.size,
                strides=tuple(s * flat.itemsize for s in self.stride), writeable=False,
            )
            out = np.array(view, copy=True, order="C")
        if self.storage.bfloat16:
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"tensor storage of unexpected type {type(storage)}")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    storage_offset = int(storage_offset)
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f"tensor size {size} and stride {stride} disagree")
    if all(n > 0 for n in size):
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if storage_offset < 0 or min(stride, default=0) < 0 or last >= storage.array.size:
            raise pickle.UnpicklingError(
                f"tensor (offset {storage_offset}, size {size}, stride {stride}) reaches past "
                f"its storage of {storage.array.size} elements"
            )
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    """Resolves torch's globals to the stand-ins above and storages through `load_storage`."""

    def __init__(self, file, load_storage):
        super().__init__(file)
        self._load_storage = load_storage
        self._cache = {}

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"global {module}.{name} is not part of a plain state dict; refusing to load it"
        )

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        key = str(key)
        if key not in self._cache:
            array = self._load_storage(key, storage_type.dtype, int(numel))
            self._cache[key] = _Storage(array, storage_type.name == "BFloat16Storage")
        storage = self._cache[key]
        view = pid[5] if len(pid) > 5 else None
        if view is not None:  # legacy storage view: (view_key, offset, view_size)
            _view_key, offset, view_size = view
            storage = _Storage(storage.array[offset:offset + view_size], storage.bfloat16)
        return storage


def _frombuffer(buf, dtype, numel, what):
    dtype = np.dtype(dtype)
    need = numel * dtype.itemsize
    if len(buf) < need:
        raise EOFError(f"{what}: {len(buf)} bytes where {need} were expected")
    return np.frombuffer(buf, dtype=dtype.newbyteorder("<"), count=numel).astype(dtype)


def _load_zip(path):
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkls = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if not pkls:
            raise pickle.UnpicklingError("zip archive without a <prefix>/data.pkl")
        prefix = pkls[0][: -len("data.pkl")]
        order_name = prefix + "byteorder"
        if order_name in names and zf.read(order_name).strip() not in (b"little", b""):
            raise pickle.UnpicklingError("big-endian checkpoints are not supported")

        def load_storage(key, dtype, numel):
            name = f"{prefix}data/{key}"
            if name not in names:
                raise pickle.UnpicklingError(f"storage {name} missing from the archive")
            return _frombuffer(zf.read(name), dtype, numel, name)

        return _Unpickler(io.BytesIO(zf.read(pkls[0])), load_storage).load()


def _load_legacy(path):
    with open(path, "rb") as f:
        data = f.read()
    stream = io.BytesIO(data)

    def plain_load():
        return _Unpickler(stream, lambda *a: None).load()

    if plain_load() != _LEGACY_MAGIC:
        raise pickle.UnpicklingError("not a torch checkpoint (bad magic number)")
    protocol = plain_load()
    if protocol != _LEGACY_PROTOCOL:
        raise pickle.UnpicklingError(f"unsupported legacy protocol version {protocol!r}")
    sys_info = plain_load()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise pickle.UnpicklingError("big-endian checkpoints are not supported")

    # The object is pickled before its storages, so remember what each key needs, build
    # placeholder arrays, and fill them once the raw bytes have been read.
    wanted = {}

    def defer_storage(key, dtype, numel):
        wanted[key] = np.empty(numel, dtype=dtype)
        return wanted[key]

    obj = _Unpickler(stream, defer_storage).load()
    keys = plain_load()
    if not isinstance(keys, list):
        raise pickle.UnpicklingError("storage key list missing")
    pos = stream.tell()
    for key in keys:
        if pos + 8 > len(data):
            raise EOFError(f"storage {key}: file ends before its size")
        (numel,) = struct.unpack_from("<q", data, pos)
        pos += 8
        target = wanted.get(str(key))
        if target is None:
            raise pickle.UnpicklingError(f"storage {key} is not used by the pickled object")
        if numel != target.size:
            raise pickle.UnpicklingError(
                f"storage {key} holds {numel} elements, the object expects {target.size}"
            )
        nbytes = numel * target.dtype.itemsize
        target[...] = _frombuffer(data[pos:pos + nbytes], target.dtype, numel, f"storage {key}")
        pos += nbytes
    missing = set(wanted) - {str(k) for k in keys}
    if missing:
        raise pickle.UnpicklingError(f"storages {sorted(missing)} missing from the file")
    return obj


def load_state_dict(path) -> dict:
    """The state dict saved in the torch checkpoint `path`, as `{key: numpy.ndarray}`.

    Tensors come back C-contiguous with their logical shape (whatever their strides in the
    file); scalars are 0-d arrays. Raises ValueError, naming the file, for a file that is
    missing, corrupt, truncated, or not a plain state dict.

    >>> sd = load_state_dict("resnet18.pth")  # doctest: +SKIP
    >>> {k: v.shape for k, v in sd.items()}  # doctest: +SKIP
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"torch checkpoint {path!r} does not exist")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head.startswith(b"PK") or zipfile.is_zipfile(path):
            obj = _load_zip(path)
        elif tarfile.is_tarfile(path):
            raise pickle.UnpicklingError(
                "the pre-2017 tar checkpoint format is not supported; re-save it with torch"
            )
        else:
            obj = _load_legacy(path)
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, struct.error, KeyError,
            TypeError, ValueError, IndexError, AttributeError, OverflowError) as err:
        raise ValueError(
            f"cannot read torch checkpoint {path!r}: it is corrupt, truncated or not a "
            f"supported state dict ({type(err).__name__}: {err})"
        ) from err
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, _LazyTensor) for v in obj.values()):
        raise ValueError(f"torch checkpoint {path!r} does not hold a state dict of tensors")
    return {str(k): v.materialize() for k, v in obj.items()}
