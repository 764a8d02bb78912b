"""AnimateDiff v2 motion modules (official hallo `hallo/models/motion_module.py`, "Vanilla" type).

After each audio module of the denoiser, every spatial position attends over time: the two motion frames (features
of the previous clip's last frames, from the reference bank) and the clip's 16 frames, 18 in all. Per module:
GroupNorm (eps 1e-6) per frame, a linear projection, one block of two temporal self-attentions and a GEGLU
feed-forward (pre-LayerNorm residuals), a linear projection back, and the residual. Each temporal attention adds
the sinusoidal position table to its input (so to queries, keys and values alike; the residual stays without it).

The table is a buffer stored in the checkpoint, fp16-rounded in the official files: it is loaded, never recomputed
(recomputing it in fp32 moves the output by ~3e-4). `position_table` reproduces the official construction only for
writing new (tiny) checkpoints.
"""

from __future__ import annotations

import math

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from torch import nn

from .attention import KernelAttnProcessor
from .config import LAYER_NORM_EPS, TRANSFORMER_GROUPNORM_EPS
from .spatial import from_tokens, to_tokens


def position_table(dim: int, max_len: int) -> torch.Tensor:
    """The official (1, max_len, dim) table: sin on even channels, cos on odd, frequencies exp(-2i ln(1e4) / dim)."""
    position = torch.arange(max_len).unsqueeze(1)
    frequencies = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    table = torch.zeros(1, max_len, dim)
    table[0, :, 0::2] = torch.sin(position * frequencies)
    table[0, :, 1::2] = torch.cos(position * frequencies)
    return table


class PositionalEncoding(nn.Module):
    def __init__(self, dim: int, max_len: int):
        super().__init__()
        self.register_buffer("pe", torch.zeros(1, max_len, dim))  # filled from the checkpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[:, : x.shape[1]]


class TemporalAttention(Attention):
    """Self-attention over the frames at each spatial position, position table added to its input."""

    def __init__(self, dim: int, heads: int, max_len: int):
        super().__init__(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False,
                         processor=KernelAttnProcessor())
        self.pos_encoder = PositionalEncoding(dim, max_len)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """x (batch * frames, positions, dim) -> same."""
        rows, positions, dim = x.shape
        batch = rows // frames
        over_time = x.reshape(batch, frames, positions, dim).transpose(1, 2).reshape(batch * positions, frames, dim)
        out = self.processor(self, self.pos_encoder(over_time))
        return out.reshape(batch, positions, frames, dim).transpose(1, 2).reshape(rows, positions, dim)


class TemporalTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, max_len: int):
        super().__init__()
        self.attention_blocks = nn.ModuleList([TemporalAttention(dim, heads, max_len) for _ in range(2)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim, eps=LAYER_NORM_EPS) for _ in range(2)])
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        # two temporal self-attentions
        for attn, norm in zip(self.attention_blocks, self.norms):
            x = attn(norm(x), frames) + x
        # feed-forward
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, max_len: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=TRANSFORMER_GROUPNORM_EPS)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList([TemporalTransformerBlock(channels, heads, max_len)])
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """x (batch * frames, c, h, w), frames in order -> same."""
        h, w = x.shape[-2:]
        tokens = self.proj_in(to_tokens(self.norm(x)))
        tokens = self.transformer_blocks[0](tokens, frames)
        return from_tokens(self.proj_out(tokens), h, w) + x


class MotionModule(nn.Module):
    def __init__(self, channels: int, heads: int, max_len: int, groups: int):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, heads, max_len, groups)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        return self.temporal_transformer(x, frames)
