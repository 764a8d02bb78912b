"""The spatial transformer of both UNets, with Hallo's reference attention.

Each of the 16 cross-attention positions of SD1.5 holds one transformer (GroupNorm eps 1e-6, 1x1 proj_in, one block,
1x1 proj_out, residual) applied to every frame independently. The block is SD1.5's BasicTransformerBlock (LayerNorm
eps 1e-5; self-attention; cross-attention to the 4 face tokens; GEGLU feed-forward). Hallo changes its self-attention
(official hallo `hallo/models/mutual_self_attention.py`):

* in the ReferenceNet ("write") the block runs unchanged and its norm1 output is the bank entry for this position;
* in the denoiser ("read") a conditional row's self-attention keys and values are its own tokens followed by the
  reference tokens of the same-named ReferenceNet block; the unconditional rows (CFG) keep plain self-attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.attention import FeedForward
from torch import nn

from .attention import attention
from .config import LAYER_NORM_EPS, TRANSFORMER_GROUPNORM_EPS


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(n, c, h, w) -> (n, h*w, c), tokens in row-major order."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n, h * w, c)


def from_tokens(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    n, _, c = tokens.shape
    return tokens.reshape(n, h, w, c).permute(0, 3, 1, 2).contiguous()


@dataclass
class BlockReference:
    """What one denoiser block reads from the reference bank during a clip (constant over its steps).

    `key`/`value`: the block's attn1 keys and values of the two reference copies, (2, heads, h*w, d); `rows`: for
    each conditional denoiser row, which copy it reads; `motion_frames`: the two motion frames' features for each
    batch, (batches, 2, channels, h, w), concatenated in front of the frames by the motion modules.
    """

    key: torch.Tensor
    value: torch.Tensor
    rows: torch.Tensor
    motion_frames: torch.Tensor

    def key_value(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.key.index_select(0, self.rows), self.value.index_select(0, self.rows)


class SpatialTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, context_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn1 = attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn2 = attention(dim, heads, context_dim)
        self.norm3 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.ff = FeedForward(dim, activation_fn="geglu")

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        reference: BlockReference | None = None,
        uncond_rows: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (rows, tokens, dim), context (rows, 4, context_dim) -> (x, norm1(x)); norm1(x) is the bank entry."""
        # norm
        normed = self.norm1(x)
        # self-attention, conditional rows extended by the reference
        if reference is None:
            x = self.attn1(normed) + x
        else:
            rows = []
            if uncond_rows:
                rows.append(self.attn1(normed[:uncond_rows]) + x[:uncond_rows])
            if uncond_rows < x.shape[0]:  # none when a batch holds only unconditional rows (parallel/cfg.py)
                rows.append(self.attn1(normed[uncond_rows:], extra_key_value=reference.key_value()) + x[uncond_rows:])
            x = torch.cat(rows) if len(rows) > 1 else rows[0]
        # cross-attention to face tokens
        x = self.attn2(self.norm2(x), context) + x
        # feed-forward
        x = self.ff(self.norm3(x)) + x
        return x, normed


class SpatialTransformer(nn.Module):
    """GroupNorm -> 1x1 conv -> block over the h*w tokens of each frame -> 1x1 conv -> + input."""

    def __init__(self, channels: int, heads: int, context_dim: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=TRANSFORMER_GROUPNORM_EPS)
        self.proj_in = nn.Conv2d(channels, channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList([SpatialTransformerBlock(channels, heads, context_dim)])
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        reference: BlockReference | None = None,
        uncond_rows: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (rows, c, h, w) -> (x, the block's norm1 output (rows, h*w, c))."""
        h, w = x.shape[-2:]
        tokens = to_tokens(self.proj_in(self.norm(x)))
        tokens, normed = self.transformer_blocks[0](tokens, context, reference, uncond_rows)
        return self.proj_out(from_tokens(tokens, h, w)) + x, normed
