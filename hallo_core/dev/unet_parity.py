"""`parity` for the Hallo / Hallo2 UNet goldens (numbers recorded from the official code, tiny width, fp32).

The golden weights (official net.pth names, plus a `vae.` AutoencoderKL) go through the real loaders; every golden
tensor this code can reproduce is compared. The official code rounds the reference bank to fp16 even in fp32, so a
re-implementation that differs from it by ~1e-7 before the cast flips isolated roundings by one fp16 ulp, and every
later tensor inherits ~1e-5. Comparisons are therefore staged, as the golden's `tolerance` block prescribes:

1. `reference`: the per-clip networks: the ReferenceNet bank before the cast, image/audio tokens, face-locator
   features, VAE latents: within 1e-5 per unit of the tensor's largest magnitude (fp32 noise scales with it);
2. `bank_cast`: the cast bank: equal but for isolated rounding flips (each within the pre-cast difference plus one
   fp16 ulp, on at most 2 % of the elements; a missing or extra rounding changes nearly all of them);
3. `denoiser`: the golden's cast bank injected: the step-0 sub-module outputs (forward hooks on the modules of the
   same official names), the batched and guided v, and each sampler step replayed from the golden's latents: as 1.;
4. `end_to_end` and `loops`: our own bank and sampler from the golden noise (the recorded call, and the 2-clip loops
   of Hallo and Hallo2): within 10x the official code's own measured noise per tensor
   (`implementation_noise_reference`).

The scheduler tables are checked too: timesteps and previous timesteps exactly, the alphas within 1e-6.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

import torch

from ..hallo_unet.checkpoint import UNetModels, load_networks
from ..hallo_unet.clip import ClipInputs, decode_latents, denoise_clip, encode_frames, motion_frame_pixels, prepare_clip
from ..render.motion import MotionOptions, motion_keep_mask

HALLO2_MOTION = MotionOptions(frames=2, pixel_dropout=0.25, protect_face=True)  # inference_long.py: use_mask, 0.25
from ..hallo_unet.sampler import apply_cfg, ddim_schedule, sample_ddim
from ..hallo_unet.vae import load_vae
from .golden_files import read_golden_tensors

STAGE_ABS = 1e-5  # stages 1 and 3: the official code's fp32 noise level, per unit of the tensor's magnitude
NOISE_FACTOR = 10.0  # stage 4: times the official code's own measured noise
NOISE_FLOOR = 1e-6  # stage 4 bound where the recorded noise is 0
FLIP_FRACTION = 0.02  # stage 2: at most this share of the cast bank may differ (official vs itself: 0.7 %)


class _Report:
    def __init__(self, io: dict[str, torch.Tensor], noise: dict[str, float]):
        self.io, self.noise = io, noise
        self.diffs: dict[str, dict[str, float]] = {}
        self.stages: dict[str, dict] = {}

    def compare(self, stage: str, name: str, ours: torch.Tensor, bound: float | None = None) -> None:
        """Max abs difference to the golden tensor; `bound` None: STAGE_ABS relative to the tensor's magnitude
        (fp32 rounding noise grows with it)."""
        if name not in self.io:
            return
        golden = self.io[name].to(torch.float64)
        ours = ours.detach().to(torch.float64).reshape(golden.shape)
        diff = float((ours - golden).abs().max()) if golden.numel() else 0.0
        if bound is None:
            bound = STAGE_ABS * max(1.0, float(golden.abs().max()) if golden.numel() else 0.0)
        self.diffs.setdefault(stage, {})[name] = diff
        entry = self.stages.setdefault(stage, {"ok": True, "worst": None, "count": 0})
        entry["count"] += 1
        if not diff <= bound:
            entry["ok"] = False
        ratio = diff / bound if bound > 0 else (0.0 if diff == 0 else float("inf"))
        if entry["worst"] is None or ratio > entry["worst"][1]:
            entry["worst"] = (name, ratio)

    def stage1(self, name: str, ours: torch.Tensor) -> None:
        self.compare("reference", name, ours)

    def stage4(self, stage: str, name: str, ours: torch.Tensor) -> None:
        self.compare(stage, name, ours, max(NOISE_FLOOR, NOISE_FACTOR * self.noise.get(name, 0.0)))

    def bank_cast(self, name: str, ours: torch.Tensor, ours_precast: torch.Tensor, golden_precast: torch.Tensor | None
                  ) -> None:
        """The cast bank differs from the golden's only by roundings: by at most the pre-cast difference plus one
        fp16 ulp per element, and on few elements (a missing or extra rounding changes nearly all of them)."""
        golden = self.io[name]
        diff = (ours.detach().float().reshape(golden.shape) - golden).abs()
        allowed = _fp16_ulp(golden)
        if golden_precast is not None:
            allowed = allowed + (ours_precast.detach().float().reshape(golden.shape) - golden_precast).abs()
        entry = self.stages.setdefault("bank_cast", {"ok": True, "flipped": 0, "elements": 0})
        entry["flipped"] += int((diff > 0).sum())
        entry["elements"] += diff.numel()
        if bool((diff > allowed).any()):
            entry["ok"] = False
        self.diffs.setdefault("bank_cast", {})[name] = float(diff.max())

    def result(self) -> dict:
        bank = self.stages.get("bank_cast")
        if bank is not None and bank["elements"]:
            bank["flipped_fraction"] = bank["flipped"] / bank["elements"]
            bank["ok"] = bank["ok"] and bank["flipped_fraction"] <= FLIP_FRACTION
        for entry in self.stages.values():
            if entry.get("worst") is not None:
                entry["worst"] = {"tensor": entry["worst"][0], "diff_over_bound": entry["worst"][1]}
        ok = bool(self.diffs) and all(entry["ok"] for entry in self.stages.values())
        return {"model": "hallo_unet", "ok": ok, "stages": self.stages, "max_abs_diff": self.diffs}


def _fp16_ulp(values: torch.Tensor) -> torch.Tensor:
    """One fp16 ulp at each value (values already fp16-representable)."""
    half = values.abs().to(torch.float16).float()
    exponent = torch.floor(torch.log2(half.clamp_min(2.0**-14)))
    return torch.pow(2.0, exponent - 10)


def _pyramids(io: dict, prefix: str, levels: int) -> list[torch.Tensor]:
    return [io[f"{prefix}.{level}"] for level in range(levels)]


def _clip_inputs(io: dict, reference_latents: torch.Tensor, audio_windows: torch.Tensor, motion_scale) -> ClipInputs:
    levels = len([k for k in io if re.fullmatch(r"inputs\.full_mask\.\d+", k)])
    return ClipInputs(
        reference_latents=reference_latents,
        face_embedding=io["inputs.face_emb"],
        face_region=io["inputs.face_region"],
        full_mask=_pyramids(io, "inputs.full_mask", levels),
        face_mask=_pyramids(io, "inputs.face_mask", levels),
        lip_mask=_pyramids(io, "inputs.lip_mask", levels),
        audio_windows=audio_windows,
        motion_scale=motion_scale,
    )


class _Recorder:
    """Forward hooks on the denoiser's modules named in the golden's `intermediates.step0.*` tensors."""

    def __init__(self, denoiser: torch.nn.Module, names: list[str]):
        self.order: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        self.handles = []
        wanted = {name.rsplit(".", 1)[0] for name in names}
        modules = dict(denoiser.named_modules())
        for path in sorted(wanted):
            for candidate in [path] + [m for m in modules if m.startswith(path + ".") and _is_layer(path, m)]:
                if candidate in modules and not any(h[0] == candidate for h in self.handles):
                    hook = modules[candidate].register_forward_hook(self._hook(candidate))
                    self.handles.append((candidate, hook))

    def _hook(self, name: str) -> Callable:
        def record(module, args, output):
            output = output[0] if isinstance(output, tuple) else output
            self.order.append((name, args[0] if args else None, output))

        return record

    def close(self) -> None:
        for _, hook in self.handles:
            hook.remove()

    def lookup(self, path: str, suffix: str) -> torch.Tensor | None:
        for name, inputs, output in self.order:
            if name == path:
                return inputs if suffix == "in" else output
        layers = [(name, out) for name, _, out in self.order if name.startswith(path + ".") and _is_layer(path, name)]
        return layers[-1][1] if suffix == "out" and layers else None


def _is_layer(block: str, name: str) -> bool:
    """A block's direct layer modules (resnets.K, attentions.K, ..., downsamplers.0, upsamplers.0)."""
    return re.fullmatch(re.escape(block) + r"\.(resnets|attentions|audio_modules|motion_modules|downsamplers|"
                        r"upsamplers)\.\d+", name) is not None


