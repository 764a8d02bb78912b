"""What the hierarchical masks look like to a user: each region as a full-size mask, and the portrait with the pose
(blue), expression (green) and lip (red) regions drawn over it, so the weights' reach is visible before rendering."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .hierarchical_masks import HierarchicalMasks

REGION_COLOURS = {"pose": (0.25, 0.45, 1.0), "expression": (0.2, 0.95, 0.35), "lip": (1.0, 0.25, 0.25)}
OVERLAY = 0.55  # how strongly a fully masked pixel takes its region's colour


def region_masks(masks: HierarchicalMasks) -> dict[str, torch.Tensor]:
    """{"pose", "expression", "lip"}: (frame, frame) float32 in [0, 1], the finest level upsampled bilinearly."""
    size = masks.frame_size
    out = {}
    for name, pyramid in (("pose", masks.full), ("expression", masks.face), ("lip", masks.lip)):
        level0 = pyramid[0].reshape(-1)
        side = int(round(level0.numel() ** 0.5))
        grid = level0.reshape(1, 1, side, side).float()
        out[name] = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)
    return out


def region_preview(pixels: torch.Tensor, masks: HierarchicalMasks) -> torch.Tensor:
    """The square reference (1, 3, F, F) in [-1, 1] with the three regions drawn over it: (F, F, 3) in [0, 1]."""
    image = ((pixels[0].float() + 1) / 2).clamp(0, 1).permute(1, 2, 0)
    colour = torch.zeros_like(image)
    weight = torch.zeros(image.shape[:2])
    for name, mask in region_masks(masks).items():
        colour += mask[..., None] * torch.tensor(REGION_COLOURS[name])
        weight += mask
    amount = (OVERLAY * weight.clamp(0, 1))[..., None]
    colour = colour / weight.clamp_min(1e-6)[..., None]
    return image * (1 - amount) + colour * amount
