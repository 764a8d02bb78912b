"""Motion frames: how a clip continues the previous one, and their augmentation (every backbone).

A clip is conditioned on the previous clip's last decoded frames (for clip 0, copies of the reference image), in
[-1, 1], multiplied by one random keep-mask `rand(h, w) > p` shared by all motion frames and channels (dropped pixels
become 0, mid-grey). Official: Hallo3 drops 10 % of the pixels; Hallo2 25 % outside the face box; Hallo none. Each
backbone states its official options; what it does with the frames (Hallo3: one VAE latent frame of [reference,
motion]; the UNet: the reference network's motion features) is the backbone's.

Options beyond the official ones change the output (docs/options.md):
* `frames`: number of motion frames (Hallo3: the clip then makes 49 - frames new frames; 4 or more frames give a
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

import torch
import torch.nn.functional as F

from ..runtime.options import check_integer, check_number

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
        check_integer("motion frames", self.frames, 1, 8)
        check_number("motion pixel dropout", self.pixel_dropout, 0.0, 1.0, high_open=True)
        check_integer("motion drop patch", self.drop_patch, 1, 512)
        check_number("motion noise", self.noise_std, 0.0, 10.0)

    def as_dict(self) -> dict:
        return asdict(self)


def augment_motion_frames(
    frames: torch.Tensor,
    options: MotionOptions,
    generator: torch.Generator,
    protected: torch.Tensor | None = None,
) -> torch.Tensor:
    """frames (n, 3, h, w) in [-1, 1] -> noised (optional) and masked frames; draws from `generator` (CPU): the noise
    first, then the keep mask. `protected` (h, w) bool marks the face, never dropped with `protect_face`."""
    if options.noise_std > 0:
        noise = torch.randn(frames.shape, generator=generator, dtype=torch.float32)
        frames = frames + options.noise_std * noise.to(frames.device, frames.dtype)
    keep = motion_keep_mask(options, generator, tuple(frames.shape[-2:]), protected)
    return frames if keep is None else frames * keep.to(frames.device, frames.dtype)


def motion_keep_mask(options: MotionOptions, generator: torch.Generator, size: tuple[int, int],
                     protected: torch.Tensor | None = None) -> torch.Tensor | None:
    """The (h, w) bool keep-mask of one clip's motion frames (None without dropout: nothing is drawn)."""
    if options.pixel_dropout <= 0:
        return None
    height, width = size
    patch = options.drop_patch
    draw = torch.rand(math.ceil(height / patch), math.ceil(width / patch), generator=generator)
    if patch > 1:
        draw = F.interpolate(draw[None, None], scale_factor=patch, mode="nearest")[0, 0, :height, :width]
    keep = draw > options.pixel_dropout
    if options.protect_face and protected is not None:
        keep = keep | protected.to(keep.device)
    return keep


def box_mask(box: tuple[int, int, int, int] | None, size: tuple[int, int]) -> torch.Tensor | None:
    """An (h, w) bool mask of an (x0, y0, x1, y1) pixel box (clipped to the frame)."""
    if box is None:
        return None
    x0, y0, x1, y1 = box
    mask = torch.zeros(size, dtype=torch.bool)
    mask[max(y0, 0):y1, max(x0, 0):x1] = True
    return mask
