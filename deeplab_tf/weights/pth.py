"""PyTorch checkpoints (``.pth``) read without torch and without running their pickle's code.

A ``.pth`` file is a pickle, and a pickle is a program: unpickling calls whatever global it
names. This reader unpickles with a :class:`pickle.Unpickler` whose ``find_class`` allows only
the names a tensor state dict needs (``torch._utils._rebuild_tensor_v2`` and its siblings, the
typed storage classes, ``collections.OrderedDict``) and maps each to a NumPy stand-in; any
other global (``os.system``, ``builtins.eval``, ``numpy``'s reconstructors...) is refused with
:class:`UnsafePickleError` before anything is called.

Both of PyTorch's formats are read:

* the zip format (torch >= 1.6): ``<root>/data.pkl`` whose persistent ids
  ``("storage", StorageType, key, location, numel)`` name raw storages at ``<root>/data/<key>``
  (little-endian unless ``<root>/byteorder`` says ``big``);
* the legacy format (torch < 1.6, or ``_use_new_zipfile_serialization=False``): a magic number,
  a protocol version and a system-info pickle, then the object pickle (persistent ids
  ``("storage", StorageType, key, location, numel, view_metadata)``), a pickled list of storage
  keys, and each storage as an int64 element count followed by its bytes.

bfloat16 storages are returned as float32 (exact: bfloat16 is the top half of a float32).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np

#: torch's typed storage classes -> NumPy dtype (bfloat16: raw uint16, widened to float32)
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}  # fmt: skip
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_REBUILDERS = ("_rebuild_tensor_v2", "_rebuild_tensor", "_rebuild_parameter")


class UnsafePickleError(ValueError):
    """The checkpoint's pickle names a global other than the tensor-rebuild functions and
    storage types: it would run code, so it is refused unread."""


class _Storage:
    """Stand-in for a torch typed storage class (the unpickler hands it to persistent_load)."""

    def __init__(self, name):
        self.name = name
        dtype = STORAGE_DTYPES[name]
        self.raw = np.dtype(np.uint16 if dtype == "bfloat16" else dtype)
        self.bfloat16 = dtype == "bfloat16"


def _tensor(storage, offset, size, stride, *_ignored):
    """``torch._utils._rebuild_tensor(_v2)`` in NumPy: a copy of the strided view (deferred
    for a legacy-format storage, whose bytes follow the object pickle)."""
    if isinstance(storage, _LazyStorage):
        return _LazyTensor((storage, offset, size, stride))
    return _strided_copy(storage, offset, size, stride)


def _strided_copy(data, offset, size, stride):
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    offset = int(offset)
    count = 1 + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else 0
    if offset < 0 or offset + count > data.size:
        raise ValueError(
            f"a tensor of size {size}, stride {stride} at offset {offset} reaches beyond its "
            f"storage of {data.size} elements: the file is corrupt"
        )
    view = np.lib.stride_tricks.as_strided(
        data[offset:], shape=size, strides=tuple(s * data.itemsize for s in stride),
        writeable=False,
    )  # fmt: skip
    return np.array(view)


def _parameter(data, *_ignored):
    """``torch._utils._rebuild_parameter``: a Parameter is its tensor."""
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, source, load_storage):
        super().__init__(file)
        self.source = source
        self.load_storage = load_storage

    def find_class(self, module, name):
        if module == "torch._utils" and name in _REBUILDERS:
            return _parameter if name == "_rebuild_parameter" else _tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return _Storage(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise UnsafePickleError(
            f"{self.source}: refusing to load: its pickle names the global {module}.{name}, "
            "which is not a tensor-rebuild function or storage type. A pickle can run any "
            "code it names, so nothing else is allowed; if you trust the file, convert it to "
            "a plain state dict with torch and save it again."
        )

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise ValueError(f"{self.source}: unknown persistent id {pid!r:.80}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _Storage):
            raise ValueError(f"{self.source}: storage {key} has no supported storage type")
        return self.load_storage(storage_type, key, int(pid[4]), pid[5] if len(pid) > 5 else None)


def _finish(storage_type, raw: bytes, numel: int, byteorder: str, source: str, key: str):
    dtype = storage_type.raw.newbyteorder("<" if byteorder == "little" else ">")
    if len(raw) < numel * dtype.itemsize:
        raise ValueError(
            f"{source}: storage {key} holds {len(raw)} bytes, expected {numel * dtype.itemsize} "
            f"({numel} {storage_type.name} elements): the file is truncated or corrupt"
        )
    data = np.frombuffer(raw, dtype=dtype, count=numel).astype(dtype.newbyteorder("="))
    if storage_type.bfloat16:
        data = (data.astype(np.uint32) << 16).view(np.float32)
    return data


def read_pth(path) -> dict:
    """Reads a PyTorch checkpoint's state dict as NumPy arrays, without torch.

    Args:
        path: a ``.pth`` / ``.pt`` file (a state dict, or a checkpoint dict whose
            ``"state_dict"`` or ``"model"`` entry is one).

    Returns:
        ``{parameter name: numpy array}`` (other entries of the state dict are dropped).

    Raises:
        FileNotFoundError: no such file.
        UnsafePickleError: the pickle names a global other than the allowed ones.
        ValueError: a truncated, corrupt or unknown file (the message names it).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such PyTorch checkpoint. Received: path={path!r}")
    if zipfile.is_zipfile(path):
        obj = _read_zip(path)
    else:
        obj = _read_legacy(path)
    return _state_dict(obj, path)


