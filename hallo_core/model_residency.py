"""Which model is on the compute device when: load on first use, and keep only the running phase's model resident.

Hallo3's phases use different large models (T5 9.5 GB, reference network 11.3 GB, transformer 17.9 GB, VAE; bf16).
The official code keeps them all on the GPU (~40 GB of weights). Here:

* `full`: every model stays on the device after its first use (fastest when it fits);
* `balanced`: a model is on the device only inside `use(name)`; afterwards it goes back to host memory, so the peak
  is the largest phase, not the sum. Models used once per video (the reference network) are dropped after use.

ComfyUI replaces this class with one that asks ComfyUI's model management to load and evict (nodes/).
"""

from __future__ import annotations

import contextlib
import gc
from typing import Any, Callable, Iterator

import torch

RESIDENCY_PRESETS = ("full", "balanced")


class LocalModels:
    def __init__(self, loaders: dict[str, Callable[[torch.device], Any]], device: str | torch.device = "cpu",
                 residency: str = "balanced"):
        if residency not in RESIDENCY_PRESETS:
            raise ValueError(f"residency must be one of {RESIDENCY_PRESETS}")
        self.loaders = loaders
        self.device = torch.device(device)
        self.residency = residency
        self._models: dict[str, Any] = {}
        self.load_counts: dict[str, int] = {}

    def _offload_device(self) -> torch.device:
        return torch.device("cpu")

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[Any]:
        """The model `name` on the compute device for the duration of the block."""
        model = self._models.get(name)
        if model is None:
            model = self.loaders[name](self.device)
            self._models[name] = model
            self.load_counts[name] = self.load_counts.get(name, 0) + 1
        _move(model, self.device)
        try:
            yield model
        finally:
            if self.residency == "balanced" and self.device.type != "cpu":
                _move(model, self._offload_device())
                _empty_cache(self.device)

    def release(self, name: str) -> None:
        """Forget a model entirely (it is loaded again from disk if used later)."""
        if self._models.pop(name, None) is not None:
            gc.collect()
            _empty_cache(self.device)

    def loaded(self, name: str) -> bool:
        return name in self._models


def _move(model: Any, device: torch.device) -> None:
    if callable(getattr(model, "to", None)):  # torch modules and wrappers; ONNX sessions stay where they are
        model.to(device)


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
