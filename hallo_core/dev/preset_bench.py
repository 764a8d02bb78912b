"""`bench --presets`: peak GPU memory and time of a one-clip render under each memory preset, through the real pipeline.

Random weights of the four large models (main transformer, reference network, VAE, T5 encoder; full size or tiny)
are made once in host memory. Each preset then renders the same one-clip video with `Hallo3Pipeline` and
`LocalModels`, exactly as `generate --memory` does; only the small front-ends (InsightFace, wav2vec2) are replaced
by fixed random conditioning, and T5's tokenizer by fixed token ids (neither is what a preset changes). Per preset:
the peak GPU memory (allocated and reserved) of each phase, the phase's wall time including moving its model in,
the median denoising step, and the decoded frames' deviation from the first preset's (and, for `12gb`, from `low`'s,
which differs from it only by the tiled decode).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import time

import torch

from ..audio import Audio
from ..audio.wav2vec_features import AudioFeatures
from ..face.reference_image import ReferenceImages
from ..hallo3.backbone import Hallo3Backbone, Hallo3Settings, IdentityConditioning, SpeechConditioning
from ..hallo3.checkpoint import store_in_fp8
from ..hallo3.config import Hallo3Config
from ..hallo3.loaders import phase_working_memory, prepare_text_encoder, prepare_transformer, stream_budget
from ..hallo3.reference_net import IdentityReferenceNet
from ..hallo3.text_encoder import MAX_LENGTH, T5TextEncoder
from ..hallo3.transformer import Hallo3Transformer
from ..hallo3.vae import CogVideoXVAE
from ..memory.pinned import module_bytes
from ..memory.residency import LocalModels
from ..render.engine import render_clips
from ..render.progress import Reporter
from ..runtime.options import EngineOptions
from .bench_support import device_name, median_interval, random_module, random_vae, start_peak, sync
from .tiny_transformer import tiny_config

WAV2VEC_LAYERS = 12


class _FixedTokens:
    """Stands in for T5's SentencePiece tokenizer: the same ids for any prompt (the encoder's cost is unchanged)."""

    def __call__(self, prompts, max_length: int = MAX_LENGTH, **_):
        return {"input_ids": (torch.arange(max_length) % 97 + 1).unsqueeze(0)}


class MeasuredModels(LocalModels):
    """LocalModels that records each phase's peak device memory and wall time (model transfer included)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.phases: dict[str, dict] = {}

    @contextlib.contextmanager
    def use(self, name: str):
        cuda = self.device.type == "cuda"
        sync(self.device)
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        started = time.perf_counter()
        with super().use(name) as model:
            yield model
            sync(self.device)
        phase = self.phases.setdefault(name, {"seconds": 0.0, "uses": 0, "peak_gpu_mb": 0.0, "reserved_gpu_mb": 0.0})
        phase["seconds"] += time.perf_counter() - started
        phase["uses"] += 1
        if cuda:
            phase["peak_gpu_mb"] = max(phase["peak_gpu_mb"], torch.cuda.max_memory_allocated(self.device) / 2**20)
            phase["reserved_gpu_mb"] = max(phase["reserved_gpu_mb"],
                                           torch.cuda.max_memory_reserved(self.device) / 2**20)


def _t5_config(config: Hallo3Config, size: str):
    from transformers import T5Config

    if size == "full":  # t5-v1_1-xxl's encoder, 4.7 B parameters
        return T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                        feed_forward_proj="gated-gelu")
    width = config.text_embed_dim
    return T5Config(vocab_size=128, d_model=width, d_kv=width // 2, d_ff=2 * width, num_layers=2, num_heads=2,
                    feed_forward_proj="gated-gelu")


def _host_models(config: Hallo3Config, size: str, dtype: torch.dtype, build_device: torch.device) -> dict:
    """Random weights in host memory, built on `build_device` (fast on a GPU) and moved out."""
    from transformers import T5EncoderModel

    def on_host(build, seed):
        return random_module(build, build_device, dtype, seed).to("cpu")

    t5 = on_host(lambda: T5EncoderModel(_t5_config(config, size)), 3)
    return {
        "transformer": on_host(lambda: Hallo3Transformer(config), 1),
        "reference_net": on_host(lambda: IdentityReferenceNet(config.reference_config()), 2),
        "text_encoder": T5TextEncoder(t5, _FixedTokens(), device="cpu", dtype=dtype),
        "vae": random_vae(size).to(dtype=dtype),
    }