def _read_zip(path):
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
            if len(pkl) != 1:
                raise ValueError(
                    f"{path}: a zip without one <root>/data.pkl is not a PyTorch checkpoint "
                    f"(files: {', '.join(names[:8])})"
                )
            root = pkl[0].split("/")[0]
            byteorder = "little"
            if f"{root}/byteorder" in names:
                byteorder = z.read(f"{root}/byteorder").decode("ascii").strip() or "little"
            cache = {}

            def load_storage(storage_type, key, numel, _view):
                if key not in cache:
                    name = f"{root}/data/{key}"
                    if name not in names:
                        raise ValueError(f"{path}: storage {key} is missing ({name})")
                    cache[key] = _finish(storage_type, z.read(name), numel, byteorder, path, key)
                return cache[key]

            data = z.read(pkl[0])
            return _Unpickler(io.BytesIO(data), path, load_storage).load()
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile, struct.error) as err:
        raise ValueError(f"{path}: truncated or corrupt PyTorch zip checkpoint ({err})") from None
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path}: corrupt pickle in the checkpoint ({err})") from None


def _read_legacy(path):
    with open(path, "rb") as f:
        try:
            header = _PlainUnpickler(f, path)  # plain values only: ints, a dict of ints/bools
            magic = header.load()
            if magic != _LEGACY_MAGIC:
                raise ValueError(
                    f"{path}: not a PyTorch checkpoint (neither a zip nor the legacy format)"
                )
            header.load()  # protocol version
            sys_info = header.load()
            little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
            byteorder = "little" if little else "big"
            found = {}

            def load_storage(storage_type, key, numel, view):
                if view is not None:
                    raise ValueError(f"{path}: storage views (torch < 0.4 files) are not read")
                if key not in found:
                    found[key] = [storage_type, numel, None]
                return _LazyStorage(found, key)

            obj = _Unpickler(f, path, load_storage).load()
            keys = _PlainUnpickler(f, path).load()
            for key in keys:
                if key not in found:
                    raise ValueError(f"{path}: storage {key} is listed but never used")
                storage_type, _, _ = found[key]
                (numel,) = struct.unpack("<q", f.read(8))
                raw = f.read(numel * storage_type.raw.itemsize)
                found[key][2] = _finish(storage_type, raw, numel, byteorder, path, key)
        except (EOFError, struct.error) as err:
            raise ValueError(f"{path}: truncated PyTorch checkpoint ({err})") from None
        except pickle.UnpicklingError as err:
            raise ValueError(f"{path}: corrupt pickle in the checkpoint ({err})") from None
    return _resolve(obj)


class _PlainUnpickler(pickle.Unpickler):
    """For the legacy format's header and key-list pickles: no global at all."""

    def __init__(self, file, source):
        super().__init__(file)
        self.source = source

    def find_class(self, module, name):
        raise UnsafePickleError(
            f"{self.source}: refusing to load: its header pickle names the global {module}.{name}"
        )


class _LazyStorage:
    """A legacy-format storage whose bytes come after the object pickle."""

    def __init__(self, table, key):
        self.table, self.key = table, key


class _LazyTensor:
    def __init__(self, args):
        self.args = args


def _resolve(obj):
    """Replaces the legacy format's deferred tensors by arrays, recursively."""
    if isinstance(obj, _LazyTensor):
        storage, offset, size, stride = obj.args
        return _strided_copy(storage.table[storage.key][2], offset, size, stride)
    if isinstance(obj, dict):
        return type(obj)((k, _resolve(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v) for v in obj)
    return obj


def _state_dict(obj, path):
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, dict) and any(isinstance(v, np.ndarray) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
    arrays = {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
    if not arrays:
        raise ValueError(f"{path}: the checkpoint holds no tensors")
    return arrays
