"""The attention kernel a model computes with, chosen per model instance.

Every attention processor of our models calls `processor.kernel(query, key, value)` on (batch, heads, length, dim)
tensors, with scale 1/sqrt(dim) and no mask. The kernel is an attribute of the processor, so two models loaded side by
side (two LoadHalloModel nodes, a benchmark comparing kernels) each keep their own choice; nothing is process-wide.

Kernels: PyTorch's `scaled_dot_product_attention` letting PyTorch choose (`auto`) or restricted to one backend (flash,
cuDNN, memory-efficient, math), or any function with the same signature (ComfyUI's optimized attention, which follows
its `--use-sage-attention` style flags). All compute the same attention; they differ in float rounding and speed.

Installed kernels (`installed_kernel`): FlashAttention 3 (`flash3`, package `flash_attn_interface` built from
flash-attention's hopper/ folder), FlashAttention 4 (`flash4`, PyPI `flash-attn-4`) and SageAttention (`sage`, PyPI
`sageattention`: int8 Q/K, so it changes the result a little). They are imported only when asked for; a missing package
or a CPU device is a one-line error naming what to install. They compute the long self-attention; the short
cross-attentions (4 face or 32 audio keys) stay on SDPA, where those kernels gain nothing.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

AttentionKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def split_heads(states: torch.Tensor, heads: int) -> torch.Tensor:
    """(batch, length, heads * dim) -> (batch, heads, length, dim): the layout every kernel takes."""
    batch = states.shape[0]
    return states.view(batch, -1, heads, states.shape[-1] // heads).transpose(1, 2)


def merge_heads(states: torch.Tensor) -> torch.Tensor:
    """(batch, heads, length, dim) -> (batch, length, heads * dim)."""
    batch, heads, length, head_dim = states.shape
    return states.transpose(1, 2).reshape(batch, length, heads * head_dim)
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


INSTALLED = {  # name -> (module to import, pip name, exact)
    "flash3": ("flash_attn_interface", "flash_attn_interface (build flash-attention's hopper/ folder)", True),
    "flash4": ("flash_attn.cute", "flash-attn-4", True),
    "sage": ("sageattention", "sageattention", False),
}
SHORT_KEYS = 128  # fewer keys than this (the per-frame face/audio cross-attention): SDPA


def check_installed_kernel(name: str, device: torch.device) -> None:
    """Refuse, in one line naming the package, an installed kernel that cannot run here."""
    import importlib.util

    from ..errors import InputError

    module, package, _ = INSTALLED[name]
    if torch.device(device).type != "cuda":
        raise InputError(f"attention '{name}' runs on CUDA GPUs only; use --attention auto on this device")
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package of a dotted name is missing
        found = False
    if not found:
        raise InputError(f"attention '{name}' needs the package {package}, which is not installed; install it or "
                         "use --attention auto")


def installed_kernel(name: str, device: torch.device) -> AttentionKernel:
    """FlashAttention 3/4 or SageAttention for long attention, SDPA for short key sets; (b, heads, len, dim)."""
    check_installed_kernel(name, device)
    if name == "sage":
        from sageattention import sageattn

        def long_kernel(query, key, value):
            return sageattn(query, key, value, tensor_layout="HND", is_causal=False)
    else:
        if name == "flash3":
            from flash_attn_interface import flash_attn_func
        else:
            from flash_attn.cute import flash_attn_func

        def long_kernel(query, key, value):  # these take (b, len, heads, dim)
            out = flash_attn_func(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), causal=False)
            out = out[0] if isinstance(out, tuple) else out  # some versions also return the log-sum-exp
            return out.transpose(1, 2)

    def kernel(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        if key.shape[2] < SHORT_KEYS:
            return sdpa(query, key, value)
        return long_kernel(query, key, value)

    kernel.__name__ = f"attention_{name}"
    return kernel


def kernel_by_name(name: str, device: torch.device) -> AttentionKernel:
    """The kernel an `--attention` name picks (runtime/options.py ATTENTION_CHOICES)."""
    return installed_kernel(name, device) if name in INSTALLED else sdpa_kernel(name)


class KernelProcessor:
    """Base of our attention processors: they compute with `self.kernel`, which `set_attention_kernel` sets per model
    (and parallel/ulysses.py wraps)."""

    def __init__(self):
        self.kernel: AttentionKernel = sdpa


def set_attention_kernel(model: nn.Module, kernel: AttentionKernel) -> int:
    """Give every attention processor of `model` this kernel; returns how many processors took it."""
    changed = 0
    for module in model.modules():
        processor = getattr(module, "processor", None)
        if isinstance(processor, KernelProcessor):
            processor.kernel = kernel
            changed += 1
    return changed


def attention_kernel_of(model: nn.Module) -> AttentionKernel | None:
    """The kernel of the model's first attention processor (None for a model without our processors)."""
    for module in model.modules():
        processor = getattr(module, "processor", None)
        if isinstance(processor, KernelProcessor):
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