def _sharing_copy(model: torch.nn.Module, build) -> torch.nn.Module:
    """A new module over the same host tensors: what a preset moves, casts or streams is the copy's, not `model`'s,
    and releasing the copy frees its device memory as releasing a loaded model does."""
    with torch.device("meta"):
        copy = build()
    copy.load_state_dict(model.state_dict(), assign=True)
    return copy.eval()


def _loaders(host: dict, options: EngineOptions, config: Hallo3Config) -> dict:
    """The loaders `generate` builds for these options (hallo3/loaders.py), over the in-memory random models."""
    low, dtype, compile_blocks, plan = options.fp8_storage, options.dtype, options.compile, options.plan
    working = phase_working_memory(config, dtype, plan)

    def stored(name: str, build) -> torch.nn.Module:  # as loading stores it: fp8 matrices in `low`
        model = _sharing_copy(host[name], lambda: build(host[name].config))
        return store_in_fp8(model, dtype) if low else model

    def streaming(device, everything: bool = False) -> bool:
        return plan.stream_blocks and (plan.stream_all or not everything) and torch.device(device).type == "cuda"

    def load_transformer(device):
        model = stored("transformer", Hallo3Transformer)
        stream = streaming(device)
        if not stream:
            model.to(device)
        return prepare_transformer(model, device, weight_casting=low, stream_blocks=stream,
                                   compile_blocks=compile_blocks,
                                   budget=stream_budget(plan, device, working["transformer"]))

    def load_reference_net(device):
        model = stored("reference_net", IdentityReferenceNet)
        stream = streaming(device, everything=True)
        if not stream:
            model.to(device)
        return prepare_transformer(model, device, weight_casting=low, stream_blocks=stream, entry_children=("norm1",),
                                   budget=stream_budget(plan, device, working["reference_net"]))

    def load_text_encoder(device):
        t5 = host["text_encoder"]
        stream = streaming(device, everything=True)
        model = _sharing_copy(t5.model, lambda: type(t5.model)(t5.model.config))
        encoder = T5TextEncoder(model, _FixedTokens(), device="cpu" if stream else device, dtype=dtype)
        return prepare_text_encoder(encoder, device, stream_blocks=stream,
                                    budget=stream_budget(plan, device, working["text_encoder"]))

    def load_vae(device):
        vae = host["vae"].model
        copy = _sharing_copy(vae, lambda: type(vae).from_config(vae.config))
        return CogVideoXVAE(copy.to(device), decode_tiles=plan.vae_decode_tiles)

    return {"transformer": load_transformer, "reference_net": load_reference_net,
            "text_encoder": load_text_encoder, "vae": load_vae}


