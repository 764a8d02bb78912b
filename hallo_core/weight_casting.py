"""Weights stored narrower than the computation (fp8 storage, bf16 or fp32 compute).

A layer whose weight is stored in float8_e4m3fn (half the memory of bf16) upcasts it to the activations' dtype
for each matmul; the numbers are those of the fp8-rounded weights. This is the "low" memory preset's storage on the
command line; inside ComfyUI the same job is done by `comfy.ops.manual_cast`. (Native fp8 matmul, which would also be
faster, needs a Hopper/Ada GPU and per-tensor scales; it is not implemented.)
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