def _as_golden_layout(ours: torch.Tensor, golden: torch.Tensor) -> torch.Tensor:
    """Our `(batch frames) c h w` rows -> the golden's (batch, c, frames, h, w); a module run over motion frames
    and frames is cut to its last `frames` when the golden holds the block's output."""
    if golden.dim() == 5 and ours.dim() == 4:
        batches, frames = golden.shape[0], golden.shape[2]
        ours = ours.unflatten(0, (batches, ours.shape[0] // batches))[:, -frames:]
        return ours.transpose(1, 2)
    return ours


@torch.no_grad()
def run_unet_parity(weights: str, io_path: str, description: dict, device: str = "cpu") -> dict:
    io = {name: t.to(device) for name, t in read_golden_tensors(io_path).items()}
    noise = description.get("implementation_noise_reference", {}).get("max_abs_diff", {})
    config = description["config"]
    call = description.get("call", {})
    report = _Report(io, noise)
    dtype = torch.float32

    networks = load_networks(weights, dtype=dtype, device=device)
    vae = load_vae(weights, dtype=dtype, device=device, config=config.get("vae_config_json"))
    models = UNetModels(networks=networks, vae=vae)
    steps = int(call.get("num_inference_steps", config.get("num_inference_steps", 3)))
    cfg_scale = float(call.get("guidance_scale", config.get("guidance_scale", 3.5)))
    motion_scale = [float(v) for v in call.get("motion_scale", io["inputs.motion_scale"].tolist())]
    frames = int(call.get("video_length", config.get("video_length", 16)))

    # 1. per-clip networks
    ref_image = io["inputs.ref_image"][0]
    ref_latents = encode_frames(vae, ref_image)
    report.stage1("intermediates.ref_latents", ref_latents)
    inputs = _clip_inputs(io, ref_latents, io["inputs.audio_proj_in"], motion_scale)
    prepared = prepare_clip(models, inputs, cfg_scale, keep_bank=True)
    report.stage1("intermediates.image_tokens", prepared.image_tokens)
    report.stage1("intermediates.audio_tokens", prepared.audio_tokens)
    report.stage1("intermediates.face_locator", prepared.face_features[:, :, None].expand(-1, -1, frames, -1, -1))
    for path, entry in prepared.bank.items():
        report.stage1(f"intermediates.ref_bank_fp32.{path}", entry)

    # 2. the fp16 cast of our bank, as the denoiser reads it
    for path, entry in prepared.bank_read.items():
        if f"intermediates.ref_bank.{path}" in io:
            report.bank_cast(f"intermediates.ref_bank.{path}", entry, prepared.bank[path],
                             io.get(f"intermediates.ref_bank_fp32.{path}"))

    # 3. the denoiser with the golden's cast bank
    prefix = "intermediates.ref_bank."
    golden_bank = {k[len(prefix):]: v for k, v in io.items() if k.startswith(prefix)}
    injected = prepare_clip(models, inputs, cfg_scale, bank=golden_bank)
    for path, reference in injected.conditioning.reference.items():
        name = f"intermediates.step0.{path.rsplit('.transformer_blocks', 1)[0]}.motion_frames"
        report.compare("denoiser", name, reference.motion_frames)
    step0 = [k[len("intermediates.step0."):] for k in io if k.startswith("intermediates.step0.")]
    schedule = ddim_schedule(steps)
    latents = io["inputs.latents_init"]
    for i, timestep in enumerate(schedule.timesteps):  # each step replayed from the golden's latents
        x = latents if i == 0 else io[f"intermediates.latents.step{i - 1}"]
        one = dataclasses.replace(schedule, timesteps=(timestep,), prev_timesteps=(schedule.prev_timesteps[i],),
                                  alpha_prod=(schedule.alpha_prod[i],), alpha_prod_prev=(schedule.alpha_prod_prev[i],))
        recorder = _Recorder(networks.denoiser, step0 if i == 0 else [])
        batched_v: list[torch.Tensor] = []
        try:
            after = sample_ddim(_recording_velocity(models, injected, cfg_scale, batched_v), x, one)
        finally:
            recorder.close()
        report.compare("denoiser", f"intermediates.v_batched.step{i}", batched_v[0])
        report.compare("denoiser", f"intermediates.v_guided.step{i}", apply_cfg(batched_v[0], cfg_scale))
        report.compare("denoiser", f"intermediates.latents.step{i}", after)
        for name in step0 if i == 0 else []:
            path, suffix = name.rsplit(".", 1)
            ours = recorder.lookup(path, suffix)
            if ours is not None and suffix != "motion_frames":
                golden = io[f"intermediates.step0.{name}"]
                report.compare("denoiser", f"intermediates.step0.{name}", _as_golden_layout(ours, golden))

    # scheduler tables
    _compare_schedule(report, io, steps)

    # 4. end to end: our bank, our sampler, from the golden noise
    batched_v: list[torch.Tensor] = []
    trajectory: list[torch.Tensor] = []
    final = sample_ddim(_recording_velocity(models, prepared, cfg_scale, batched_v), latents, schedule,
                        callback=lambda info: trajectory.append(info["x"]))
    trajectory.append(final)
    for i, v_batched in enumerate(batched_v):
        report.stage4("end_to_end", f"intermediates.v_batched.step{i}", v_batched)
        report.stage4("end_to_end", f"intermediates.v_guided.step{i}", apply_cfg(v_batched, cfg_scale))
        report.stage4("end_to_end", f"intermediates.latents.step{i}", trajectory[i + 1])
    report.stage4("end_to_end", "outputs.frames", decode_latents(vae, final))

    # 4b. the 2-clip loops of Hallo (v1) and Hallo2 (v2)
    for variant in ("v1", "v2"):
        if any(k.startswith(f"loop.{variant}.") for k in io):
            _run_loop(report, models, description, variant, io, steps, cfg_scale, motion_scale)
    return report.result()


def _recording_velocity(models: UNetModels, prepared, cfg_scale: float, record: list) -> Callable:
    def velocity(x: torch.Tensor, timestep: int) -> torch.Tensor:
        v = models.networks.denoiser(torch.cat([x] * 2), timestep, prepared.conditioning)
        record.append(v)
        return apply_cfg(v, cfg_scale)

    return velocity


def _compare_schedule(report: _Report, io: dict, steps: int) -> None:
    prefix = "intermediates.scheduler."
    for suffix, count in (("", steps), ("_40", 40)):
        if f"{prefix}timesteps{suffix}" not in io:
            continue
        schedule = ddim_schedule(count)
        report.compare("scheduler", f"{prefix}timesteps{suffix}", torch.tensor(schedule.timesteps), 0.0)
        report.compare("scheduler", f"{prefix}prev_timesteps{suffix}", torch.tensor(schedule.prev_timesteps), 0.0)
        if not suffix:
            report.compare("scheduler", f"{prefix}alphas_cumprod", schedule.alphas_cumprod, 1e-6)
            report.compare("scheduler", f"{prefix}alpha_prod_t", torch.stack(schedule.alpha_prod), 1e-6)
            report.compare("scheduler", f"{prefix}alpha_prod_t_prev", torch.stack(schedule.alpha_prod_prev), 1e-6)


def _run_loop(report: _Report, models: UNetModels, description: dict, variant: str, io: dict, steps: int,
              cfg_scale: float, motion_scale) -> None:
    """The official clip loop (hallo scripts/inference.py; hallo2 scripts/inference_long.py with the pixel drop)."""
    loop = description.get("loop", {})
    clips = int(loop.get("clips", 2))
    frames = int(description.get("call", {}).get("video_length", 16))
    seed = int(description.get("seeds", {}).get("pipeline_generator", 42))
    audio_length = int(description.get("loop_audio_length", loop.get("audio_length", clips * frames)))
    generator = torch.Generator().manual_seed(seed)  # the official global generator, seeded once per loop
    reference = io["inputs.ref_image"][0, 0]
    windows = io["inputs.audio_windows"]
    latent_hw = tuple(io["inputs.latents_init"].shape[-2:])
    previous = None
    video = []
    for clip in range(clips):
        name = f"loop.{variant}.clip{clip}."
        rows = motion_frame_pixels(reference, previous)
        if variant == "v2":
            face = io["inputs.face_region"][0].bool().any(0)
            keep = motion_keep_mask(HALLO2_MOTION, generator, tuple(rows.shape[-2:]), face)
            report.stage4("loops", name + "keep_mask", keep.to(torch.uint8))
            rows = torch.cat([rows[:1], rows[1:] * keep])
        report.stage4("loops", name + "ref_image", rows)
        latents = torch.randn((1, 4, frames, *latent_hw), generator=generator)
        report.stage4("loops", name + "latents_init", latents)
        ref_latents = encode_frames(models.vae, rows)
        report.stage4("loops", name + "ref_latents", ref_latents)
        inputs = _clip_inputs(io, ref_latents, windows[clip * frames:(clip + 1) * frames][None], motion_scale)
        prepared = prepare_clip(models, inputs, cfg_scale)
        report.stage4("loops", name + "audio_tokens", prepared.audio_tokens)
        final = denoise_clip(models, prepared, latents, steps, cfg_scale)
        report.stage4("loops", name + "latents_final", final)
        decoded = decode_latents(models.vae, final)
        report.stage4("loops", name + "frames", decoded)
        report.stage4("loops", name + "frames_last2", decoded[:, :, -2:])
        previous = decoded[0]
        video.append(decoded)
    name = f"loop.{variant}.video_uint8"
    if name in io:
        frames_uint8 = torch.cat(video, dim=2)[0, :, :audio_length].permute(1, 2, 3, 0)
        quantised = (frames_uint8 * 255).clamp(0, 255).to(torch.uint8)  # truncation, as numpy astype
        report.compare("loops", name, quantised, 1.0)
