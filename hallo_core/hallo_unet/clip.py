"""One Hallo / Hallo2 clip: per-clip conditioning, then DDIM with CFG (official hallo `face_animate.py` __call__).

The render engine calls, per clip:

1. `encode_frames(vae, [reference, motion 1, motion 2])` -> reference latents (clip 0: the reference twice as its
   motion frames; later clips: the previous clip's last 2 decoded frames, float, x 2 - 1; Hallo2 first drops pixels
   of them with `drop_motion_pixels`);
2. `prepare_clip(models, ClipInputs(...))` -> `PreparedClip`: image tokens [imageproj(0), imageproj(face)], audio
   tokens (audioproj of the 16 frames' windows; uncond = zeros after the projection), face-locator features (uncond
   = zeros), the ReferenceNet bank (run once per clip, at timestep 0, fp16-rounded) and its per-block reads;
3. `denoise_clip(models, prepared, latents, steps, cfg_scale, callback)` -> final latents (1, 4, 16, h, w);
4. `decode_latents(vae, latents)` -> frames (1, 3, 16, H, W) in [0, 1].

Official randomness (for the engine's seed policy): one CPU generator seeded once (42) for the whole video; per clip
Hallo draws the initial noise `randn((1, 4, 16, h, w))` in the weight dtype (on the CPU fp16 noise equals fp32 noise
rounded), Hallo2 first `rand(H, W)` for the pixel drop, then the noise.

CFG rows are [uncond, cond] as official. `cfg_scale == 1` runs the conditional rows only, which is the official
formula's value (uncond + 1 * (cond - uncond)) at half the cost; the official code itself crashes there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..errors import InputError
from .checkpoint import UNetModels
from .denoiser import DenoiserConditioning, masks_at_levels
from .reference_net import ReferenceBank, reference_context, round_bank
from .sampler import OFFICIAL_CFG_SCALE, OFFICIAL_STEPS, apply_cfg, ddim_schedule, sample_ddim
from .vae import decode_latents, encode_frames

__all__ = ["ClipInputs", "ClipTokens", "PreparedClip", "clip_conditioning", "decode_latents", "denoise_clip",
           "encode_frames", "guided_velocity", "motion_frame_pixels", "prepare_clip",
           "project_clip", "reference_bank"]

MaskPyramid = Sequence[torch.Tensor]  # 4 levels, each the latent grid's h*w values at that level (or per frame)


@dataclass
class ClipInputs:
    """What one clip is conditioned on (all at the model's frame size; the masks from the face-mask helpers)."""

    reference_latents: torch.Tensor  # (3, 4, h, w): VAE means x 0.18215 of [reference, motion 1, motion 2]
    face_embedding: torch.Tensor  # (1, 512): raw ArcFace embedding (zeros when no face)
    face_region: torch.Tensor  # (1, 3, H, W) or (3, H, W) in [0, 1]: the face-box image (face-locator input)
    full_mask: MaskPyramid  # pose branch (background), levels 0-3
    face_mask: MaskPyramid  # expression branch (face minus lips)
    lip_mask: MaskPyramid  # lip branch
    audio_windows: torch.Tensor | None = None  # (1, 16, 5, layers, width): wav2vec windows -> audioproj here
    audio_tokens: torch.Tensor | None = None  # or (1, 16, 32, d): already projected
    motion_scale: Sequence[float] = (1.0, 1.0, 1.0)  # (pose, expression, lip) weights


@dataclass
class PreparedClip:
    """The denoiser's conditioning for one clip, plus what it was made from (previews, parity, debugging)."""

    conditioning: DenoiserConditioning
    cfg: bool
    image_tokens: torch.Tensor  # (2, 4, d): [uncond, cond]
    audio_tokens: torch.Tensor  # (1, frames, 32, d): the conditional tokens
    face_features: torch.Tensor  # (1, C0, h, w): the face locator's output (the same for every frame)
    bank: ReferenceBank | None = field(default=None, repr=False)  # with keep_bank: before the fp16 rounding
    bank_read: ReferenceBank | None = field(default=None, repr=False)  # with keep_bank: as the denoiser read it


def _check_weights(motion_scale: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(v) for v in motion_scale)
    if len(values) != 3:
        raise InputError(f"motion_scale needs 3 weights (pose, expression, lip), got {len(values)}")
    return values


@dataclass
class ClipTokens:
    """The projections of one clip's conditioning (the small networks' work)."""

    image_tokens: torch.Tensor  # (2, 4, d): [imageproj(0), imageproj(face embedding)]
    audio_tokens: torch.Tensor  # (1, frames, 32, d): the conditional audio tokens
    face_features: torch.Tensor  # (1, C0, h, w): the face locator's output (the same for every frame)


@torch.no_grad()
def project_clip(image_proj: torch.nn.Module, audio_proj: torch.nn.Module, face_locator: torch.nn.Module,
                 inputs: ClipInputs, dtype: torch.dtype, device: torch.device | str) -> ClipTokens:
    """Image tokens [uncond, cond], the clip's audio tokens and the face-locator features."""
    if (inputs.audio_windows is None) == (inputs.audio_tokens is None):
        raise InputError("give a clip either audio windows or audio tokens, not both or neither")
    embedding = inputs.face_embedding.to(device=device, dtype=dtype).reshape(1, -1)
    image_tokens = torch.cat([image_proj(torch.zeros_like(embedding)), image_proj(embedding)])
    if inputs.audio_tokens is not None:
        audio = inputs.audio_tokens.to(device=device, dtype=dtype)
    else:
        audio = audio_proj(inputs.audio_windows.to(device=device, dtype=dtype).reshape(
            1, -1, *inputs.audio_windows.shape[-3:]))
    region = inputs.face_region.to(device=device, dtype=dtype).reshape(1, *inputs.face_region.shape[-3:])
    return ClipTokens(image_tokens, audio, face_locator(region))


@torch.no_grad()
def reference_bank(reference_net: torch.nn.Module, reference_latents: torch.Tensor,
                   image_tokens: torch.Tensor) -> ReferenceBank:
    """The ReferenceNet's bank for [reference, motion 1, motion 2] (before the fp16 rounding): once per clip."""
    if reference_latents.shape[0] != 3:
        raise InputError(f"reference latents need 3 rows (reference, 2 motion frames), got "
                         f"{reference_latents.shape[0]}")
    latents = reference_latents.to(device=image_tokens.device, dtype=image_tokens.dtype)
    return reference_net(latents.repeat(2, 1, 1, 1), reference_context(image_tokens))


@torch.no_grad()
def clip_conditioning(denoiser: torch.nn.Module, inputs: ClipInputs, tokens: ClipTokens, bank: ReferenceBank,
                      cfg: bool) -> tuple[DenoiserConditioning, ReferenceBank]:
    """The denoiser's conditioning for the clip (and the bank as it reads it, rounded to fp16 as official)."""
    dtype, device = denoiser.dtype, tokens.image_tokens.device
    frames = tokens.audio_tokens.shape[1]
    batches = 2 if cfg else 1
    audio, faces, images = tokens.audio_tokens, tokens.face_features, tokens.image_tokens
    bank_read = round_bank(bank, dtype)
    conditioning = DenoiserConditioning(
        frames=frames,
        uncond_rows=frames if cfg else 0,
        image_tokens=(images if cfg else images[1:]).repeat_interleave(frames, dim=0),
        audio_tokens=(torch.cat([torch.zeros_like(audio), audio]) if cfg else audio).flatten(0, 1),
        face_features=torch.cat([torch.zeros_like(faces), faces]) if cfg else faces,
        masks=masks_at_levels((inputs.full_mask, inputs.face_mask, inputs.lip_mask),
                              tuple(inputs.reference_latents.shape[-2:]), denoiser.config.levels, batches, frames,
                              dtype, device),
        motion_scale=_check_weights(inputs.motion_scale),
        reference=denoiser.read_bank(bank_read, frames, cfg),
    )
    return conditioning, bank_read


@torch.no_grad()
def prepare_clip(models: UNetModels, inputs: ClipInputs, cfg_scale: float = OFFICIAL_CFG_SCALE,
                 bank: ReferenceBank | None = None, keep_bank: bool = False) -> PreparedClip:
    """Run the per-clip networks once. `bank` (pre-rounding) replaces the ReferenceNet's, and `keep_bank` keeps the
    bank before and after rounding in the result (parity checks; it costs a copy of the bank)."""
    nets = models.networks
    cfg = cfg_scale != 1.0
    tokens = project_clip(nets.image_proj, nets.audio_proj, nets.face_locator, inputs, models.dtype, models.device)
    if bank is None:
        bank = reference_bank(nets.reference_net, inputs.reference_latents, tokens.image_tokens)
    conditioning, bank_read = clip_conditioning(nets.denoiser, inputs, tokens, bank, cfg)
    return PreparedClip(conditioning=conditioning, cfg=cfg, image_tokens=tokens.image_tokens,
                        audio_tokens=tokens.audio_tokens, face_features=tokens.face_features,
                        bank=bank if keep_bank else None, bank_read=bank_read if keep_bank else None)


def guided_velocity(denoiser: torch.nn.Module, conditioning: DenoiserConditioning, cfg: bool,
                    cfg_scale: float = OFFICIAL_CFG_SCALE) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """`model(x, timestep) -> v` for the sampler: one batched call on [uncond, cond] rows, then CFG."""

    def velocity(x: torch.Tensor, timestep: int) -> torch.Tensor:
        if not cfg:
            return denoiser(x, timestep, conditioning)
        return apply_cfg(denoiser(torch.cat([x] * 2), timestep, conditioning), cfg_scale)

    return velocity


@torch.no_grad()
def denoise_clip(models: UNetModels, prepared: PreparedClip, latents: torch.Tensor, steps: int = OFFICIAL_STEPS,
                 cfg_scale: float = OFFICIAL_CFG_SCALE, callback: Callable[[dict], None] | None = None
                 ) -> torch.Tensor:
    """Initial noise (1, 4, frames, h, w) -> final latents, in the model dtype (the official latents and DDIM
    arithmetic are in the weight dtype). `callback` gets {"step", "steps", "timestep", "x", "denoised"} per step."""
    if (cfg_scale != 1.0) != prepared.cfg:
        raise InputError("the clip was prepared for another cfg scale (with / without CFG); prepare it again")
    x = latents.to(device=models.device, dtype=models.dtype)
    velocity = guided_velocity(models.networks.denoiser, prepared.conditioning, prepared.cfg, cfg_scale)
    return sample_ddim(velocity, x, ddim_schedule(steps), callback)


def motion_frame_pixels(reference: torch.Tensor, previous_frames: torch.Tensor | None, count: int = 2
                        ) -> torch.Tensor:
    """The pipeline's image rows [reference, motion frames] (1 + count, 3, H, W) in [-1, 1].

    `reference` (3, H, W) in [-1, 1]; `previous_frames` (3, frames, H, W) in [0, 1], the previous clip's decoded
    float frames (not quantised), or None for clip 0, whose motion frames are the reference repeated (official).
    """
    if previous_frames is None:
        motion = reference[None].repeat(count, 1, 1, 1)
    else:
        motion = previous_frames[:, -count:].transpose(0, 1) * 2.0 - 1.0
    return torch.cat([reference[None], motion.to(reference.dtype)])
