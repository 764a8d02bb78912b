"""Hallo3's motion condition: [full reference, motion frames] encoded by the VAE into one latent frame, followed by
zero latent frames, which the transformer takes channel-concatenated with the noisy latents."""

from __future__ import annotations

from typing import Callable

import torch


def encode_condition(
    encode: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    reference_pixels: torch.Tensor,
    motion_frames: torch.Tensor,
    latent_frames: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """The transformer's condition latents (1, latent_frames, 16, h/8, w/8) for a clip.

    `encode(pixels (1, 3, f, h, w), generator) -> (1, 16, f', h/8, w/8)` is the VAE (scaled, posterior sample);
    `reference_pixels` (1, 3, h, w) and `motion_frames` (n, 3, h, w) are in [-1, 1], the motion frames augmented.
    """
    pixels = torch.cat([reference_pixels, motion_frames.to(reference_pixels.dtype)], dim=0)
    latents = encode(pixels.permute(1, 0, 2, 3).unsqueeze(0), generator).permute(0, 2, 1, 3, 4)
    return pad_condition(latents, latent_frames)


def pad_condition(latents: torch.Tensor, latent_frames: int) -> torch.Tensor:
    """(1, f, c, h, w) condition frames -> (1, latent_frames, c, h, w), zeros after the given frames."""
    zeros = latents.new_zeros(latents.shape[0], latent_frames - latents.shape[1], *latents.shape[2:])
    return torch.cat([latents, zeros], dim=1)
