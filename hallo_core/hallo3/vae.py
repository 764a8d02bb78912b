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

    def _decode_chunks(self, z: torch.Tensor) -> torch.Tensor:
        """The official temporal chunks ([0:3], [3:5], ...) with the causal-conv cache carried between them, as
        diffusers' untiled decode does."""
        model, size = self.model, DECODE_LATENT_FRAMES_PER_CHUNK
        frames, remaining = z.shape[2], z.shape[2] % size
        conv_cache, out = None, []
        for index in range(max(frames // size, 1)):
            start = size * index + (0 if index == 0 else remaining)
            chunk = z[:, :, start:size * (index + 1) + remaining]
            if model.post_quant_conv is not None:
                chunk = model.post_quant_conv(chunk)
            chunk, conv_cache = model.decoder(chunk, conv_cache=conv_cache)
            out.append(chunk)
        return torch.cat(out, dim=2)

    def _tiled_decode(self, z: torch.Tensor, splits: int = 2) -> torch.Tensor:
        """`splits` x `splits` spatial tiles, each decoded in the official temporal chunks; neighbouring tiles overlap
        by a fifth of a tile and are cross-faded linearly there. One tile per side is the untiled decode exactly."""
        step = self.spatial_compression
        height, width = z.shape[-2:]
        out = None
        for top, bottom, weights_y in _tiles(height, splits, step):
            for left, right, weights_x in _tiles(width, splits, step):
                tile = self._decode_chunks(z[..., top:bottom, left:right]).float()
                if out is None:
                    out = torch.zeros(*tile.shape[:3], height * step, width * step, device=tile.device)
                weight = weights_y.to(tile.device)[:, None] * weights_x.to(tile.device)[None, :]
                out[..., top * step:bottom * step, left * step:right * step] += tile * weight
        return out.to(self.dtype)

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


def _tiles(latent_size: int, splits: int, step: int):
    """(start, stop, pixel weights) of `splits` overlapping tiles along one latent axis; the weights ramp up over a
    tile's overlap with the previous tile and down over its overlap with the next, summing to 1 everywhere."""
    stride = -(-latent_size // splits)
    overlap = max(1, stride // 5) if splits > 1 else 0
    tiles = []
    for index in range(splits):
        start = index * stride
        if start >= latent_size:
            break
        stop = min(latent_size, start + stride + overlap)
        weights = torch.ones((stop - start) * step)
        ramp = (torch.arange(overlap * step, dtype=torch.float32) + 1) / (overlap * step + 1)
        if index > 0:
            weights[:overlap * step] = ramp
        if stop < latent_size:
            weights[-overlap * step:] = 1 - ramp
        tiles.append((start, stop, weights))
    return tiles
