"""Host copies of a module's weights in one page-locked buffer: moving a model costs one fast copy in, nothing out.

PyTorch's `pin_memory()` rounds every allocation up to a power of two (its caching host allocator), which would cost
up to twice a model's size in locked host memory. Here all tensors of a module (or of one block) share one exactly
sized buffer, page-locked with `cudaHostRegister` on CUDA machines (what torch's own checkpoint stager does). Weights
never change during inference, so a model leaves the GPU by pointing its parameters back at these host views (no
copy) and comes back with non-blocking copies from locked memory, ordered on the current stream before the kernels
that use them (no host synchronisation).
"""

from __future__ import annotations

import warnings
import weakref

import torch
from torch import nn

ALIGN = 256  # bytes: every view starts aligned for any dtype and for DMA


def _register(buffer: torch.Tensor) -> bool:
    """Page-lock a CPU buffer for CUDA copies; False (with a warning) where the system refuses (memlock limits)."""
    if not torch.cuda.is_available() or buffer.numel() == 0:
        return False
    cudart = torch.cuda.cudart()
    status = int(cudart.cudaHostRegister(buffer.data_ptr(), buffer.numel(), 1))  # 1: cudaHostRegisterPortable
    if status != 0:
        warnings.warn(f"could not page-lock {buffer.numel() / 2**30:.1f} GB of host memory (cudaError {status}); "
                      "model copies stay correct but slower (raise the memlock limit)", stacklevel=3)
        return False
    weakref.finalize(buffer, cudart.cudaHostUnregister, buffer.data_ptr())
    return True


def _module_tensors(module: nn.Module):
    """(owner, kind, name, tensor) of every parameter and buffer, except streamed blocks' parameters (their streamer
    owns them; their few buffers, e.g. fp8 scales, move with the model), each shared tensor once."""
    seen = set()
    stack = [(module, False)]
    while stack:
        owner, streamed = stack.pop()
        streamed = streamed or getattr(owner, "_hallo_streamed", False)
        kinds = [("buffer", owner._buffers)] if streamed else [("param", owner._parameters), ("buffer", owner._buffers)]
        for kind, tensors in kinds:
            for name, tensor in tensors.items():
                if tensor is not None and id(tensor) not in seen:
                    seen.add(id(tensor))
                    yield owner, kind, name, tensor
        stack.extend((child, streamed) for child in owner._modules.values() if child is not None)


class HostCopy:
    """One flat (page-locked where possible) host buffer holding copies of the given tensors, as typed views."""

    def __init__(self, tensors: list[torch.Tensor], pin: bool | None = None):
        offsets, total = [], 0
        for tensor in tensors:
            offsets.append(total)
            total += -(-tensor.numel() * tensor.element_size() // ALIGN) * ALIGN
        self.buffer = torch.empty(total, dtype=torch.uint8)
        self.views = []
        for tensor, offset in zip(tensors, offsets):
            size = tensor.numel() * tensor.element_size()
            view = self.buffer[offset:offset + size].view(tensor.dtype).view(tensor.shape)
            view.copy_(tensor.detach())
            self.views.append(view)
        pin = torch.cuda.is_available() if pin is None else pin
        self.pinned = _register(self.buffer) if pin else False

    @property
    def nbytes(self) -> int:
        return self.buffer.numel()


class ModuleHost:
    """A module's weights kept on the host once; `offload()` points the module at them, `onload(device)` copies them
    in. Streamed blocks are left to their streamer."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.slots = [(owner, kind, name) for owner, kind, name, _ in _module_tensors(module)]
        self.copy = HostCopy([getattr(owner, name) for owner, _, name in self.slots])

    @property
    def nbytes(self) -> int:
        return self.copy.nbytes

    def _assign(self, owner: nn.Module, kind: str, name: str, value: torch.Tensor) -> None:
        if kind == "param":
            owner._parameters[name].data = value
        else:
            owner._buffers[name] = value

    def offload(self) -> None:
        for (owner, kind, name), view in zip(self.slots, self.copy.views):
            self._assign(owner, kind, name, view)

    def onload(self, device: torch.device) -> None:
        non_blocking = self.copy.pinned  # from locked memory: asynchronous, ordered on the current stream
        for (owner, kind, name), view in zip(self.slots, self.copy.views):
            self._assign(owner, kind, name, view.to(device, non_blocking=non_blocking))


def module_bytes(module: nn.Module) -> int:
    return sum(tensor.numel() * tensor.element_size() for *_, tensor in _module_tensors(module))


def move_unstreamed(module: nn.Module, device: torch.device | str) -> nn.Module:
    """Move every parameter and buffer except streamed blocks' (their streamer places them) to `device`."""
    for owner, kind, name, tensor in list(_module_tensors(module)):
        if kind == "param":
            owner._parameters[name].data = tensor.data.to(device)
        else:
            owner._buffers[name] = tensor.to(device)
    return module
