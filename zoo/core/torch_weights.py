"""Read a PyTorch state dict (``torch.save`` of a dict of tensors) into numpy, without torch.

Pretrained weights are often published only as ``.pth`` files; this reader lets the zoo
use them on a machine with no PyTorch installed. It reads both container formats
``torch.save`` has written:

* the zip format (the default since torch 1.6): ``<archive>/data.pkl`` plus one record
  ``<archive>/data/<key>`` per storage;
* the legacy format (``_use_new_zipfile_serialization=False``, and every file saved before
  torch 1.6): a magic-number pickle, a protocol-version pickle, a system-info pickle, the
  object pickle, the list of storage keys, then each storage as an int64 element count
  followed by its raw bytes.

Every pickle is read by a restricted unpickler: the object pickle may rebuild tensors,
ordered dicts and plain containers, the legacy headers plain data only; any other global is
refused, so a weights file cannot run code. Tensor offsets, sizes and strides are checked
against their storage before a view is taken.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

# torch.serialization's constants for the legacy format.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001


def _dtype_table() -> dict[str, np.dtype]:
    table = {
        "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
        "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
        "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    }  # fmt: skip
    try:  # ml_dtypes ships with jax; bfloat16 has no numpy builtin
        import ml_dtypes

        table["BFloat16Storage"] = ml_dtypes.bfloat16
    except ImportError:  # pragma: no cover
        pass
    return {k: np.dtype(v) for k, v in table.items()}


STORAGE_DTYPES = _dtype_table()


class _StorageType:
    """Stands for ``torch.FloatStorage`` and friends in a pickle: only the dtype matters."""

    def __init__(self, name: str):
        self.name, self.dtype = name, STORAGE_DTYPES[name]


class _Storage:
    """A storage's bytes, filled in after the object pickle for the legacy format."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel, self.data = dtype, numel, None


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    def ints(x):
        return isinstance(x, (tuple, list)) and all(isinstance(v, int) and v >= 0 for v in x)

    # Everything here comes from the file: a negative offset, size or stride would make the
    # strided view read memory outside the storage, so such tensors are refused.
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"a tensor whose storage is a {type(storage).__name__}")
    if not (isinstance(storage_offset, int) and storage_offset >= 0 and ints(size) and ints(stride) and len(size) == len(stride)):
        raise pickle.UnpicklingError(f"a tensor with offset {storage_offset!r}, size {size!r}, stride {stride!r}")
    return _LazyTensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _LazyTensor:
    """A tensor whose storage bytes may arrive later (legacy format)."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def materialise(self) -> np.ndarray:
        s = self.storage
        if s.data is None or len(s.data) != s.numel * s.dtype.itemsize:
            raise ValueError(f"a storage of {s.numel} elements has {0 if s.data is None else len(s.data)} bytes")
        flat = np.frombuffer(s.data, dtype=s.dtype, count=s.numel)
        native = s.dtype.newbyteorder("=")
        # The last element the view touches (offset, size and stride are >= 0, checked when rebuilt).
        last = self.offset + sum((n - 1) * st for n, st in zip(self.size, self.stride))
        if all(self.size) and last >= s.numel:
            raise ValueError(f"a tensor of offset {self.offset}, size {self.size}, stride {self.stride} overruns its storage of {s.numel}")
        if not self.size:
            return np.array(flat[self.offset], dtype=native)  # a 0-d array, not a numpy scalar
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :] if all(self.size) else flat[:0], shape=self.size,
            strides=[st * item for st in self.stride], writeable=False,
        )  # fmt: skip
        return np.array(view, dtype=native, order="C")  # a C-order, native-endian copy that owns its memory


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, persistent_load: Callable):
        super().__init__(file, encoding="utf-8")
        self._persistent_load = persistent_load

    def find_class(self, module, name):
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and name.endswith("Storage"):
            raise pickle.UnpicklingError(f"unsupported tensor dtype: torch.{name}")
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise pickle.UnpicklingError(
            f"the weights file refers to {module}.{name}, which a state dict of tensors does not need; "
            "only tensors, ordered dicts and plain containers are read"
        )

    def persistent_load(self, pid):
        return self._persistent_load(pid)


class _DataUnpickler(pickle.Unpickler):
    """For the legacy format's header pickles and key list: plain data only, no globals."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"the weights file's header refers to {module}.{name}; it may hold plain data only")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("the weights file's header refers to a persistent object")


def _load_data(f):
    return _DataUnpickler(f, encoding="utf-8").load()


