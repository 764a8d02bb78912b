"""The official Hallo3 sampler: SAT's zero-terminal-SNR schedule and VP-SDE DPM-Solver++(2M).

diffusers' `CogVideoXDPMScheduler` is close but not equal: it rescales the schedule over all 1000 steps instead of
the sampled subset and does not quantise the denoiser's alpha, which moves x0 by ~5e-3. So the SAT maths is written
out here, in float32 and in the official order of operations.

Layout follows k-diffusion: `sat_schedule` builds the schedule, `sample_vp_dpmpp_2m` is one function of
(denoiser, x, schedule, noise, callback), and `guided_denoiser` turns the transformer into that denoiser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012


@dataclass(frozen=True)
class Schedule:
    """Per sampler step i (0 = most noisy): network timestep, sampler alpha, and the denoiser's quantised alpha.

    `alphas` has one more entry than steps: the final 1.0 (clean).
    """

    timesteps: tuple[int, ...]
    alphas: torch.Tensor  # float32, sqrt(alpha_cumprod) rescaled on the step subset, [0 ... ~0.99, 1]
    denoiser_alphas: torch.Tensor  # float32, alphas[:-1] snapped to the nearest 1000-step table entry

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


def _alphas_cumprod() -> np.ndarray:
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float64) ** 2
    return np.cumprod(1.0 - betas.numpy(), axis=0)


def _zero_snr_sqrt(alphas_cumprod: np.ndarray) -> torch.Tensor:
    """sqrt(alpha_cumprod) shifted and scaled so the last entry is 0 and the first unchanged (float32, as SAT)."""
    a = torch.tensor(alphas_cumprod, dtype=torch.float32).sqrt()
    first, last = a[0].clone(), a[-1].clone()
    a -= last
    a *= first / (first - last)
    return a


def full_alpha_table() -> torch.Tensor:
    """The denoiser's 1000-entry table, indexed by timestep (a[0] ~ 0.9996, a[999] = 0)."""
    return _zero_snr_sqrt(_alphas_cumprod())


def sat_schedule(num_steps: int = 50) -> Schedule:
    if not 1 <= num_steps <= NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"steps must be between 1 and {NUM_TRAIN_TIMESTEPS}")
    if num_steps < NUM_TRAIN_TIMESTEPS:
        timesteps = np.linspace(NUM_TRAIN_TIMESTEPS - 1, 0, num_steps, endpoint=False).astype(int)[::-1].copy()
    else:
        timesteps = np.arange(NUM_TRAIN_TIMESTEPS)
    # The zero-SNR rescale is applied to the subset itself (its first entry is alpha at timestep ~19, not 0).
    subset = torch.flip(_zero_snr_sqrt(_alphas_cumprod()[timesteps]), (0,))
    alphas = torch.cat([subset, subset.new_ones(1)])
    table = full_alpha_table()
    nearest = (subset[None, :] - table[:, None]).abs().argmin(dim=0)
    return Schedule(
        timesteps=tuple(int(t) for t in timesteps[::-1]),
        alphas=alphas,
        denoiser_alphas=table[nearest],
    )


NoiseSource = Callable[[torch.Tensor], torch.Tensor]


def generator_noise(generator: torch.Generator) -> NoiseSource:
    """Standard normal noise like x, float32, drawn from `generator` on its own device."""

    def draw(like: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(like.shape, generator=generator, dtype=torch.float32, device=generator.device)
        if like.device.type == "cuda" and noise.device.type == "cpu":
            # From page-locked memory the copy is asynchronous: the host does not wait for the device between steps.
            return noise.pin_memory().to(like.device, non_blocking=True)
        return noise.to(like.device)

    return draw


def replayed_noise(draws: Sequence[torch.Tensor]) -> NoiseSource:
    """Noise taken from recorded draws, in order (for replaying an official run)."""
    iterator: Iterator[torch.Tensor] = iter(draws)

    def draw(like: torch.Tensor) -> torch.Tensor:
        return next(iterator).to(device=like.device, dtype=torch.float32)

    return draw


def _log_snr(a: torch.Tensor) -> torch.Tensor:
    alpha_cumprod = a**2
    return ((alpha_cumprod / (1 - alpha_cumprod)) ** 0.5).log()


@torch.no_grad()
def sample_vp_dpmpp_2m(
    denoiser: Callable[[torch.Tensor, int], torch.Tensor],
    x: torch.Tensor,
    schedule: Schedule,
    noise: NoiseSource,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """VP-SDE DPM-Solver++(2M) from pure noise `x` to x0; `denoiser(x, step) -> x0` (already guided).

    Noise is drawn exactly as the official sampler does: once at step 0, twice at every middle step (the first draw
    is discarded), none at the last step, which returns the denoiser's x0 directly.
    """
    x = x.to(torch.float32)
    ones = x.new_ones([x.shape[0]])
    a = schedule.alphas.to(x.device)
    x0_previous = None
    last = schedule.num_steps - 1
    for i in range(schedule.num_steps):
        x0 = denoiser(x, i).to(torch.float32)
        if callback is not None:
            callback({"step": i, "steps": schedule.num_steps, "x": x, "denoised": x0})
        if i == last:
            return x0
        a_now, a_next = ones * a[i], ones * a[i + 1]
        lam, lam_next = _log_snr(a_now), _log_snr(a_next)
        h = lam_next - lam
        mult1 = _expand(((1 - a_next**2) / (1 - a_now**2)) ** 0.5 * (-h).exp(), x)
        mult2 = _expand((-2 * h).expm1() * a_next, x)
        mult_noise = _expand((1 - a_next**2) ** 0.5 * (1 - (-2 * h).exp()) ** 0.5, x)
        x_first_order = mult1 * x - mult2 * x0 + mult_noise * noise(x)
        if x0_previous is None:
            x = x_first_order
        else:
            r = (lam - _log_snr(ones * a[i - 1])) / h
            x0_mixed = _expand(1 + 1 / (2 * r), x) * x0 - _expand(1 / (2 * r), x) * x0_previous
            x = mult1 * x - mult2 * x0_mixed + mult_noise * noise(x)
        x0_previous = x0
    return x


def _expand(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def v_to_x0(v: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """v-prediction -> x0 with SAT's VideoScaling: c_skip = a, c_out = -sqrt(1 - a^2)."""
    alpha = _expand(alpha.to(torch.float32), x)
    return v * -((1 - alpha**2) ** 0.5) + x * alpha


def apply_cfg(x0: torch.Tensor, scale: float) -> torch.Tensor:
    """[uncond; cond] x0 batch -> uncond + scale * (cond - uncond)."""
    uncond, cond = x0.chunk(2)
    return uncond + scale * (cond - uncond)
