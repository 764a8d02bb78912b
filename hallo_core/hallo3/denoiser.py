"""The guided x0 denoiser of one clip: the transformer, its per-clip conditioning, v-prediction and CFG.

Official guidance: one batched call per step with rows [uncond, cond]; uncond has zero
text and zero audio features (the zero features still go through `audio_proj`), while face, reference and motion
conditioning are shared; x0 = a*x - sqrt(1-a^2)*v with the denoiser's quantised alpha; then
x0 = x0_u + scale * (x0_c - x0_u) with scale 3.5.

No host synchronisation inside a step: the per-step alphas live on the device from the start, and the conditioning
rows of each branch layout are gathered once per clip (indexing a GPU tensor with a Python list copies the index to
the device and waits for it).

Option (`LateCfgCache`, off by default, changes the result): the last share of the steps runs only the conditional
row and reuses the (cond - uncond) difference of the last full step: x0 = x0_c + (s - 1) * d. Those steps cost half.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..runtime.options import check_number
from .sampler import Schedule, apply_cfg, v_to_x0
from .transformer import Hallo3Transformer, ReferenceKV

OFFICIAL_CFG_SCALE = 3.5


@dataclass(frozen=True)
class SeparateGuidance:
    """The paper's separate guidance scales instead of the official single one (explicit option, costs more).

    Branches: uncond (no text, no audio), text (text, no audio), full (text and audio), and with `reference` a
    fourth without the identity reference tokens. x0 = n + s_ref (u - n) + s_text (t - u) + s_audio (f - t); with
    equal text and audio scales and no reference scale this is the official u + s (f - u), at 1.5x the cost
    (3 branches instead of 2; 2x with the reference branch).
    """

    text: float = OFFICIAL_CFG_SCALE
    audio: float = OFFICIAL_CFG_SCALE
    reference: float | None = None

    def __post_init__(self):
        check_number("text cfg", self.text, 0.0, 100.0)
        check_number("audio cfg", self.audio, 0.0, 100.0)
        if self.reference is not None:
            check_number("reference cfg", self.reference, 0.0, 100.0)


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


@dataclass
class LateCfgCache:
    """The last `fraction` of the steps compute the conditional row only and reuse the last full step's
    (cond - uncond) x0 difference. Off by default; changes the result (measured in docs/benchmarks.md)."""

    fraction: float
    difference: torch.Tensor | None = None

    def __post_init__(self):
        check_number("cfg cache share of steps", self.fraction, 0.0, 1.0, high_open=True)

    def first_cached_step(self, steps: int) -> int:
        return steps - int(self.fraction * steps)


class GuidedDenoiser:
    """`denoiser(x, step) -> guided x0` for `sample_vp_dpmpp_2m`."""

    def __init__(self, model: Hallo3Transformer, conditioning: ClipConditioning, schedule: Schedule,
                 cfg_scale: float = OFFICIAL_CFG_SCALE, separate: SeparateGuidance | None = None,
                 late_cfg: LateCfgCache | None = None):
        self.model = model
        self.conditioning = conditioning
        self.schedule = schedule
        self.cfg_scale = cfg_scale
        self.separate = separate
        self.late_cfg = late_cfg
        self._alphas: torch.Tensor | None = None  # the schedule's denoiser alphas on the device, once
        self._rows: dict[tuple, tuple] = {}  # branch layout -> its (text, audio, face) rows, gathered once

    def _branch_rows(self, text_rows: tuple, audio_rows: tuple):
        key = (text_rows, audio_rows)
        if key not in self._rows:
            c = self.conditioning
            self._rows[key] = (c.text_states[list(text_rows)], c.audio_tokens[list(audio_rows)],
                               c.face_tokens[[0] * len(text_rows)])
        return self._rows[key]

    def velocity(self, x: torch.Tensor, timestep: int, text_rows=(0, 1), audio_rows=(0, 1),
                 with_reference: bool = True) -> torch.Tensor:
        """The batched v prediction for noisy latents x (1, t, 16, h, w); row i uses the conditioning's text row
        `text_rows[i]` and audio row `audio_rows[i]` (0: zeros, 1: the clip's). Default: official [uncond, cond]."""
        c = self.conditioning
        rows = len(text_rows)
        batch = x.expand(rows, -1, -1, -1, -1).to(self.model.dtype)
        latents = torch.cat([batch, c.condition_latents.expand(rows, -1, -1, -1, -1).to(batch.dtype)], dim=2)
        timesteps = torch.full((rows,), float(timestep), device=x.device)
        text, audio, face = self._branch_rows(tuple(text_rows), tuple(audio_rows))
        reference = c.reference_kv if with_reference else None
        with torch.no_grad():
            return self.model(latents, timesteps, text, audio, face, reference)

    def __call__(self, x: torch.Tensor, step: int) -> torch.Tensor:
        timestep = self.schedule.timesteps[step]
        if self._alphas is None or self._alphas.device != x.device:
            self._alphas = self.schedule.denoiser_alphas.to(x.device)
        alpha = self._alphas[step]
        x32 = x.to(torch.float32)

        def denoised(v):
            return v_to_x0(v, x32.expand(v.shape[0], -1, -1, -1, -1), alpha.expand(v.shape[0]))

        late = self.late_cfg
        if late is not None and self.separate is None:
            if step >= late.first_cached_step(self.schedule.num_steps) and late.difference is not None:
                cond = denoised(self.velocity(x, timestep, (1,), (1,)))
                return cond + (self.cfg_scale - 1) * late.difference
            uncond, cond = denoised(self.velocity(x, timestep)).chunk(2)
            late.difference = cond - uncond
            return uncond + self.cfg_scale * (cond - uncond)
        if self.separate is None:
            return apply_cfg(denoised(self.velocity(x, timestep)), self.cfg_scale)
        s = self.separate
        uncond, text, full = denoised(self.velocity(x, timestep, (0, 1, 1), (0, 0, 1))).chunk(3)
        x0 = uncond + s.text * (text - uncond) + s.audio * (full - text)
        if s.reference is not None:
            bare = denoised(self.velocity(x, timestep, (0,), (0,), with_reference=False))
            x0 = x0 + (s.reference - 1) * (uncond - bare)
        return x0