def _conditioning(pipeline: Hallo3Backbone, seed: int = 5):
    config = pipeline.config
    generator = torch.Generator().manual_seed(seed)
    height, width = pipeline.frame_size
    full = torch.rand(1, 3, height, width, generator=generator) * 2 - 1
    identity = IdentityConditioning(torch.randn(1, 512, generator=generator),
                                    ReferenceImages(full, full * 0.5, None), face_box=None)
    frames = pipeline.frames_per_clip
    layers = torch.randn(frames, WAV2VEC_LAYERS, config.audio_input_dim // (5 * WAV2VEC_LAYERS), generator=generator)
    new_frames = frames - Hallo3Settings().motion.frames  # exactly one clip
    speech = SpeechConditioning(AudioFeatures(layers, new_frames, frames_per_clip=frames),
                                Audio(torch.zeros(1, 16000 * new_frames // 25), 16000))
    return identity, speech


def run_preset_benchmark(size: str = "tiny", device: str = "cpu", dtype: torch.dtype | None = None, steps: int = 4,
                         presets: tuple[str, ...] = ("full", "balanced", "low", "12gb"), layers: int | None = None,
                         compile_blocks: bool | None = None) -> dict:
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    config = Hallo3Config() if size == "full" else tiny_config(32, 5 * WAV2VEC_LAYERS * 32)
    if layers is not None:
        config = dataclasses.replace(config, num_layers=layers)
    record = {"size": size, "layers": config.num_layers, "device": device_name(device),
              "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__, "steps": steps,
              "compile_blocks": compile_blocks, "presets": {}}
    limit = os.environ.get("HALLO_BENCH_GPU_LIMIT_GB")  # e.g. 12: behave as a 12 GB card (allocations past it fail)
    if limit and device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, float(limit) * 2**30 / total), device)
        record["gpu_limit_gb"] = float(limit)
    host = _host_models(config, size, dtype, device)
    reference_frames, all_frames = None, {}
    for preset in presets:
        options = EngineOptions.resolve(device, _precision_name(dtype), preset, compile=compile_blocks)
        plan = options.plan
        working = phase_working_memory(config, dtype, plan)
        working.update({f"{name}:weights": module_bytes(_module(model)) for name, model in host.items()})
        models = MeasuredModels(_loaders(host, options, config), device, options.keep_resident,
                                keep_while_fits=plan.keep_while_fits, working_memory=working)
        pipeline = Hallo3Backbone(models, config, options)
        identity, speech = _conditioning(pipeline)
        step_times = []

        def on_event(event, step_times=step_times):
            if event.phase == "denoise":
                sync(device)
                step_times.append(time.perf_counter())

        start_peak(device)
        started = time.perf_counter()
        settings = Hallo3Settings(steps=steps)
        video = pipeline.prepare_video(identity, speech, "a person talking", settings)
        clips = list(render_clips(pipeline, video, pipeline.plan(speech.total_frames, settings), settings,
                                  reporter=Reporter(on_event)))
        sync(device)
        frames = clips[0].frames
        result = {"render_s": time.perf_counter() - started, "phases": models.phases,
                  "peak_gpu_mb": max((p["peak_gpu_mb"] for p in models.phases.values()), default=0.0),
                  "reserved_gpu_mb": max((p["reserved_gpu_mb"] for p in models.phases.values()), default=0.0),
                  "step_s": median_interval(step_times),
                  "finite": bool(torch.isfinite(frames).all())}
        result["evictions"] = list(models.evictions)
        if reference_frames is None:
            reference_frames, result["compared_with"] = frames, None
        else:
            result.update(compared_with=presets[0], **_frame_deviation(frames, reference_frames))
        if preset == "12gb" and "low" in all_frames:  # the same fp8 latents: what the tiled decode changes
            result["vs_low"] = _frame_deviation(frames, all_frames["low"])
        all_frames[preset] = frames
        record["presets"][preset] = result
        del models, pipeline
        gc.collect()  # compiled blocks hold their module in a reference cycle: free it before the next preset
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return record


def _frame_deviation(frames: torch.Tensor, reference: torch.Tensor) -> dict:
    difference = (frames - reference).abs()
    return {"max_abs": float(difference.max()), "mean_abs": float(difference.mean()),
            "identical": bool(torch.equal(frames, reference))}


def _module(model) -> torch.nn.Module:
    return model if isinstance(model, torch.nn.Module) else model.model


def _precision_name(dtype: torch.dtype) -> str:
    from ..runtime.options import dtype_name

    return dtype_name(dtype)


def _deviation_text(result: dict) -> str:
    return "identical" if result["identical"] else f"max {result['max_abs']:.2e}, mean {result['mean_abs']:.2e}"


def preset_rows(record: dict, command: str) -> list[str]:
    """Markdown rows: preset | peak GPU | per-phase peaks | step | render | deviation from the first preset."""
    rows = []
    for preset, result in record["presets"].items():
        phases = ", ".join(f"{name} {p['peak_gpu_mb'] / 1024:.1f} GB / {p['seconds']:.1f} s"
                           for name, p in result["phases"].items())
        step = f"{result['step_s']:.3f}" if result["step_s"] is not None else "-"
        deviation = "reference" if result["compared_with"] is None else _deviation_text(result)
        if "vs_low" in result:
            deviation += f"; vs low: {_deviation_text(result['vs_low'])}"
        compiled = ", compiled" if record.get("compile_blocks") else ""
        peak = f"{result['peak_gpu_mb'] / 1024:.1f} GB ({result['reserved_gpu_mb'] / 1024:.1f} reserved)"
        rows.append(f"| `{command}` | {record['device']} | {record['size']} {record['dtype']}, {record['layers']} "
                    f"layers | {preset}{compiled} | {peak} | {phases} | {step} | {result['render_s']:.1f} | "
                    f"{deviation} |")
    return rows
