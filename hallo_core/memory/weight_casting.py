"""Weights stored narrower than the computation (fp8 storage, bf16 or fp32 compute).

A layer whose weight is stored in float8_e4m3fn (half the memory of bf16) upcasts it to the activations' dtype
for each matmul; the numbers are those of the fp8-rounded weights. This is the "low" memory preset's storage on the
command line; inside ComfyUI the same job is done by `comfy.ops.manual_cast`. (Native fp8 matmul, which would also be
faster on Hopper/Ada GPUs, is `enable_fp8_matmul` below: an explicit option that also rounds the activations.)
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


class Fp8MatmulLinear(nn.Linear):
    """fp8 x fp8 matmul with per-tensor scales (`torch._scaled_mm`): the weight is stored once as
    float8_e4m3fn / scale, the activations are quantised per call. Faster on GPUs with fp8 tensor cores (Hopper,
    Ada); changes the numbers more than fp8 storage alone, since the activations are rounded too."""

    weight_scale: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        scale = rows.abs().amax().float().clamp_min(1e-12) / FP8_MAX
        quantised = (rows.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        out = torch._scaled_mm(quantised, self.weight.t(), scale_a=scale, scale_b=self.weight_scale,
                               bias=bias, out_dtype=x.dtype)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def enable_fp8_matmul(model: nn.Module, prefix: str = "transformer_blocks.") -> int:
    """Switch the Linear layers under `prefix` whose sizes suit fp8 kernels (multiples of 16) to fp8 matmul."""
    changed = 0
    for name, module in model.named_modules():
        if not name.startswith(prefix) or type(module) not in (nn.Linear, CastingLinear):
            continue
        out_features, in_features = module.weight.shape
        if in_features % 16 or out_features % 16:
            continue
        weight = module.weight.detach().float()
        scale = weight.abs().amax().clamp_min(1e-12) / FP8_MAX
        module.weight = nn.Parameter((weight / scale).to(torch.float8_e4m3fn), requires_grad=False)
        module.register_buffer("weight_scale", scale.reshape(()).to(weight.device), persistent=False)
        module.__class__ = Fp8MatmulLinear
        changed += 1
    return changed
