"""Hallo3's audio and face projections.

Neither exists in diffusers. Both are constant over the denoising steps of a clip, so the pipeline runs them once per
clip and feeds their tokens to every step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import Hallo3Config


class AudioProjection(nn.Module):
    """wav2vec2 windows (b, frames, window, layers, width) -> (b, latent_frames, context_tokens, token_dim).

    Three linear layers make `context_tokens` tokens per video frame; one causal stride-2 convolution, applied twice
    with the same weights, then maps 49 video frames to 13 latent frames the way the causal VAE maps pixels to
    latents: the first frame alone, then groups of four (1+24 -> 1+12).
    """

    def __init__(self, config: Hallo3Config):
        super().__init__()
        width = config.audio_context_tokens * config.audio_token_dim
        self.context_tokens = config.audio_context_tokens
        self.token_dim = config.audio_token_dim
        self.proj1 = nn.Linear(config.audio_input_dim, config.audio_intermediate_dim)
        self.proj2 = nn.Linear(config.audio_intermediate_dim, config.audio_intermediate_dim)
        self.proj3 = nn.Linear(config.audio_intermediate_dim, width)
        self.conv1 = nn.Conv1d(width, width, kernel_size=2, stride=2)
        self.norm = nn.LayerNorm(config.audio_token_dim, eps=config.norm_eps)

    def compress_time(self, tokens: torch.Tensor) -> torch.Tensor:
        """(b, channels, frames) -> (b, channels, 1 + (frames - 1) // 2) for odd frames, frames // 2 for even."""
        if tokens.shape[-1] % 2 == 1:
            first, rest = tokens[..., :1], tokens[..., 1:]
            return torch.cat([first, self.conv1(rest)], dim=-1) if rest.shape[-1] else first
        return self.conv1(tokens)

    def forward(self, audio_windows: torch.Tensor) -> torch.Tensor:
        batch, frames = audio_windows.shape[:2]
        hidden = audio_windows.reshape(batch * frames, -1)
        hidden = F.relu(self.proj1(hidden))
        hidden = F.relu(self.proj2(hidden))
        hidden = self.proj3(hidden).reshape(batch, frames, -1).transpose(1, 2)  # (b, tokens*dim, frames)
        hidden = self.compress_time(self.compress_time(hidden))
        hidden = hidden.transpose(1, 2).reshape(batch, hidden.shape[-1], self.context_tokens, self.token_dim)
        return self.norm(hidden)


class FaceProjection(nn.Module):
    """Raw 512-d ArcFace embedding (b, 512) -> (b, face_tokens, face_token_dim); no L2 normalisation."""

    def __init__(self, config: Hallo3Config):
        super().__init__()
        self.tokens = config.face_tokens
        self.token_dim = config.face_token_dim
        self.proj = nn.Linear(config.face_embed_dim, config.face_tokens * config.face_token_dim)
        self.norm = nn.LayerNorm(config.face_token_dim, eps=config.norm_eps)

    def forward(self, face_embedding: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(face_embedding).reshape(-1, self.tokens, self.token_dim)
        return self.norm(tokens)
