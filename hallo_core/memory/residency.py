"""Which model is on the compute device when, outside ComfyUI (the memory presets of runtime/options.py).

A backbone's phases use different large models (Hallo3: T5 9.5 GB, reference network 11.3 GB, transformer 17.9 GB,
VAE; bf16). The official code keeps them all on the GPU. With `keep_resident` (preset `full`) every model stays on
the device after its first use. Otherwise a model is brought in for `use(name)`; with `keep_while_fits` (`balanced`)
it stays afterwards for as long as the phases that follow still fit beside it (decided from free device memory and
each phase's working memory), and otherwise (`low`, `12gb`) it leaves at once, so the peak is the largest phase,
not the sum. Models used once per video are dropped with `release`. What `low` adds (fp8 storage, block streaming)
is done by the loaders.

Moving costs little: the first time a model leaves the device its weights are copied once into one page-locked host
buffer (memory/pinned.py); from then on leaving is free (the parameters point back at the host copy: inference never
changes weights) and coming back is one asynchronous copy from locked memory. Frames are those of `full`: the same
weights, only their place differs.

ComfyUI replaces this class with one that asks ComfyUI's model management to load and evict (nodes/).
"""

from __future__ import annotations

import contextlib
import gc
from typing import Any, Callable, Iterator

import torch

from .pinned import ModuleHost, module_bytes

MARGIN = 1 << 30  # bytes kept free beyond a phase's estimate (allocator fragmentation, cuDNN/cuBLAS workspaces)


class LocalModels:
    def __init__(self, loaders: dict[str, Callable[[torch.device], Any]], device: str | torch.device = "cpu",
                 keep_resident: bool = False, offload_device: str | torch.device = "cpu",
                 keep_while_fits: bool = False, working_memory: dict[str, int] | None = None,
                 free_memory: Callable[[], int] | None = None):
        self.loaders = loaders
        self.device = torch.device(device)
        self.offload_device = torch.device(offload_device)
        self.keep_resident = keep_resident
        self.keep_while_fits = keep_while_fits
        self.working_memory = working_memory or {}  # bytes a phase needs beyond its model's weights
        self.free_memory = free_memory or (lambda: _free_device_memory(self.device))
        self._models: dict[str, Any] = {}
        self._hosts: dict[str, ModuleHost] = {}
        self._in_use: dict[str, int] = {}
        self._idle_order: list[str] = []  # resident models not in use, least recently used first
        self.resident: set[str] = set()  # models on the compute device right now
        self.load_counts: dict[str, int] = {}
        self.evictions: list[str] = []
        self.residency_log: list[frozenset[str]] = []  # the models resident each time one was brought in

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[Any]:
        """The model `name` on the compute device for the duration of the block."""
        model = self._models.get(name)
        if model is None:
            if self.keep_while_fits:
                self._make_room(name)
            model = self.loaders[name](self.device)
            self._models[name] = model
            self.load_counts[name] = self.load_counts.get(name, 0) + 1
        elif name not in self.resident:
            if self.keep_while_fits:
                self._make_room(name)
            self._onload(name, model)
        self.resident.add(name)
        if name in self._idle_order:
            self._idle_order.remove(name)
        self._in_use[name] = self._in_use.get(name, 0) + 1
        self.residency_log.append(frozenset(self.resident))
        try:
            yield model
        finally:
            self._in_use[name] -= 1
            if self._in_use[name] == 0:
                if self.keep_resident or self.keep_while_fits:
                    self._idle_order.append(name)
                else:
                    self._offload(name)

    def release(self, name: str) -> None:
        """Forget a model entirely (it is loaded again from disk if used later)."""
        if self._models.pop(name, None) is not None:
            self.resident.discard(name)
            self._hosts.pop(name, None)
            if name in self._idle_order:
                self._idle_order.remove(name)
            gc.collect()
            _empty_cache(self.device)

    def loaded(self, name: str) -> bool:
        return name in self._models

    # --- moving --------------------------------------------------------------------------------------------------
    def _make_room(self, name: str) -> None:
        """Evict idle models, least recently used first, until `name`'s phase fits in free device memory."""
        model = self._models.get(name)
        if model is None:  # not loaded yet: its loader's estimate
            weights = self.working_memory.get(name + ":weights", 0)
        else:
            weights = _weights_bytes(model, self._hosts.get(name))
        need = weights + self.working_memory.get(name, 0) + MARGIN
        while self._idle_order and self.free_memory() < need:
            victim = self._idle_order.pop(0)
            self._offload(victim)
            self.evictions.append(victim)

    def _offload(self, name: str) -> None:
        self.resident.discard(name)
        if self.device == self.offload_device:
            return  # on the CPU there is nowhere else to be
        model = self._models[name]
        module = _torch_module(model)
        if module is None:
            _move_other(model, self.offload_device)
            return
        host = self._hosts.get(name)
        if host is None:  # the first time: one copy into locked host memory
            host = self._hosts[name] = ModuleHost(module)
        host.offload()
        _set_device(model, self.offload_device)
        _empty_cache(self.device)

    def _onload(self, name: str, model: Any) -> None:
        if self.device == self.offload_device:
            return
        module = _torch_module(model)
        host = self._hosts.get(name)
        if module is None or host is None:
            _move_other(model, self.device)
            return
        host.onload(self.device)
        _set_device(model, self.device)


def _torch_module(model: Any) -> torch.nn.Module | None:
    """The nn.Module a model object is (or wraps in `.model`, e.g. the T5 encoder); None for ONNX sessions."""
    if isinstance(model, torch.nn.Module):
        return model
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, torch.nn.Module) else None


def _set_device(model: Any, device: torch.device) -> None:
    """Wrappers that place their inputs on `.device` (the T5 encoder) follow their weights."""
    if not isinstance(model, torch.nn.Module) and hasattr(model, "device"):
        model.device = device


def _move_other(model: Any, device: torch.device) -> None:
    if callable(getattr(model, "to", None)):  # wrappers without a torch module; ONNX sessions stay where they are
        model.to(device)


def _weights_bytes(model: Any, host: ModuleHost | None) -> int:
    if host is not None:
        return host.nbytes
    module = _torch_module(model)
    return module_bytes(module) if module is not None else 0


def _free_device_memory(device: torch.device) -> int:
    """Free device memory including what the caching allocator holds unused; 0 on a CPU (nothing to keep for)."""
    if device.type != "cuda":
        return 0
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
