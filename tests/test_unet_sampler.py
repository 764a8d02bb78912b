"""The official Hallo DDIM sampler: tables against the golden, steps against diffusers' DDIMScheduler bit for bit."""

import pytest
import torch
from diffusers import DDIMScheduler

from hallo_core.dev.golden_files import read_golden_tensors
from hallo_core.hallo_unet.sampler import OFFICIAL_SCHEDULER, apply_cfg, ddim_schedule, sample_ddim


@pytest.fixture(scope="module")
def tables(golden_dir):
    io = read_golden_tensors(str(golden_dir / "hallo_unet_tiny.io.safetensors"))
    return {k[len("intermediates.scheduler."):]: v for k, v in io.items() if k.startswith("intermediates.scheduler.")}


def test_schedule_tables_match_the_golden(tables):
    three, forty = ddim_schedule(3), ddim_schedule(40)
    assert three.timesteps == (999, 666, 332) == tuple(tables["timesteps"].tolist())
    # The official previous timestep is t - 1000 // N, not the next timestep: 666 -> 333, not 332.
    assert three.prev_timesteps == (666, 333, -1) == tuple(tables["prev_timesteps"].tolist())
    assert forty.timesteps == tuple(tables["timesteps_40"].tolist())
    assert forty.prev_timesteps == tuple(tables["prev_timesteps_40"].tolist())
    assert forty.timesteps[0] == 999 and forty.timesteps[-1] == 24 and forty.prev_timesteps[-1] == -1
    # Same diffusers code, another machine's float rounding: at most 2 float32 ulps apart.
    assert (three.alphas_cumprod - tables["alphas_cumprod"]).abs().max() < 1e-6
    assert float(three.alphas_cumprod[999]) == 0.0  # zero terminal SNR
    assert (torch.stack(three.alpha_prod) - tables["alpha_prod_t"]).abs().max() < 1e-6
    assert (torch.stack(three.alpha_prod_prev) - tables["alpha_prod_t_prev"]).abs().max() < 1e-6
    assert float(three.alpha_prod_prev[-1]) == 1.0  # final alpha 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("steps", [3, 40])
def test_sampler_steps_equal_diffusers_ddim_bitwise(dtype, steps):
    generator = torch.Generator().manual_seed(steps)
    weights = torch.randn(4, 4, generator=generator).to(dtype)

    def model(x, timestep):  # any deterministic v-prediction will do
        return torch.tanh(torch.einsum("ij,bjfhw->bifhw", weights, x) * (1 + timestep / 1000))

    x_init = torch.randn(1, 4, 2, 3, 3, generator=generator).to(dtype)
    seen = []
    ours = sample_ddim(model, x_init, ddim_schedule(steps), callback=seen.append)

    scheduler = DDIMScheduler(**OFFICIAL_SCHEDULER)
    scheduler.set_timesteps(steps)
    x = x_init
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, int(t)), t, x, eta=0.0, return_dict=False)[0]
    assert ours.dtype == dtype and torch.equal(ours, x)
    assert [info["step"] for info in seen] == list(range(steps)) and seen[0]["timestep"] == 999
    assert torch.equal(seen[0]["x"], x_init)


def test_cfg_is_uncond_plus_scaled_difference():
    v = torch.stack([torch.full((2,), 1.0), torch.full((2,), 3.0)])
    assert torch.equal(apply_cfg(v, 3.5), torch.full((1, 2), 8.0))
