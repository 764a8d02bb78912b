"""The attention kernel a model computes with, chosen per model instance.

Every attention processor of our models calls `processor.kernel(query, key, value)` on (batch, heads, length, dim)
tensors, with scale 1/sqrt(dim) and no mask. The kernel is an attribute of the processor, so two models loaded side by
side (two LoadHalloModel nodes, a benchmark comparing kernels) each keep their own choice; nothing is process-wide.

Kernels: PyTorch's `scaled_dot_product_attention` letting PyTorch choose (`auto`) or restricted to one backend (flash,
cuDNN, memory-efficient, math), or any function with the same signature (ComfyUI's optimized attention, which follows
its `--use-sage-attention` style flags). All compute the same attention; they differ in float rounding and speed.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

AttentionKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
SDPA_BACKENDS = ("auto", "flash", "cudnn", "efficient", "math")


def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """PyTorch's fused attention, backend chosen by PyTorch: the default kernel."""
    return F.scaled_dot_product_attention(query, key, value)


def sdpa_kernel(backend: str = "auto") -> AttentionKernel:
    """PyTorch's fused attention restricted to one backend (`auto`: PyTorch chooses)."""
    if backend not in SDPA_BACKENDS:
        raise ValueError(f"attention backend must be one of {', '.join(SDPA_BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return sdpa
    from torch.nn.attention import SDPBackend
    from torch.nn.attention import sdpa_kernel as restrict

    chosen = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
              "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[backend]

    def kernel(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        with restrict(chosen):
            return F.scaled_dot_product_attention(query, key, value)

    kernel.__name__ = f"sdpa_{backend}"
    return kernel


def set_attention_kernel(model: nn.Module, kernel: AttentionKernel) -> int:
    """Give every attention processor of `model` this kernel; returns how many processors took it."""
    changed = 0
    for module in model.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "kernel"):
            processor.kernel = kernel
            changed += 1
    return changed


def attention_kernel_of(model: nn.Module) -> AttentionKernel | None:
    """The kernel of the model's first attention processor (None for a model without our processors)."""
    for module in model.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "kernel"):
            return processor.kernel
    return None


@contextlib.contextmanager
def using_attention_kernel(model: nn.Module, kernel: AttentionKernel):
    """Temporarily compute `model` with another kernel (benchmarks)."""
    previous = attention_kernel_of(model)
    set_attention_kernel(model, kernel)
    try:
        yield model
    finally:
        if previous is not None:
            set_attention_kernel(model, previous)
