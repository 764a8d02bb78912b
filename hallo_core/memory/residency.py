"""Which model is on the compute device when, outside ComfyUI (the memory presets of runtime/options.py).

A backbone's phases use different large models (Hallo3: T5 9.5 GB, reference network 11.3 GB, transformer 17.9 GB,
VAE; bf16). The official code keeps them all on the GPU. With `keep_resident` (preset `full`) every model stays on
the device after its first use; otherwise (`balanced`, `low`) a model is on the device only inside `use(name)` and goes
back to host memory afterwards, so the peak is the largest phase, not the sum; models used once per video are dropped
with `release`. What `low` adds (fp8 storage, block streaming) is done by the loaders.

ComfyUI replaces this class with one that asks ComfyUI's model management to load and evict (nodes/).
"""

from __future__ import annotations

import contextlib
import gc
from typing import Any, Callable, Iterator

import torch


class LocalModels:
    def __init__(self, loaders: dict[str, Callable[[torch.device], Any]], device: str | torch.device = "cpu",
                 keep_resident: bool = False, offload_device: str | torch.device = "cpu"):
        self.loaders = loaders
        self.device = torch.device(device)
        self.offload_device = torch.device(offload_device)
        self.keep_resident = keep_resident
        self._models: dict[str, Any] = {}
        self.resident: set[str] = set()  # models on the compute device right now
        self.load_counts: dict[str, int] = {}
        self.residency_log: list[frozenset[str]] = []  # the models resident each time one was brought in

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[Any]:
        """The model `name` on the compute device for the duration of the block."""
        model = self._models.get(name)
        if model is None:
            model = self.loaders[name](self.device)
            self._models[name] = model
            self.load_counts[name] = self.load_counts.get(name, 0) + 1
        _move(model, self.device)
        self.resident.add(name)
        self.residency_log.append(frozenset(self.resident))
        try:
            yield model
        finally:
            if not self.keep_resident:
                _move(model, self.offload_device)
                self.resident.discard(name)
                _empty_cache(self.device)

    def release(self, name: str) -> None:
        """Forget a model entirely (it is loaded again from disk if used later)."""
        if self._models.pop(name, None) is not None:
            self.resident.discard(name)
            gc.collect()
            _empty_cache(self.device)

    def loaded(self, name: str) -> bool:
        return name in self._models


def _move(model: Any, device: torch.device) -> None:
    streamer = getattr(model, "block_streamer", None)
    if streamer is not None:  # the streamer places the blocks itself; move only the rest
        for child_name, child in model.named_children():
            if child_name != "transformer_blocks":
                child.to(device)
    elif callable(getattr(model, "to", None)):  # torch modules and wrappers; ONNX sessions stay where they are
        model.to(device)


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
