"""Weights stored narrower than the computation (fp8 storage, bf16 or fp32 compute).

A layer whose weight is stored in float8_e4m3fn (half the memory of bf16) upcasts it to the activations' dtype
for each matmul; the numbers are those of the fp8-rounded weights. This is the "low" memory preset's storage on the
command line; inside ComfyUI the same job is done by `comfy.ops.manual_cast`. (Native fp8 matmul, which would also be
faster on Hopper/Ada GPUs, is `enable_fp8_matmul` below: an explicit option that also rounds the activations.)
An earlier per-tensor-scaled fp8 matmul was slower than bf16 on an H200 (x0.88): one scale per tensor needs a
separate reduction over the whole activation before the GEMM; row-wise scales fuse into the quantising kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CastingLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


class CastingConv1d(nn.Conv1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return self._conv_forward(x, self.weight.to(x.dtype), bias)


_CASTING = {nn.Linear: CastingLinear, nn.Conv1d: CastingConv1d}


def enable_weight_casting(model: nn.Module) -> int:
    """Make every Linear/Conv1d whose weight is fp8 upcast it on the fly; returns how many layers changed."""
    changed = 0
    for module in model.modules():
        casting = _CASTING.get(type(module))
        if casting is not None and module.weight.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            module.__class__ = casting
            changed += 1
    return changed


FP8_MAX = torch.finfo(torch.float8_e4m3fn).max
# Kept in the compute dtype: norms, embeddings and adaLN modulation (small, and sensitive to rounding).
FP8_MATMUL_SKIP = ("norm", "emb")


def _rowwise_fp8(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, k) -> fp8 values and one float32 scale per row (amax / 448): each row uses fp8's whole range."""
    scale = matrix.float().abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / FP8_MAX
    return (matrix.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


class RowwiseFp8Linear(nn.Linear):
    """fp8 x fp8 matmul with row-wise scales (`torch._scaled_mm`), as torchao's dynamic float8 with PerRow
    granularity: the weight is stored once in float8_e4m3fn with one scale per output row (half the bytes of bf16);
    each call scales every activation row by its own amax. Under torch.compile the activation quantisation fuses into
    one kernel before the fp8 GEMM. Changes the numbers (activations are rounded to fp8 too)."""

    weight_scale: torch.Tensor  # (1, out_features) float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        quantised, scale = _rowwise_fp8(rows)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        out = torch._scaled_mm(quantised, self.weight.t(), scale_a=scale, scale_b=self.weight_scale, bias=bias,
                               out_dtype=x.dtype)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def enable_fp8_matmul(model: nn.Module, prefix: str = "transformer_blocks.") -> int:
    """Switch the Linear layers under `prefix` whose sizes suit fp8 kernels (multiples of 16) to row-wise fp8
    matmuls, except norms, embeddings and adaLN (`FP8_MATMUL_SKIP`); returns how many layers changed."""
    changed = 0
    for name, module in model.named_modules():
        if not name.startswith(prefix) or type(module) not in (nn.Linear, CastingLinear):
            continue
        if any(part in name for part in FP8_MATMUL_SKIP):
            continue
        out_features, in_features = module.weight.shape
        if in_features % 16 or out_features % 16:
            continue
        weight, scale = _rowwise_fp8(module.weight.detach())
        module.weight = nn.Parameter(weight, requires_grad=False)
        module.register_buffer("weight_scale", scale.reshape(1, -1), persistent=False)
        module.__class__ = RowwiseFp8Linear
        changed += 1
    return changed
