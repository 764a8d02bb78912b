"""The small conditioning networks of Hallo (official hallo `hallo/models/{face_locator,image_proj,audio_proj}.py`).

All three are constant over a clip's steps, so they run once per clip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import LAYER_NORM_EPS, HalloUNetConfig


class FaceLocator(nn.Module):
    """Face-region image (n, 3, H, W) in [0, 1] -> (n, C0, H/8, W/8) features added to the denoiser after conv_in.

    conv_in, then pairs (3x3 conv, 3x3 stride-2 conv) per level, SiLU after every conv but the last (conv_out).
    """

    def __init__(self, config: HalloUNetConfig):
        super().__init__()
        channels = config.face_locator_channels
        self.conv_in = nn.Conv2d(config.face_locator_in_channels, channels[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            self.blocks.append(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=2))
        self.conv_out = nn.Conv2d(channels[-1], config.block_out_channels[0], kernel_size=3, padding=1)

    def forward(self, region: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv_in(region))
        for conv in self.blocks:
            x = F.silu(conv(x))
        return self.conv_out(x)


class ImageProjection(nn.Module):
    """Raw face embedding (b, 512) -> (b, 4, cross_attention_dim): linear, reshape, LayerNorm (no L2 norm)."""

    def __init__(self, config: HalloUNetConfig):
        super().__init__()
        self.tokens = config.face_tokens
        self.token_dim = config.cross_attention_dim
        self.proj = nn.Linear(config.face_embed_dim, config.face_tokens * config.cross_attention_dim)
        self.norm = nn.LayerNorm(config.cross_attention_dim, eps=LAYER_NORM_EPS)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(embedding).reshape(-1, self.tokens, self.token_dim))


class AudioProjection(nn.Module):
    """wav2vec windows (b, frames, window, layers, width) -> (b, frames, 32, audio_dim) tokens per frame.

    Each frame's window is flattened window-major, then layer, then channel (46080 values at full size), then
    relu(proj1) -> relu(proj2) -> proj3 -> reshape to tokens -> LayerNorm.
    """

    def __init__(self, config: HalloUNetConfig):
        super().__init__()
        self.tokens = config.audio_context_tokens
        self.token_dim = config.audio_token_dim
        self.proj1 = nn.Linear(config.audio_input_dim, config.audio_intermediate_dim)
        self.proj2 = nn.Linear(config.audio_intermediate_dim, config.audio_intermediate_dim)
        self.proj3 = nn.Linear(config.audio_intermediate_dim, config.audio_context_tokens * config.audio_token_dim)
        self.norm = nn.LayerNorm(config.audio_token_dim, eps=LAYER_NORM_EPS)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        batch, frames = windows.shape[:2]
        x = windows.reshape(batch * frames, -1)
        x = torch.relu(self.proj1(x))
        x = torch.relu(self.proj2(x))
        tokens = self.proj3(x).reshape(batch * frames, self.tokens, self.token_dim)
        return self.norm(tokens).reshape(batch, frames, self.tokens, self.token_dim)
