"""`bench --backbone hallo2`: speed and memory of one Hallo / Hallo2 clip through the real backbone, per memory preset.

Random weights at the official size (`full`: SD1.5 widths, 512x512 frames, the SD VAE) or the tiny test size, made
once in host memory. Each preset renders the same clip (16 frames after 2 motion frames, `--steps` DDIM steps with CFG)
with `UNetBackbone` and `LocalModels`, exactly as `generate --backbone hallo2 --memory ...` does; only the front-ends
(InsightFace, MediaPipe, wav2vec2) are replaced by fixed conditioning, which no preset changes. Per preset: each phase's
peak GPU memory (allocated and reserved) and wall time, the median guided step, the clip's time, seconds per output
second (a clip adds 0.64 s), and the frames' deviation from the first preset's.
"""

from __future__ import annotations

import gc
import time
from types import SimpleNamespace

import torch

from ..audio import Audio
from ..audio.wav2vec_features import AudioFeatures
from ..face.hierarchical_masks import masks_from_regions
from ..hallo_unet.backbone import CLIP_FRAMES, UNetBackbone, UNetSpeech, UNetVideo
from ..hallo_unet.checkpoint import NETWORKS, fp8_storage
from ..hallo_unet.config import HalloUNetConfig
from ..hallo_unet.loaders import UNetProjections
from ..memory.weight_casting import enable_weight_casting
from ..runtime.options import EngineOptions, dtype_name
from .bench_support import device_name, median_interval, random_module, start_peak, sync
from .preset_bench import MeasuredModels, _sharing_copy
from .tiny_unet import TINY_FRAME_SIZE, TINY_VAE_CONFIG, tiny_config

SD_VAE_CONFIG = {  # sd-vae-ft-mse
    "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
    "act_fn": "silu", "latent_channels": 4, "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215,
}
WAV2VEC_LAYERS = 12
NEW_SECONDS_PER_CLIP = CLIP_FRAMES / 25


def _host_networks(config: HalloUNetConfig, vae_config: dict, dtype: torch.dtype, build_device) -> dict:
    from diffusers import AutoencoderKL

    def on_host(prefix, seed):
        return random_module(lambda: NETWORKS[prefix](config), build_device, dtype, seed).to("cpu")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = AutoencoderKL.from_config(vae_config).eval()
    return {"reference_net": on_host("reference_unet.", 1), "denoiser": on_host("denoising_unet.", 2),
            "image_proj": on_host("imageproj.", 3), "audio_proj": on_host("audioproj.", 4),
            "face_locator": on_host("face_locator.", 5), "vae": vae.to(dtype)}


def _loaders(host: dict, options: EngineOptions) -> dict:
    """The loaders `generate` builds for these options (hallo_unet/loaders.py), over the in-memory random models."""

    def network(name: str, prefix: str):
        def load(device):
            model = _sharing_copy(host[name], lambda: NETWORKS[prefix](host[name].config))
            if options.fp8_storage:  # as loading stores it: the linear matrices in fp8, upcast per layer
                policy = fp8_storage(options.dtype)
                with torch.no_grad():
                    for param_name, param in model.named_parameters():
                        param.data = param.data.to(policy(prefix + param_name, tuple(param.shape)))
                enable_weight_casting(model)
            return model.to(device)
        return load

    return {
        "reference_net": network("reference_net", "reference_unet."),
        "denoiser": network("denoiser", "denoising_unet."),
        "projections": lambda device: UNetProjections(host["image_proj"], host["audio_proj"],
                                                      host["face_locator"]).to(device),
        "vae": lambda device: host["vae"].to(device),
    }


