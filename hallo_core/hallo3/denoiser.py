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


# A guidance branch: (text row, audio row, with the identity reference tokens); row 0 is zeros, 1 the clip's.
Branch = tuple[int, int, bool]
UNCOND: Branch = (0, 0, True)
TEXT_ONLY: Branch = (1, 0, True)
COND: Branch = (1, 1, True)
NO_REFERENCE: Branch = (0, 0, False)


class GuidedDenoiser:
    """`denoiser(x, step) -> guided x0` for `sample_vp_dpmpp_2m`.

    A step evaluates the guidance `branches` (official: [uncond, cond]) with `velocities`, then `combine`s their x0.
    `velocities` is what a wrapper may replace on the instance to place the branches elsewhere (parallel/cfg.py puts
    one on each process); the guidance arithmetic stays here."""

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

    def branches(self, step: int) -> tuple[Branch, ...]:
        """The branches step `step` evaluates, in the order `combine` reads them."""
        if self.separate is not None:
            return (UNCOND, TEXT_ONLY, COND) + ((NO_REFERENCE,) if self.separate.reference is not None else ())
        late = self.late_cfg
        if late is not None and step >= late.first_cached_step(self.schedule.num_steps) and late.difference is not None:
            return (COND,)
        return (UNCOND, COND)

    def velocities(self, x: torch.Tensor, timestep: int, branches: tuple[Branch, ...]) -> torch.Tensor:
        """v of each branch, stacked in order; consecutive branches with the same reference setting are one batched
        transformer call (the reference-free branch cannot share a batch with the others)."""
        out, start = [], 0
        while start < len(branches):
            stop = start + 1
            while stop < len(branches) and branches[stop][2] == branches[start][2]:
                stop += 1
            group = branches[start:stop]
            out.append(self.velocity(x, timestep, tuple(b[0] for b in group), tuple(b[1] for b in group),
                                     group[0][2]))
            start = stop
        return out[0] if len(out) == 1 else torch.cat(out)

    def __call__(self, x: torch.Tensor, step: int) -> torch.Tensor:
        timestep = self.schedule.timesteps[step]
        if self._alphas is None or self._alphas.device != x.device:
            self._alphas = self.schedule.denoiser_alphas.to(x.device)
        alpha = self._alphas[step]
        x32 = x.to(torch.float32)
        branches = self.branches(step)
        v = self.velocities(x, timestep, branches)
        x0 = v_to_x0(v, x32.expand(v.shape[0], -1, -1, -1, -1), alpha.expand(v.shape[0]))
        return self.combine(branches, x0)

    def combine(self, branches: tuple[Branch, ...], x0: torch.Tensor) -> torch.Tensor:
        """The guided x0 from the branches' x0, stacked in the order of `branches`."""
        late = self.late_cfg
        if branches == (COND,):  # a late step of the CFG cache: the conditional row and the cached difference
            return x0 + (self.cfg_scale - 1) * late.difference
        if self.separate is None:
            if late is not None:  # keep the difference for the late steps
                uncond, cond = x0.chunk(2)
                late.difference = cond - uncond
                return uncond + self.cfg_scale * late.difference
            return apply_cfg(x0, self.cfg_scale)
        s = self.separate
        uncond, text, full = x0[:3].chunk(3)
        guided = uncond + s.text * (text - uncond) + s.audio * (full - text)
        if s.reference is not None:
            guided = guided + (s.reference - 1) * (uncond - x0[3:])
        return guided
