"""Input embeddings of the Hallo3 transformers: patches, text, learned positions, 3-D RoPE tables.

diffusers' `CogVideoXPatchEmbed` holds the same three weights but recomputes sin-cos positions whenever the frame
count is not the configured one, which would break the 1-frame reference pass; this
module instead always slices the learned table, as the official code does.
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from torch import nn

from .config import Hallo3Config


class VideoPatchEmbedding(nn.Module):
    """[text_proj(T5 states); per-frame 2x2 patches] plus the learned position table's first rows."""

    def __init__(self, config: Hallo3Config):
        super().__init__()
        dim = config.hidden_size
        self.proj = nn.Conv2d(config.in_channels, dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.text_proj = nn.Linear(config.text_embed_dim, dim)
        positions = config.text_length + config.latent_frames * config.tokens_per_frame
        self.pos_embedding = nn.Parameter(torch.zeros(1, positions, dim))

    def forward(self, text_states: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        batch, frames = latents.shape[:2]
        video = self.proj(latents.flatten(0, 1))  # (b t, d, h/p, w/p)
        video = video.flatten(2).transpose(1, 2).reshape(batch, -1, video.shape[1])  # (b, t h w, d), row-major
        tokens = torch.cat([self.text_proj(text_states), video], dim=1)
        if tokens.shape[1] > self.pos_embedding.shape[1]:
            raise ValueError(f"{frames} latent frames exceed the learned position table")
        # Fewer frames (the 1-frame reference pass) use the table's first rows, as the official code does.
        return tokens + self.pos_embedding[:, : tokens.shape[1]]


def video_rotary_table(
    config: Hallo3Config, frames: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Interleaved 3-D RoPE (cos, sin) of shape (frames * h * w, head_dim), positions in (t, h, w) row-major order.

    Equal to the official SAT table (t:16, h:24, w:24 of the 64 head channels) for any grid size.
    """
    grid = (config.grid_height, config.grid_width)
    cos, sin = get_3d_rotary_pos_embed(
        embed_dim=config.attention_head_dim,
        crops_coords=((0, 0), grid),
        grid_size=grid,
        temporal_size=frames,
        theta=config.rope_theta,
        use_real=True,
        device=device,
    )
    return cos, sin
