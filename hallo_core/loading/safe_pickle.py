"""Reading PyTorch `.pt` / `.pth` checkpoints without running pickled code.

The official Hallo3 (`mp_rank_00_model_states.pt`, `3d-vae.pt`) and Hallo2 (`net_g.pth`) weights are pickles inside
PyTorch's zip container. A pickle can name any function and ask for it to be called. This reader rebuilds only
tensors and plain containers:

* a short allow-list of globals resolves to real objects (tensor rebuild functions, `OrderedDict`, `torch.Size`,
  dtypes, storage types);
* any other class is replaced by an inert `OpaqueObject` subclass, so metadata such as an `argparse.Namespace` or a
  DeepSpeed config object loads as a record of its state without importing its module;
* a pickle that asks to *call* anything outside the allow-list (the way a malicious `__reduce__` runs a command) is
  refused with `UnsafeCheckpointError` before anything runs.

`torch.load(weights_only=True)` is not used because it refuses the DeepSpeed metadata the official files carry, and
allow-listing those classes for it would import and instantiate them.

Tensor data is memory-mapped from the file (copy-on-write, never written back), so reading a 30 GB checkpoint costs
no RAM until a tensor is used, and tensors can be streamed one at a time into a model.
"""

from __future__ import annotations

import mmap
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from typing import Any

import torch

from ..errors import ModelFileError, UnsafeCheckpointError

_LEGACY_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
}

_DTYPE_NAMES = {
    name: getattr(torch, name)
    for name in (
        "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
        "complex64", "complex128", "float8_e4m3fn", "float8_e5m2", "double", "float", "half", "long", "int", "short",
    )
    if hasattr(torch, name)
}


class OpaqueObject:
    """Inert stand-in for an instance of a class this reader does not import.

    Pickle's NEWOBJ/BUILD path creates it and stores the state; nothing of the original class runs. Calling the class
    (pickle's REDUCE path) is how a pickle runs arbitrary functions, so that raises instead.
    """

    pickled_module = "?"
    pickled_name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __init__(self, *args, **kwargs):
        raise UnsafeCheckpointError(
            f"checkpoint refused: its pickle asks to call {self.pickled_module}.{self.pickled_name}, which could run "
            "code; convert it to safetensors with a trusted tool or use the official file"
        )

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<opaque {self.pickled_module}.{self.pickled_name}>"


def _opaque_class(module: str, name: str) -> type:
    return type(name, (OpaqueObject,), {"pickled_module": module, "pickled_name": name, "__module__": __name__})


class _InertRecord:
    """Result of a known-harmless reconstructor (numpy scalar, path, date) kept as data, never rebuilt."""

    def __init__(self, kind: str, args: tuple):
        self.kind, self.args = kind, args

    def __repr__(self):
        return f"<record {self.kind}>"


def _inert(kind: str):
    def build(*args):
        return _InertRecord(kind, args)

    return build


def _reconstructor(cls, base, state=None):
    # copyreg._reconstructor(cls, object, None) is protocol 0/1's way to create an instance without __init__.
    if isinstance(cls, type) and issubclass(cls, OpaqueObject):
        obj = cls.__new__(cls)
        obj.state = state
        return obj
    raise UnsafeCheckpointError(
        f"checkpoint refused: its pickle reconstructs {getattr(cls, '__name__', cls)!r}; convert it to safetensors"
    )


class _StorageType:
    def __init__(self, dtype: torch.dtype | None):
        self.dtype = dtype


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    return storage.as_strided(tuple(size), tuple(stride), storage_offset)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, *unused):
    return storage.view(dtype).as_strided(tuple(size), tuple(stride), storage_offset)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
    return data


_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("builtins", "object"): object,
    ("numpy.core.multiarray", "scalar"): _inert("numpy scalar"),
    ("numpy._core.multiarray", "scalar"): _inert("numpy scalar"),
    ("numpy.core.multiarray", "_reconstruct"): _inert("numpy array"),
    ("numpy._core.multiarray", "_reconstruct"): _inert("numpy array"),
    ("numpy", "dtype"): _inert("numpy dtype"),
    ("numpy", "ndarray"): _opaque_class("numpy", "ndarray"),
    ("pathlib", "PosixPath"): _inert("path"),
    ("pathlib", "WindowsPath"): _inert("path"),
    ("pathlib", "PurePosixPath"): _inert("path"),
    ("datetime", "datetime"): _inert("datetime"),
    ("datetime", "date"): _inert("date"),
    ("datetime", "timedelta"): _inert("timedelta"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, storage_loader):
        super().__init__(file)
        self._load_storage = storage_loader

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and name in _LEGACY_STORAGE_DTYPES:
            return _StorageType(_LEGACY_STORAGE_DTYPES[name])
        if module == "torch" and name == "UntypedStorage":
            return _StorageType(None)
        if module == "torch" and name in _DTYPE_NAMES:
            return _DTYPE_NAMES[name]
        return _opaque_class(module, name)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafeCheckpointError(f"checkpoint refused: unknown persistent object {pid!r:.80}")
        _, storage_type, key, _location, numel = pid[:5]
        dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else None
        return self._load_storage(str(key), dtype or torch.uint8, int(numel))


def _stored_entry_offsets(path: str, archive: zipfile.ZipFile) -> dict[str, tuple[int, int]]:
    """Byte offset and size of every uncompressed entry's data, read from the zip local headers."""
    offsets = {}
    with open(path, "rb") as f:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                continue
            f.seek(info.header_offset)
            header = f.read(30)
            if header[:4] != b"PK\x03\x04":
                raise ModelFileError(f"{path}: damaged checkpoint (bad zip entry {info.filename}); download it again")
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            offsets[info.filename] = (info.header_offset + 30 + name_len + extra_len, info.file_size)
    return offsets


def load_torch_checkpoint(path: str | os.PathLike) -> Any:
    """Read a PyTorch zip checkpoint safely; tensors are memory-mapped views of the file.

    Raises `ModelFileError` for a missing, damaged or legacy-format file and `UnsafeCheckpointError` for a pickle
    that asks to run code.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"{path}: not a PyTorch zip checkpoint (legacy or damaged file); re-save it with torch>=1.6 "
            "or download it again"
        )
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFileError(f"{path}: damaged checkpoint ({exc}); download it again") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise ModelFileError(f"{path}: not a PyTorch checkpoint (no data.pkl); download it again")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() not in (b"", b"little"):
            raise ModelFileError(f"{path}: big-endian checkpoints are not supported")
        offsets = _stored_entry_offsets(path, archive)
        data_pkl = archive.read(pickles[0])

    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)

    storages: dict[str, torch.Tensor] = {}

    def load_storage(key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        if key not in storages:
            name = f"{prefix}data/{key}"
            if name not in offsets:
                raise ModelFileError(f"{path}: damaged checkpoint (tensor data {key} missing or compressed)")
            offset, size = offsets[name]
            raw = torch.frombuffer(mapped, dtype=torch.uint8, count=size, offset=offset) if size else \
                torch.empty(0, dtype=torch.uint8)
            storages[key] = raw
        raw = storages[key]
        itemsize = torch.empty((), dtype=dtype).element_size()
        if raw.numel() < numel * itemsize:
            raise ModelFileError(f"{path}: damaged checkpoint (tensor data {key} truncated); download it again")
        return raw[: numel * itemsize].view(dtype)

    import io

    try:
        return _RestrictedUnpickler(io.BytesIO(data_pkl), load_storage).load()
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise ModelFileError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc}); download it again") \
            from None
