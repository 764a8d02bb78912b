"""The SAT sampler schedule and the DPM-Solver++(2M) noise pattern."""

import csv

import pytest
import torch

from hallo_core.hallo3.sampler import full_alpha_table, generator_noise, sample_vp_dpmpp_2m, sat_schedule


def test_schedule_matches_official_table(golden_dir):
    with open(golden_dir / "sat_schedule_50steps.csv") as f:
        rows = list(csv.DictReader(f))
    schedule = sat_schedule(50)
    table = full_alpha_table()
    assert len(rows) == schedule.num_steps == 50
    for i, row in enumerate(rows):
        assert schedule.timesteps[i] == int(row["timestep_t(net input)"])
        assert schedule.alphas[i].item() == pytest.approx(float(row["a_sub_sampler"]), abs=3e-7)
        quantised = int(row["quantized_idx"])
        assert table[quantised].item() == pytest.approx(float(row["a_full_at_idx(c_skip)"]), abs=3e-7)
        assert schedule.denoiser_alphas[i].item() == table[quantised].item()
    assert schedule.alphas[-1].item() == 1.0
    # The subset rescale differs from diffusers' full-table alphas by up to ~6e-4 (spec 4.6), so it must not be used.
    diffusers_alpha = torch.tensor([float(r["a_diffusers_at_t"]) for r in rows])
    assert (schedule.alphas[:-1] - diffusers_alpha).abs().max() > 1e-4


def test_three_step_schedule():
    schedule = sat_schedule(3)
    assert schedule.timesteps == (999, 666, 333)
    assert schedule.alphas[0].item() == 0.0


def test_sampler_draws_noise_as_official():
    draws = []
    generator = torch.Generator().manual_seed(0)
    base = generator_noise(generator)

    def counting_noise(like):
        draws.append(len(draws))
        return base(like)

    calls = []

    def denoiser(x, step):
        calls.append(step)
        return torch.zeros_like(x)

    x = torch.randn(1, 2, 3, 4, 4)
    out = sample_vp_dpmpp_2m(denoiser, x, sat_schedule(5), counting_noise)
    assert calls == [0, 1, 2, 3, 4]
    assert len(draws) == 1 + 2 * 3  # step 0: one draw; steps 1..3: two; last step: none
    assert torch.equal(out, torch.zeros_like(x))  # the last step returns the denoiser's x0


def test_sampler_is_reproducible_with_a_seed():
    def denoiser(x, step):
        return 0.5 * x

    x = torch.randn(1, 2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    run = lambda seed: sample_vp_dpmpp_2m(denoiser, x, sat_schedule(4),
                                          generator_noise(torch.Generator().manual_seed(seed)))
    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))