def _storage_dtype(storage_type) -> np.dtype:
    if isinstance(storage_type, _StorageType):
        return storage_type.dtype
    raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")


def _decode(x):
    return x.decode("ascii") if isinstance(x, bytes) else x


def _materialise(obj):
    if isinstance(obj, _LazyTensor):
        return obj.materialise()
    if isinstance(obj, dict):
        return type(obj)((k, _materialise(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v) for v in obj)
    return obj


def _load_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise ValueError(f"{path}: a zip file without data.pkl is not a torch.save file")
        prefix = pkl[0][: -len("data.pkl")]
        order = z.read(prefix + "byteorder").decode() if prefix + "byteorder" in names else "little"
        storages: dict[str, _Storage] = {}

        def persistent_load(pid):
            if not isinstance(pid, tuple) or len(pid) != 5:
                raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
            kind, storage_type, key, _location, numel = (_decode(pid[0]), *pid[1:5])
            if kind != "storage" or not isinstance(numel, int) or numel < 0:
                raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
            key = _decode(key)
            if key not in storages:
                dtype = _storage_dtype(storage_type).newbyteorder("<" if order == "little" else ">")
                s = _Storage(dtype, int(numel))
                s.data = z.read(f"{prefix}data/{key}")
                storages[key] = s
            return storages[key]

        obj = _Unpickler(io.BytesIO(z.read(pkl[0])), persistent_load).load()
    return _materialise(obj)


def _load_legacy(path: Path) -> Any:
    with open(path, "rb") as f:

        def header(what, expected):
            got = _load_data(f)
            if type(got) is not type(expected) or got != expected:
                raise ValueError(f"{path}: not a torch.save file ({what} {got!r}, expected {expected!r})")

        header("magic number", LEGACY_MAGIC_NUMBER)
        header("protocol version", LEGACY_PROTOCOL_VERSION)
        if not isinstance(_load_data(f), dict):
            raise ValueError(f"{path}: not a torch.save file (its system-info record is not a dict)")
        order = "<"  # torch's legacy writer stores counts and data little-endian, whatever sys_info says
        storages: dict[str, _Storage] = {}

        def persistent_load(pid):
            if not isinstance(pid, tuple) or len(pid) != 6:
                raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
            kind, storage_type, key, _location, numel, view = (_decode(pid[0]), *pid[1:6])
            if kind != "storage" or not isinstance(numel, int) or numel < 0:
                raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
            if view is not None:
                raise pickle.UnpicklingError("storage views (torch < 0.4 files) are not supported")
            key = _decode(key)
            if key not in storages:
                storages[key] = _Storage(_storage_dtype(storage_type).newbyteorder(order), int(numel))
            return storages[key]

        obj = _Unpickler(f, persistent_load).load()
        keys = _load_data(f)
        if not isinstance(keys, list) or sorted(map(_decode, keys)) != sorted(storages):
            raise ValueError(f"{path}: its storage list does not match the tensors' storages")
        for key in keys:
            s = storages[_decode(key)]
            (numel,) = struct.unpack(f"{order}q", f.read(8))
            if numel != s.numel:
                raise ValueError(f"{path}: storage {key} holds {numel} elements, the pickle says {s.numel}")
            s.data = f.read(numel * s.dtype.itemsize)
            if len(s.data) != numel * s.dtype.itemsize:
                raise ValueError(f"{path}: truncated file (storage {key})")
    return _materialise(obj)


def load_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A ``torch.save``-d state dict as ``{name: numpy array}``, torch not needed.

    Args:
      path: a ``.pth`` / ``.pt`` file written by ``torch.save(module.state_dict(), path)``,
        in the zip or the legacy format. A checkpoint dict holding the state dict under
        ``"state_dict"`` or ``"model"`` is unwrapped.
    Returns:
      An ordered ``{key: array}`` with each tensor's dtype, shape and values (C order copies).
    Raises:
      FileNotFoundError; ValueError for a file that is not a state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_torch_state_dict: no file at {path}")
    try:
        obj = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
    except (pickle.UnpicklingError, EOFError, KeyError, AttributeError, TypeError, IndexError, struct.error,
            zipfile.BadZipFile, UnicodeDecodeError) as err:  # fmt: skip
        raise ValueError(f"load_torch_state_dict: {path} is not a readable torch.save state dict: {err}") from err
    if isinstance(obj, dict) and not any(isinstance(v, np.ndarray) for v in obj.values()):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise ValueError(f"load_torch_state_dict: {path} holds {type(obj).__name__}, not a dict of tensors")
    return collections.OrderedDict((str(k), v) for k, v in obj.items())
