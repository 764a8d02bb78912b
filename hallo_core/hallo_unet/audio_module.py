"""Hallo's hierarchical audio attention: three masked audio cross-attentions (pose, expression, lip).

After each spatial transformer of the denoiser (official hallo `hallo/models/attention.py`
AudioTemporalBasicTransformerBlock): every frame's tokens attend to that frame's 32 audio tokens three times, with
separate weights; each result is multiplied by its region mask at this resolution (background for pose, face minus
lips for expression, lips), passed through its own 1x1 convolution (bias added after the mask), scaled by the user's
weight for that region, and added to the residual stream.

The module runs at an inner width of heads x (the block's input channels // heads), narrower than the block in
the first layer of down blocks 1-2 and in up blocks 1-2 (official construction), while its GroupNorm and 1x1
projections see the block width.
"""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers.models.attention import FeedForward
from torch import nn

from .attention import attention
from .config import LAYER_NORM_EPS, TRANSFORMER_GROUPNORM_EPS
from .spatial import from_tokens, to_tokens


class AudioTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, audio_dim: int):
        super().__init__()
        self.zero_conv_full = nn.Conv2d(dim, dim, kernel_size=1)
        self.zero_conv_face = nn.Conv2d(dim, dim, kernel_size=1)
        self.zero_conv_lip = nn.Conv2d(dim, dim, kernel_size=1)
        self.attn1 = attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn2_0 = attention(dim, heads, audio_dim)  # pose (whole-frame / background mask)
        self.attn2_1 = attention(dim, heads, audio_dim)  # expression (face mask)
        self.attn2_2 = attention(dim, heads, audio_dim)  # lip (lip mask)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.norm3 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def _branch(self, attn: nn.Module, conv: nn.Conv2d, normed: torch.Tensor, audio: torch.Tensor,
                mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
        masked = attn(normed, audio) * mask[:, :, None]
        rows, _, c = masked.shape
        # channels-last view into the 1x1 conv, as the official code (no copy): same kernel, same rounding
        out = conv(masked.reshape(rows, h, w, c).permute(0, 3, 1, 2))
        return out.permute(0, 2, 3, 1).reshape(rows, h * w, c)

    def forward(
        self,
        x: torch.Tensor,
        audio: torch.Tensor,
        masks: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        weights: Sequence[float],
        h: int,
        w: int,
    ) -> torch.Tensor:
        """x (rows, h*w, dim), audio (rows, tokens, audio_dim), masks (rows or 1, h*w) for pose, expression, lip."""
        # per-frame self-attention
        x = self.attn1(self.norm1(x)) + x
        # three masked audio branches
        normed = self.norm2(x)
        pose = self._branch(self.attn2_0, self.zero_conv_full, normed, audio, masks[0], h, w)
        expression = self._branch(self.attn2_1, self.zero_conv_face, normed, audio, masks[1], h, w)
        lip = self._branch(self.attn2_2, self.zero_conv_lip, normed, audio, masks[2], h, w)
        # weighted residual, in the official order of additions
        x = weights[0] * pose + weights[1] * expression + weights[2] * lip + x
        # feed-forward
        return self.ff(self.norm3(x)) + x


class AudioModule(nn.Module):
    """GroupNorm -> 1x1 conv to the inner width -> audio block -> 1x1 conv back -> + input."""

    def __init__(self, channels: int, inner: int, heads: int, audio_dim: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=TRANSFORMER_GROUPNORM_EPS)
        self.proj_in = nn.Conv2d(channels, inner, kernel_size=1)
        self.transformer_blocks = nn.ModuleList([AudioTransformerBlock(inner, heads, audio_dim)])
        self.proj_out = nn.Conv2d(inner, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, audio: torch.Tensor, masks: tuple[torch.Tensor, ...],
                weights: Sequence[float]) -> torch.Tensor:
        """x (rows, c, h, w), audio (rows, tokens, audio_dim) -> (rows, c, h, w)."""
        h, w = x.shape[-2:]
        tokens = to_tokens(self.proj_in(self.norm(x)))
        tokens = self.transformer_blocks[0](tokens, audio, masks, weights, h, w)
        return self.proj_out(from_tokens(tokens, h, w)) + x
