"""The guided x0 denoiser of one clip: the transformer, its per-clip conditioning, v-prediction and CFG.

Official guidance (hallo3_spec.md 4.5-4.6): one batched call per step with rows [uncond, cond]; uncond has zero
text and zero audio features (the zero features still go through `audio_proj`), while face, reference and motion
conditioning are shared; x0 = a*x - sqrt(1-a^2)*v with the denoiser's quantised alpha; then
x0 = x0_u + scale * (x0_c - x0_u) with scale 3.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .models.transformer import Hallo3Transformer, ReferenceKV
from .sampling import Schedule, apply_cfg, v_to_x0

OFFICIAL_CFG_SCALE = 3.5


@dataclass
class ClipConditioning:
    """Everything the transformer needs for one clip besides the noisy latents, as [uncond, cond] batches."""

    condition_latents: torch.Tensor  # (1, t, 16, h, w): the motion/reference latent frame, then zeros
    text_states: torch.Tensor  # (2, text_length, text_dim): [zeros, T5(prompt)]
    audio_tokens: torch.Tensor  # (2, t, tokens, dim): audio_proj of [zero features, features]
    face_tokens: torch.Tensor  # (2, 4, 1024)
    reference_kv: ReferenceKV | None


def build_clip_conditioning(
    model: Hallo3Transformer,
    condition_latents: torch.Tensor,
    text_states: torch.Tensor,
    audio_windows: torch.Tensor,
    face_embedding: torch.Tensor,
    reference_kv: ReferenceKV | None,
) -> ClipConditioning:
    """Run the per-clip projections once: `audio_windows` (1, 49, 5, layers, width), `face_embedding` (1, 512)."""
    with torch.no_grad():
        audio = torch.cat([torch.zeros_like(audio_windows), audio_windows])
        return ClipConditioning(
            condition_latents=condition_latents,
            text_states=torch.cat([torch.zeros_like(text_states), text_states]),
            audio_tokens=model.encode_audio(audio),
            face_tokens=model.encode_face(torch.cat([face_embedding, face_embedding])),
            reference_kv=reference_kv,
        )


class GuidedDenoiser:
    """`denoiser(x, step) -> guided x0` for `sample_vp_dpmpp_2m`."""

    def __init__(self, model: Hallo3Transformer, conditioning: ClipConditioning, schedule: Schedule,
                 cfg_scale: float = OFFICIAL_CFG_SCALE):
        self.model = model
        self.conditioning = conditioning
        self.schedule = schedule
        self.cfg_scale = cfg_scale

    def velocity(self, x: torch.Tensor, timestep: int) -> torch.Tensor:
        """The batched [uncond, cond] v prediction for noisy latents x (1, t, 16, h, w)."""
        c = self.conditioning
        batch = torch.cat([x, x]).to(self.model.dtype)
        latents = torch.cat([batch, torch.cat([c.condition_latents] * 2).to(batch.dtype)], dim=2)
        timesteps = torch.full((2,), float(timestep), device=x.device)
        with torch.no_grad():
            return self.model(latents, timesteps, c.text_states, c.audio_tokens, c.face_tokens, c.reference_kv)

    def __call__(self, x: torch.Tensor, step: int) -> torch.Tensor:
        v = self.velocity(x, self.schedule.timesteps[step])
        alpha = self.schedule.denoiser_alphas[step].to(x.device).expand(2)
        x0 = v_to_x0(v, torch.cat([x, x]).to(torch.float32), alpha)
        return apply_cfg(x0, self.cfg_scale)
