"""Cheap previews of latents during sampling: a linear map from the 16 latent channels to RGB.

There is no published latent-to-RGB table for the CogVideoX VAE, and a fixed table would be wrong for any other VAE
(the tiny test VAEs among them). So the map is fitted once per video, by least squares, on the reference image and
its own latent: every latent pixel against the mean colour of the 8x8 pixel block it encodes. It costs one small
matrix solve and gives recognisable previews for any VAE.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class LatentPreviewer:
    def __init__(self, latent: torch.Tensor, pixels: torch.Tensor):
        """latent (16, h, w) of an image; pixels (3, H, W) in [-1, 1] of the same image."""
        channels, height, width = latent.shape
        target = F.adaptive_avg_pool2d(pixels.float()[None], (height, width))[0]  # (3, h, w)
        features = torch.cat([latent.float().reshape(channels, -1), torch.ones(1, height * width,
                                                                              device=latent.device)])
        solution = torch.linalg.lstsq(features.T.cpu(), target.reshape(3, -1).T.cpu()).solution  # (17, 3)
        self.weight, self.bias = solution[:-1], solution[-1]

    def __call__(self, latents: torch.Tensor, frame: int | None = None) -> np.ndarray:
        """latents (1, T, 16, h, w) -> uint8 RGB (h, w, 3) of one latent frame (the middle one by default)."""
        frames = latents.shape[1]
        chosen = latents[0, frames // 2 if frame is None else frame].float().cpu()  # (16, h, w)
        rgb = torch.einsum("chw,cd->hwd", chosen, self.weight) + self.bias
        return ((rgb.clamp(-1, 1) + 1) * 127.5).to(torch.uint8).numpy()