def _video(size: int, audio_dim: int, seed: int = 5) -> UNetVideo:
    generator = torch.Generator().manual_seed(seed)
    masks = masks_from_regions((size // 4, 3 * size // 4, size // 5, 4 * size // 5),
                               (3 * size // 8, 5 * size // 8, 3 * size // 5, 7 * size // 10), size, size,
                               frame_size=size, method="bench")
    reference = SimpleNamespace(pixels=torch.rand(1, 3, size, size, generator=generator) * 2 - 1,
                                face_embedding=torch.randn(1, 512, generator=generator), masks=masks)
    identity = SimpleNamespace(reference=reference, pixels=reference.pixels)
    layers = torch.randn(CLIP_FRAMES, WAV2VEC_LAYERS, audio_dim // (5 * WAV2VEC_LAYERS), generator=generator)
    speech = UNetSpeech(AudioFeatures(layers, CLIP_FRAMES, frames_per_clip=CLIP_FRAMES),
                        Audio(torch.zeros(1, 16000 * CLIP_FRAMES // 25), 16000))
    return UNetVideo(identity, speech, masks.face_region[0].bool().any(0))


def run_unet_benchmark(size: str = "tiny", device: str = "cpu", dtype: torch.dtype | None = None, steps: int = 4,
                       presets: tuple[str, ...] = ("full", "balanced", "low"), version: str = "hallo2") -> dict:
    device = torch.device(device)
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)  # official: fp16
    if size == "full":
        config, vae_config, frame = HalloUNetConfig(), SD_VAE_CONFIG, 512
    else:
        config, vae_config, frame = tiny_config(), TINY_VAE_CONFIG, TINY_FRAME_SIZE
    record = {"backbone": version, "size": size, "device": device_name(device), "dtype": dtype_name(dtype),
              "torch": torch.__version__, "steps": steps, "frame_size": frame, "presets": {}}
    host = _host_networks(config, vae_config, dtype, device)
    video = _video(frame, config.audio_input_dim)
    reference = None
    for preset in presets:
        options = EngineOptions.resolve(device, dtype_name(dtype), preset)
        models = MeasuredModels(_loaders(host, options), device, options.keep_resident)
        backbone = UNetBackbone(models, version, options, frame_size=frame)
        settings = backbone.default_settings().with_overrides(version, steps=steps)
        step_times = []

        def on_step(step, total, latents, step_times=step_times):
            sync(device)
            step_times.append(time.perf_counter())

        start_peak(device)
        started = time.perf_counter()
        frames = backbone.render_clip(video, 0, None, settings, on_step).frames
        sync(device)
        clip_s = time.perf_counter() - started
        step_s = median_interval(step_times)
        result = {"clip_s": clip_s, "step_s": step_s, "phases": models.phases,
                  "peak_gpu_mb": max((p["peak_gpu_mb"] for p in models.phases.values()), default=0.0),
                  "reserved_gpu_mb": max((p["reserved_gpu_mb"] for p in models.phases.values()), default=0.0),
                  "finite": bool(torch.isfinite(frames).all())}
        if step_s is not None:  # the official 40 steps, with the rest of the clip as measured
            result["clip_40_steps_s"] = clip_s + (40 - steps) * step_s
            result["per_output_second_s"] = result["clip_40_steps_s"] / NEW_SECONDS_PER_CLIP
        if reference is None:
            reference, result["compared_with"] = frames, None
        else:
            difference = (frames - reference).abs()
            result.update(compared_with=presets[0], max_abs=float(difference.max()),
                          identical=bool(torch.equal(frames, reference)))
        record["presets"][preset] = result
        for name in ("vae", "image_proj", "audio_proj", "face_locator"):  # `full` leaves them on the device
            host[name].to("cpu")
        del models, backbone
        gc.collect()
    return record


def unet_rows(record: dict, command: str) -> list[str]:
    """Markdown rows: preset | peak GPU | step | clip (40 steps) | per output second | deviation."""
    rows = []
    for preset, r in record["presets"].items():
        step = f"{r['step_s']:.3f}" if r.get("step_s") is not None else "-"
        clip = f"{r['clip_40_steps_s']:.1f}" if "clip_40_steps_s" in r else "-"
        per_second = f"{r['per_output_second_s']:.1f}" if "per_output_second_s" in r else "-"
        deviation = "reference" if r["compared_with"] is None else (
            "identical" if r["identical"] else f"max {r['max_abs']:.2e}")
        peak = f"{r['peak_gpu_mb'] / 1024:.2f} GB ({r['reserved_gpu_mb'] / 1024:.2f} reserved)" \
            if r["peak_gpu_mb"] else "-"
        rows.append(f"| `{command}` | {record['device']} | {record['backbone']} {record['size']} "
                    f"{record['frame_size']}px {record['dtype']} | {preset} | {peak} | {step} | {clip} | "
                    f"{per_second} | {deviation} |")
    return rows
