"""Lazy state dicts and streaming them into meta-initialised models.

A model is built on the meta device (no memory), then each parameter is read from the file, cast to the target dtype,
moved to the target device and put in place one at a time, so loading never holds two copies of the weights.

Safetensors tensors are read with plain file reads into fresh buffers rather than through the safetensors library:
its tensors are views of a memory map, and copying them out makes every page of the file resident in the process as
well, doubling peak memory while loading (measured: 2.0x the model size; 1.0x with reads). The header is parsed
here (8-byte length + JSON); files are still written and validated with the format's own rules.
`.pt` files are memory-mapped by `safe_pickle` and need no copy when no cast is needed.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from ..errors import ModelFileError
from .safe_pickle import load_torch_checkpoint


class LazyStateDict(Mapping[str, torch.Tensor]):
    """Read-only name -> tensor mapping over a safetensors or `.pt` file; tensors are read when asked for.

    `subtree` names the entry of a pickled checkpoint that holds the state dict (`module` in SAT containers); a tuple
    takes the first entry present, or the checkpoint itself when it is a flat state dict."""

    def __init__(self, path: str | os.PathLike, subtree: str | tuple[str, ...] | None = None):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise ModelFileError(f"model file not found: {self.path}")
        self.metadata: dict[str, str] = {}
        if self.path.endswith(".safetensors"):
            self._header, self._data_start = _read_safetensors_header(self.path)
            self.metadata = self._header.pop("__metadata__", None) or {}
            self._names = list(self._header)
            self._tensors = None
        else:
            content = load_torch_checkpoint(self.path)
            if isinstance(subtree, tuple):
                if isinstance(content, Mapping):
                    content = next((content[k] for k in subtree if isinstance(content.get(k), Mapping)), content)
            elif subtree is not None:
                if not isinstance(content, Mapping) or subtree not in content:
                    raise ModelFileError(f"{self.path}: expected a '{subtree}' entry in the checkpoint")
                content = content[subtree]
            if not isinstance(content, Mapping):
                raise ModelFileError(f"{self.path}: the checkpoint does not hold a state dict")
            self._tensors = {k: v for k, v in content.items() if isinstance(v, torch.Tensor)}
            self._names = list(self._tensors)
            self._file = None

    def __getitem__(self, name: str) -> torch.Tensor:
        if self._tensors is not None:
            return self._tensors[name]
        entry = self._header[name]
        start, end = entry["data_offsets"]
        tensor = torch.empty(entry["shape"], dtype=_SAFETENSORS_DTYPES[entry["dtype"]])
        buffer = tensor.reshape(-1).view(torch.uint8).numpy() if tensor.numel() else None
        if buffer is not None and buffer.nbytes != end - start:
            raise ModelFileError(f"{self.path}: tensor '{name}' has a damaged header entry; download the file again")
        with open(self.path, "rb") as f:
            f.seek(self._data_start + start)
            if buffer is not None and f.readinto(buffer) != buffer.nbytes:
                raise ModelFileError(f"{self.path} is truncated; download it again")
        return tensor

    def shape(self, name: str) -> tuple[int, ...]:
        if self._tensors is not None:
            return tuple(self._tensors[name].shape)
        return tuple(self._header[name]["shape"])

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name) -> bool:
        return name in (self._tensors if self._tensors is not None else self._header)


class MergedStateDict(Mapping[str, torch.Tensor]):
    """Several lazy state dicts (the shards of a sharded checkpoint) seen as one."""

    def __init__(self, parts: list[LazyStateDict]):
        self.parts = parts
        self.path = os.path.dirname(parts[0].path) if parts else ""
        self.metadata = parts[0].metadata if parts else {}
        self._owner = {name: part for part in parts for name in part}

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._owner[name][name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._owner[name].shape(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._owner)

    def __len__(self) -> int:
        return len(self._owner)


def open_diffusers_weights(folder: str | os.PathLike, name: str = "diffusion_pytorch_model"
                           ) -> LazyStateDict | MergedStateDict:
    """The weights of a diffusers model folder: `<name>.safetensors`, its sharded index, or `<name>.bin` (read by the
    restricted unpickler)."""
    folder = os.fspath(folder)
    single = os.path.join(folder, f"{name}.safetensors")
    index = single + ".index.json"
    if os.path.isfile(single):
        return LazyStateDict(single)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelFileError(f"{index}: unreadable shard index ({exc}); download it again") from None
        return MergedStateDict([LazyStateDict(os.path.join(folder, shard)) for shard in shards])
    if os.path.isfile(os.path.join(folder, f"{name}.bin")):
        return LazyStateDict(os.path.join(folder, f"{name}.bin"))
    raise ModelFileError(f"{folder}: {name}.safetensors is missing next to config.json; download it again")


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


def _read_safetensors_header(path: str) -> tuple[dict, int]:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        length = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if not 2 <= length <= min(size - 8, 100_000_000):
            raise ModelFileError(f"{path}: not a readable safetensors file (bad header); download it again")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ModelFileError(f"{path}: not a readable safetensors file (bad header); download it again") from None
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or entry.get("dtype") not in _SAFETENSORS_DTYPES:
            raise ModelFileError(f"{path}: tensor '{name}' has an unsupported dtype; convert the file again")
        if entry["data_offsets"][1] + 8 + length > size:
            raise ModelFileError(f"{path} is truncated; download it again")
    return header, 8 + length


def build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    """Construct a module without allocating its weights."""
    with torch.device("meta"):
        return factory()


def materialize(
    model: nn.Module,
    tensors: Iterable[tuple[str, torch.Tensor]],
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    source: str = "checkpoint",
    dtype_for: Callable[[str, tuple[int, ...]], torch.dtype] | None = None,
) -> nn.Module:
    """Put every (name, tensor) into a meta-initialised model; refuse unknown, misshaped or missing weights.

    Floating tensors are cast to `dtype`, or to `dtype_for(name, shape)` when given (e.g. fp8 storage of matrices).
    """
    expected = dict(model.named_parameters())
    expected.update(dict(model.named_buffers()))
    seen = set()
    for name, tensor in tensors:
        if name not in expected:
            raise ModelFileError(f"{source}: unexpected weight '{name}'; is this the right model file?")
        target = expected[name]
        if tuple(tensor.shape) != tuple(target.shape):
            raise ModelFileError(
                f"{source}: weight '{name}' has shape {tuple(tensor.shape)}, the model expects {tuple(target.shape)}; "
                "the file belongs to a different model or version"
            )
        if not tensor.is_floating_point():
            cast = tensor.dtype
        else:
            cast = dtype_for(name, tuple(tensor.shape)) if dtype_for is not None else dtype
        value = tensor.to(device=device, dtype=cast).contiguous()
        if value.data_ptr() % 64:
            # Matmul kernels pick code paths by alignment; a fresh (64-byte aligned) allocation keeps results
            # bit-identical whatever layout the weights came from (safetensors buffers, slices of fused QKV).
            value = value.clone()
        # Otherwise a `.pt` tensor that needs no cast stays a view of the memory-mapped file: no copy at all.
        _set_tensor(model, name, value, is_parameter=isinstance(target, nn.Parameter))
        seen.add(name)
    missing = [name for name in expected if name not in seen]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ModelFileError(f"{source}: weights missing ({shown}); the file is incomplete or for another model")
    return model


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor, is_parameter: bool) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if is_parameter:
        module._parameters[attr] = nn.Parameter(value, requires_grad=False)
    else:
        module._buffers[attr] = value


def read_json_metadata(state: LazyStateDict, key: str) -> dict | None:
    text = state.metadata.get(key)
    return json.loads(text) if text else None
