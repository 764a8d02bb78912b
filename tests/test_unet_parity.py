"""Hallo / Hallo2 UNet against the official code's own numbers (tiny golden, fp32), and the traps parity catches."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import python_env

from hallo_core.dev.golden_files import read_golden_description, read_golden_tensors
from hallo_core.dev.unet_parity import _clip_inputs, _Report
from hallo_core.hallo_unet import clip as clip_module
from hallo_core.hallo_unet import denoiser as denoiser_module
from hallo_core.hallo_unet.checkpoint import UNetModels, load_networks
from hallo_core.hallo_unet.clip import prepare_clip
from hallo_core.hallo_unet.reference_net import bank_key

STEMS = "hallo_unet_tiny"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def report(golden_dir):
    # One thread: the tiny model's many small kernels gain little from more, and on a shared machine OpenMP threads
    # spinning for cores cost far more (measured 32 s on one thread vs 158 s on two under a load of 5).
    env = {**python_env(), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "hallo_core", "parity", "--weights", str(golden_dir / f"{STEMS}.weights.safetensors"),
         "--io", str(golden_dir / f"{STEMS}.io.safetensors"), "--config", str(golden_dir / f"{STEMS}.json")],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, "parity prints exactly one JSON line"
    return json.loads(lines[0])


def test_parity_passes_every_stage(report):
    assert report["model"] == "hallo_unet"
    assert report["ok"] is True, {k: v for k, v in report["stages"].items() if not v["ok"]}
    assert set(report["stages"]) == {"reference", "bank_cast", "denoiser", "scheduler", "end_to_end", "loops"}
    diffs = report["max_abs_diff"]
    # Every recorded tensor of each kind was compared.
    assert len([k for k in diffs["reference"] if "ref_bank_fp32" in k]) == 16
    assert len(diffs["bank_cast"]) == 16
    assert len([k for k in diffs["denoiser"] if ".step0." in k]) >= 50
    assert {f"loop.{v}.clip1.latents_final" for v in ("v1", "v2")} <= set(diffs["loops"])


def test_parity_figures_are_at_the_official_noise_level(report):
    diffs = report["max_abs_diff"]
    # With the golden bank the denoiser is pure fp32 noise (official code vs itself with another kernel: 3.6e-6).
    assert diffs["denoiser"]["intermediates.v_batched.step0"] < 1e-5
    assert max(v for k, v in diffs["reference"].items() if "ref_bank_fp32" in k) < 5e-5
    assert report["stages"]["bank_cast"]["flipped_fraction"] < 0.02
    # Exact pieces: the RNG draws, the Hallo2 pixel drop, the audio projection, the schedule's integers.
    for name in ("loop.v1.clip0.latents_init", "loop.v2.clip1.latents_init", "loop.v2.clip1.keep_mask",
                 "loop.v1.clip1.audio_tokens", "loop.v1.clip0.ref_image"):
        assert diffs["loops"][name] == 0.0, name
    assert diffs["scheduler"]["intermediates.scheduler.timesteps_40"] == 0.0
    assert diffs["scheduler"]["intermediates.scheduler.prev_timesteps"] == 0.0


# ---------------------------------------------------------------------------------------------------------------
# Negative controls: each trap of the official inference path, reproduced here by patching the one function that
# implements it, fails the parity tolerance of its stage.

@pytest.fixture(scope="module")
def golden(golden_dir):
    description = read_golden_description(str(golden_dir / f"{STEMS}.json"))
    io = read_golden_tensors(str(golden_dir / f"{STEMS}.io.safetensors"))
    networks = load_networks(golden_dir / f"{STEMS}.weights.safetensors")
    models = UNetModels(networks=networks, vae=None)
    inputs = _clip_inputs(io, io["intermediates.ref_latents"], io["inputs.audio_proj_in"],
                          description["call"]["motion_scale"])
    bank = {k[len("intermediates.ref_bank."):]: v for k, v in io.items() if k.startswith("intermediates.ref_bank.")}
    return models, inputs, bank, io


@torch.no_grad()
def _step0_report(golden) -> dict:
    models, inputs, bank, io = golden
    prepared = prepare_clip(models, inputs, 3.5, bank=bank)
    v = models.networks.denoiser(torch.cat([io["inputs.latents_init"]] * 2), 999, prepared.conditioning)
    report = _Report(io, {})
    report.compare("denoiser", "intermediates.v_batched.step0", v)
    return report.result()


def test_official_path_passes_with_the_golden_bank(golden):
    result = _step0_report(golden)
    assert result["ok"], result


def test_eval_mode_path_fails(golden, monkeypatch):
    def eval_layer(self, block, k, x, temb, cond):
        # What eval() would run: no motion frames, audio branches summed without weights, the 8x8 motion modules on.
        x = block.resnets[k](x, temb)
        if block.attentions is not None:
            x, _ = block.attentions[k](x, cond.image_tokens, cond.reference[bank_key(block.name, k)],
                                       cond.uncond_rows)
            x = block.audio_modules[k](x, cond.audio_tokens, cond.masks[block.level], (1.0, 1.0, 1.0))
        return block.motion_modules[k](x, cond.frames)

    monkeypatch.setattr(denoiser_module.HalloDenoiser, "_layer", eval_layer)
    result = _step0_report(golden)
    assert not result["ok"]
    assert result["max_abs_diff"]["denoiser"]["intermediates.v_batched.step0"] > 0.5  # golden json: 1.08


def test_uninterleaved_bank_copies_fail(golden, monkeypatch):
    monkeypatch.setattr(denoiser_module, "reference_copy_rows", lambda frames: torch.ones(frames, dtype=torch.long))
    result = _step0_report(golden)
    assert not result["ok"]
    assert result["max_abs_diff"]["denoiser"]["intermediates.v_batched.step0"] > 0.1  # golden json: 0.36


def _bank_cast_stage(golden, io_bank_precast) -> dict:
    models, inputs, _, io = golden
    with torch.no_grad():
        prepared = prepare_clip(models, inputs, 3.5, keep_bank=True)
    report = _Report(io, {})
    for path, entry in prepared.bank_read.items():
        report.bank_cast(f"intermediates.ref_bank.{path}", entry, prepared.bank[path],
                         io_bank_precast.get(f"intermediates.ref_bank_fp32.{path}"))
    return report.result()["stages"]["bank_cast"]


def test_unrounded_bank_fails(golden, monkeypatch):
    io = golden[3]
    assert _bank_cast_stage(golden, io)["ok"]
    monkeypatch.setattr(clip_module, "round_bank", lambda bank, dtype: {k: v.to(dtype) for k, v in bank.items()})
    stage = _bank_cast_stage(golden, io)
    assert not stage["ok"]
    assert stage["flipped_fraction"] > 0.5
