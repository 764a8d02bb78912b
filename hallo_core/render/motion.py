"""Motion frames: how a clip continues the previous one (hallo3_spec.md 2.1 and 4.4).

Default (official): the previous clip's last 2 decoded frames (for clip 0, two copies of the reference image), in
[-1, 1], multiplied by one random keep-mask `rand(h, w) > 0.1` shared by both frames and all channels (dropped pixels
become 0, mid-grey); then [full reference, motion 1, motion 2] is encoded by the VAE into one latent frame, followed
by zero latent frames: the channel-concatenated condition of the transformer.

Options, all off by default because they change the output (docs/options.md):
* `frames`: number of motion frames (the clip then makes 49 - frames new frames; 4 or more frames give a
  condition of two latent frames, which the stock weights were not trained on);
* `drop_patch`: Hallo2's patch-drop, dropping square patches of this many pixels instead of single pixels;
* `noise_std`: Hallo2's Gaussian-noise augmentation of the motion frames, added before the mask;
* `protect_face`: never drop pixels inside the reference face box (Hallo2's face protection);
* `carry_latents`: condition the next clip on the previous clip's last latent frame instead of re-encoding decoded
  pixels (skips one VAE encode per clip; experimental).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F

OFFICIAL_PIXEL_DROPOUT = 0.1


@dataclass(frozen=True)
class MotionOptions:
    frames: int = 2
    pixel_dropout: float = OFFICIAL_PIXEL_DROPOUT
    drop_patch: int = 1
    noise_std: float = 0.0
    protect_face: bool = False
    carry_latents: bool = False

    def __post_init__(self):
        if not 1 <= self.frames <= 8:
            raise ValueError("motion frames must be between 1 and 8")
        if not 0.0 <= self.pixel_dropout < 1.0:
            raise ValueError("motion pixel dropout must be in [0, 1)")
        if self.drop_patch < 1 or self.noise_std < 0:
            raise ValueError("drop patch must be >= 1 and noise std >= 0")

    def as_dict(self) -> dict:
        return asdict(self)


def augment_motion_frames(
    frames: torch.Tensor,
    options: MotionOptions,
    generator: torch.Generator,
    face_box: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """frames (n, 3, h, w) in [-1, 1] -> noised (optional) and masked frames; draws from `generator` (CPU)."""
    n, _, height, width = frames.shape
    if options.noise_std > 0:
        noise = torch.randn(frames.shape, generator=generator, dtype=torch.float32)
        frames = frames + options.noise_std * noise.to(frames.device, frames.dtype)
    if options.pixel_dropout <= 0:
        return frames
    patch = options.drop_patch
    draw = torch.rand(math.ceil(height / patch), math.ceil(width / patch), generator=generator)
    if patch > 1:
        draw = F.interpolate(draw[None, None], scale_factor=patch, mode="nearest")[0, 0, :height, :width]
    keep = draw > options.pixel_dropout
    if options.protect_face and face_box is not None:
        x0, y0, x1, y1 = face_box
        keep[max(y0, 0):y1, max(x0, 0):x1] = True
    return frames * keep.to(frames.device, frames.dtype)


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
