"""Write a safetensors file one tensor at a time.

`safetensors.torch.save_file` needs every tensor in memory at once; converting the 29 GB official checkpoint (or
casting it to fp8) would then need that much RAM. The format is a little-endian u64 header length, a JSON header of
dtype/shape/offsets, and the raw bytes in header order, so it can be streamed: the header is computed from shapes,
then each tensor is produced, written and dropped. Files are read back with the safetensors library.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Callable, Iterable

import torch

_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}


def to_storage(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`tensor` cast to the dtype it is stored in; fp8 saturates at its largest finite value (a plain cast of a
    larger value gives NaN)."""
    if dtype == torch.float8_e4m3fn:
        finite = torch.finfo(torch.float8_e4m3fn).max
        tensor = tensor.float().clamp(-finite, finite)
    return tensor.to(dtype)


def write_safetensors(
    path: str | os.PathLike,
    entries: Iterable[tuple[str, tuple[int, ...], torch.dtype, Callable[[], torch.Tensor]]],
    metadata: dict[str, str] | None = None,
) -> None:
    """Stream `(name, shape, dtype, produce)` entries into `path`; `produce()` is called once, in order.

    The file is written under a temporary name and renamed, so an interrupted conversion leaves no partial file.
    """
    entries = list(entries)
    header: dict = {"__metadata__": dict(metadata or {})}
    offset = 0
    for name, shape, dtype, _ in entries:
        size = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # keep tensor data 8-byte aligned
    temporary = os.fspath(path) + ".partial"
    with open(temporary, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for name, shape, dtype, produce in entries:
            tensor = produce()
            if tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
                raise ValueError(f"{name}: produced {tuple(tensor.shape)} {tensor.dtype}, declared {shape} {dtype}")
            data = tensor.detach().to("cpu").contiguous().reshape(-1)
            f.write(memoryview(data.view(torch.uint8).numpy()) if data.numel() else b"")
    os.replace(temporary, path)
