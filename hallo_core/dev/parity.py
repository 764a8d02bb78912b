"""`parity`: compare our implementation with numbers recorded from the official code (docs/fidelity.md).

A golden is a triple: weights with official key names, an io file (inputs, intermediates, outputs, a sampler replay)
and a JSON description. The weights go through the same loader as real checkpoints; every golden tensor that our code
can reproduce is compared and its max abs difference reported.
"""

from __future__ import annotations

import torch

from ..hallo3.checkpoint import TransformerWeights, load_reference_net, load_transformer
from ..hallo3.denoiser import ClipConditioning, GuidedDenoiser
from ..hallo3.sampler import apply_cfg, full_alpha_table, replayed_noise, sample_vp_dpmpp_2m, sat_schedule, v_to_x0
from .golden_files import read_golden_description, read_golden_tensors

TOLERANCE = 1e-4


def run_parity(weights: str, io_path: str, config_path: str, device: str = "cpu") -> dict:
    description = read_golden_description(config_path)
    if description.get("model") == "hallo2_vq_upscaler":
        from .upscaler_parity import run_upscaler_parity

        return run_upscaler_parity(weights, io_path, config_path, device=device)
    if "unet_additional_kwargs" in description.get("config", {}):  # the Hallo / Hallo2 UNet goldens
        from .unet_parity import run_unet_parity
        return run_unet_parity(weights, io_path, description, device=device)
    return run_hallo3_parity(weights, io_path, description, device)


def _config_overrides(description: dict) -> dict:
    model = description.get("model", {}) if isinstance(description.get("model"), dict) else {}
    names = {"max_text_seq_length": "text_length", "latent_frames": "latent_frames",
             "latent_height": "latent_height", "latent_width": "latent_width"}
    return {ours: model[theirs] for theirs, ours in names.items() if theirs in model}


@torch.no_grad()
def run_hallo3_parity(weights: str, io_path: str, description: dict, device: str = "cpu") -> dict:
    io = {name: t.to(device) for name, t in read_golden_tensors(io_path).items()}
    dtype = torch.float32
    config = TransformerWeights(weights, "main").config(**_config_overrides(description))
    model = load_transformer(weights, dtype=dtype, device=device, config=config)
    reference_net = load_reference_net(weights, dtype=dtype, device=device, config=config)
    diffs: dict[str, float] = {}

    def compare(name: str, ours: torch.Tensor) -> None:
        if name in io:
            diffs[name] = float((ours.float() - io[name].float()).abs().max())

    bank, reference_output = reference_net(io["inputs.ref_latent"], return_output=True)
    for index, tokens in enumerate(bank):
        compare(f"intermediates.ref_bank.{index}", tokens)
    compare("intermediates.ref_out", reference_output)

    audio = io["inputs.audio_emb"]
    conditioning = ClipConditioning(
        condition_latents=io["inputs.concat"],
        text_states=torch.cat([io.get("inputs.text_uncond", torch.zeros_like(io["inputs.text_cond"])),
                               io["inputs.text_cond"]]),
        audio_tokens=model.encode_audio(torch.cat([torch.zeros_like(audio), audio])),
        face_tokens=model.encode_face(torch.cat([io["inputs.face_emb"]] * 2)),
        reference_kv=model.reference_key_values(bank),
    )
    compare("intermediates.audio_tokens_batched", conditioning.audio_tokens)
    compare("intermediates.face_tokens_batched", conditioning.face_tokens)

    cfg_scale = float(description.get("cfg", {}).get("scale", 3.5))
    one_step = GuidedDenoiser(model, conditioning, sat_schedule(1), cfg_scale)
    x = io["inputs.x_noisy"].float()
    step = description.get("step", {})
    timestep = int(io["inputs.timestep"].reshape(-1)[0]) if "inputs.timestep" in io else int(step["timestep"])
    v = one_step.velocity(x, timestep)
    compare("intermediates.v_pred_batched", v)
    table = full_alpha_table().to(device)
    alpha = (io["inputs.alpha_cumprod_sqrt_t"].float().reshape(-1)[:1] if "inputs.alpha_cumprod_sqrt_t" in io
             else torch.tensor([float(step["alpha_cumprod_sqrt_t"])], device=device))
    quantised = table[(alpha[None, :] - table[:, None]).abs().argmin(dim=0)].expand(2)
    compare("outputs.denoised_guided", apply_cfg(v_to_x0(v, torch.cat([x, x]), quantised), cfg_scale))

    if "sampler_run.x_init" in io:
        draws = [io[f"sampler_run.noise_draws.{i}"] for i in range(len(io)) if f"sampler_run.noise_draws.{i}" in io]
        # The official sampler draws once at the first step and twice at each middle step.
        steps = int(description.get("sampler_run_steps", (len(draws) + 3) // 2))
        schedule = sat_schedule(steps)
        denoiser = GuidedDenoiser(model, conditioning, schedule, cfg_scale)
        final = sample_vp_dpmpp_2m(denoiser, io["sampler_run.x_init"], schedule, replayed_noise(draws))
        compare("sampler_run.x_final", final)

    return {"model": "hallo3", "ok": bool(diffs) and max(diffs.values()) <= TOLERANCE, "tolerance": TOLERANCE,
            "max_abs_diff": diffs}
