"""The CogVideoX 3-D VAE as Hallo3 uses it.

A small wrapper around diffusers' `AutoencoderKLCogVideoX` that does what the official pipeline does around the VAE
(`hallo3/diffusion_video.py` encode_first_stage / decode_first_stage, `hallo3/sample_video.py:387-413`):

* encode: pixels in [-1, 1] -> one forward of the encoder over all frames -> posterior *sample*
  (mean + std * noise, the noise drawn from an explicit `torch.Generator`) -> times the latent scale 0.7;
* decode: latents / 0.7 -> the decoder in latent-frame chunks [0:3], [3:5], [5:7], ... with the causal-conv cache
  carried between chunks -> clamp((x + 1) / 2, 0, 1) in float32.

Both numbers differ from a plain diffusers call in ways that change results: diffusers' `encode` runs more than 8
frames in 8-frame batches (the official encoder sees all frames at once, and GroupNorm statistics depend on it), and
the latent scale of the 5B model is 0.7, not diffusers' default 1.15258426. diffusers' `decode` with
`num_latent_frames_batch_size = 2` uses exactly the official chunks, so it is used as is. Tiling (diffusers'
`enable_tiling`) saves memory but changes the numbers, so it is an explicit option, off by default; `decode_tiles`
tiles the decode only (the `12gb` memory preset): 2 x 2 overlapping spatial tiles of half the frame, each decoded in
the official temporal chunks with its own causal-conv cache, blended at the seams (diffusers' `tiled_decode`), about a
quarter of the decode's peak memory. The decoder's GroupNorms take their statistics over the whole chunk, so no
spatial split is exact; the deviation is measured (tests/test_memory_presets.py, docs/benchmarks.md).

Layouts: pixels (B, 3, F, H, W), latents (B, 16, T, H/8, W/8), channels first as the VAE sees them; the transformer
wants (B, T, C, H, W), which the caller permutes.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLCogVideoX
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import nn

from ..errors import InputError

# cogvideox_5b_i2v_s2.yaml `scale_factor`: latent = 0.7 * z_vae.
LATENT_SCALE = 0.7

# sample_video.py decodes latent frames [0:3], [3:5], ...: diffusers' batching with 2 latent frames per chunk.
DECODE_LATENT_FRAMES_PER_CHUNK = 2


def latent_frame_count(pixel_frames: int, temporal_compression: int = 4) -> int:
    """Latent frames the encoder makes of `pixel_frames` frames: 1+4k -> 1+k (49 -> 13), and 3 -> 1.

    Each temporal down-sampling keeps the first frame and averages the rest in pairs (an even count is averaged in
    pairs throughout), once per factor of 2 of the temporal compression.
    """
    if pixel_frames < 1:
        raise InputError(f"the VAE needs at least 1 frame, got {pixel_frames}")
    frames = pixel_frames
    for _ in range(int(temporal_compression).bit_length() - 1):
        if frames > 1:
            frames = 1 + (frames - 1) // 2 if frames % 2 else frames // 2
    return frames


def pixel_frame_count(latent_frames: int, temporal_compression: int = 4) -> int:
    """Frames `decode` makes of `latent_frames` latent frames (an odd count): 1+k -> 1+4k (13 -> 49)."""
    if latent_frames < 1 or latent_frames % 2 == 0:
        raise InputError(
            f"the VAE decodes an odd number of latent frames (1, 3, ..., 13), got {latent_frames}; "
            "Hallo3 clips have 13"
        )
    return 1 + temporal_compression * (latent_frames - 1)


class CogVideoXVAE(nn.Module):
    """The CogVideoX VAE with Hallo3's latent scale, posterior sampling and chunked decode.

    Build it with `hallo_core.hallo3.vae_checkpoint.load_vae`; `model` is the diffusers `AutoencoderKLCogVideoX`.
    """

    def __init__(self, model: AutoencoderKLCogVideoX, tiling: bool = False, decode_tiles: bool = False):
        super().__init__()
        self.model = model
        # Pinned rather than trusted to the diffusers default: the official chunking depends on it.
        self.model.num_latent_frames_batch_size = DECODE_LATENT_FRAMES_PER_CHUNK
        self.tiling = tiling
        self.decode_tiles = decode_tiles
        if tiling:
            self.model.enable_tiling()
        else:
            self.model.disable_tiling()

    @property
    def dtype(self) -> torch.dtype:
        return self.model.encoder.conv_in.conv.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.encoder.conv_in.conv.weight.device

    @property
    def latent_channels(self) -> int:
        return int(self.model.config.latent_channels)

    @property
    def temporal_compression(self) -> int:
        return int(self.model.config.temporal_compression_ratio)

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.model.config.block_out_channels) - 1)

    @torch.no_grad()
    def posterior(self, pixels: torch.Tensor) -> DiagonalGaussianDistribution:
        """The encoder's diagonal Gaussian over unscaled latents, for pixels (B, 3, F, H, W) in [-1, 1]."""
        self._check_pixels(pixels)
        pixels = pixels.to(device=self.device, dtype=self.dtype).contiguous()
        if self.tiling:
            return self.model.encode(pixels).latent_dist
        # One encoder pass over all frames, as the official encode_first_stage does.
        moments, _ = self.model.encoder(pixels)
        return DiagonalGaussianDistribution(moments)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Scaled latents (B, 16, T, H/8, W/8): 0.7 * (mean + std * noise), noise drawn from `generator`."""
        if not isinstance(generator, torch.Generator):
            raise TypeError("encode needs an explicit torch.Generator: the official encode samples the posterior")
        return LATENT_SCALE * self.posterior(pixels).sample(generator=generator)

    @torch.no_grad()
    def encode_mean(self, pixels: torch.Tensor) -> torch.Tensor:
        """Scaled posterior mean, 0.7 * mean: deterministic, but not what the official pipeline feeds the model."""
        return LATENT_SCALE * self.posterior(pixels).mean

    @torch.no_grad()
    def decode_raw(self, latents: torch.Tensor) -> torch.Tensor:
        """The decoder's output (about [-1, 1], in the VAE's dtype) for scaled latents (B, 16, T, h, w), T odd."""
        self._check_latents(latents)
        # contiguous: a permuted (B, T, C, h, w) view would carry its strides through every conv (4x slower)
        z = latents.to(device=self.device, dtype=self.dtype).contiguous() / LATENT_SCALE
        if self.decode_tiles and not self.tiling:
            return self._tiled_decode(z)
        return self.model.decode(z).sample

    def _tiled_decode(self, z: torch.Tensor) -> torch.Tensor:
        """diffusers' tiled decode with tiles of half the frame (2 x 2 with overlap), whatever the frame size."""
        model, step = self.model, self.spatial_compression
        height, width = z.shape[-2] * step, z.shape[-1] * step
        model.tile_sample_min_height = max(step, height // 2 // step * step)
        model.tile_sample_min_width = max(step, width // 2 // step * step)
        model.tile_latent_min_height = model.tile_sample_min_height // step
        model.tile_latent_min_width = model.tile_sample_min_width // step
        return model.tiled_decode(z).sample

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, 1+4(T-1), 8h, 8w) in [0, 1], float32, for scaled latents (B, 16, T, h, w), T odd."""
        pixels = self.decode_raw(latents).to(torch.float32)
        return ((pixels + 1.0) / 2.0).clamp(0.0, 1.0)

    def _check_pixels(self, pixels: torch.Tensor) -> None:
        channels = self.model.config.in_channels
        if pixels.dim() != 5 or pixels.shape[1] != channels:
            raise InputError(f"the VAE encodes pixels shaped (B, {channels}, F, H, W), got {tuple(pixels.shape)}")
        step = self.spatial_compression
        if pixels.shape[-2] % step or pixels.shape[-1] % step:
            raise InputError(
                f"the VAE needs height and width divisible by {step}, got {pixels.shape[-2]}x{pixels.shape[-1]}"
            )

    def _check_latents(self, latents: torch.Tensor) -> None:
        if latents.dim() != 5 or latents.shape[1] != self.latent_channels:
            raise InputError(
                f"the VAE decodes latents shaped (B, {self.latent_channels}, T, h, w), got {tuple(latents.shape)}"
            )
        pixel_frame_count(latents.shape[2], self.temporal_compression)
