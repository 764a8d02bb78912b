"""`generate`: portrait + speech (+ prompt) -> MP4 at 25 fps with the speech, as long as the speech.

Renders into a render directory (default `<out>.render/`) that keeps every finished clip, so re-running the same
command after an interruption continues from the last finished clip; the MP4 is written at the end under a temporary
name and renamed. The render directory is removed after success unless asked to keep it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .audio.decode import decode_audio
from .face.reference_image import crop_output_frames, load_image
from .hallo3.checkpoint import TransformerWeights
from .hallo3.loaders import model_loaders
from .hallo3.model_files import ModelFiles
from .hallo3.pipeline import Hallo3Pipeline, RenderSettings
from .media.video import Mp4Writer
from .memory.residency import LocalModels
from .render.progress import ProgressEvent, Reporter
from .render.store import RenderStore
from .runtime.attention import sdpa_kernel


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs (as the official code), fp32 on CPUs (where bf16 matmuls are slow and add nothing)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def build_pipeline(files: ModelFiles, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                   residency: str = "balanced", compile_blocks: bool = False,
                   fp8_matmul: bool = False, attention: str = "auto") -> Hallo3Pipeline:
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    config = TransformerWeights(files.transformer, "main").config()
    low = residency == "low"
    loaders = model_loaders(files, config, dtype, fp8_storage=low, stream_blocks=low, compile_blocks=compile_blocks,
                            fp8_matmul=fp8_matmul, attention_kernel=sdpa_kernel(attention))
    return Hallo3Pipeline(LocalModels(loaders, device, residency), config, dtype=dtype, device=device)


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _model_identity(files: ModelFiles) -> dict:
    """Cheap identity of the model files: path, size and modification time."""
    identity = {}
    for name, path in vars(files).items():
        if path and os.path.exists(path):
            stat = os.stat(path)
            identity[name] = [os.path.abspath(path), stat.st_size, int(stat.st_mtime)]
    return identity


def render_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class GenerateResult:
    path: str
    frames: int
    clips: int
    resumed_clips: int
    notes: list[str]


def generate(
    image: str,
    audio: str,
    out: str,
    models: str | ModelFiles,
    prompt: str = "",
    settings: RenderSettings = RenderSettings(),
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    separate_vocals: bool = True,
    render_dir: str | None = None,
    keep_render: bool = False,
    residency: str = "balanced",
    progress: Callable[[ProgressEvent], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    pipeline: Hallo3Pipeline | None = None,
    compile_blocks: bool = False,
    fp8_matmul: bool = False,
    attention: str = "auto",
) -> GenerateResult:
    # Cheap checks first: a bad file is reported before any model is loaded.
    original_audio = decode_audio(audio)
    image_rgb = load_image(image)
    files = models if isinstance(models, ModelFiles) else ModelFiles.from_pretrained_dir(models)
    if separate_vocals:
        files.require_vocal_separator()
    pipeline = pipeline or build_pipeline(files, device, dtype, residency, compile_blocks, fp8_matmul, attention)
    reporter = Reporter(progress, cancel)

    reporter(ProgressEvent("prepare", message="face and references"))
    identity = pipeline.identity(image_rgb)
    reporter(ProgressEvent("prepare", message="speech features"))
    speech = pipeline.speech(original_audio, separate_vocals=separate_vocals)
    plan = pipeline.plan(speech.total_frames, settings.motion)

    key = render_key({
        "image": _file_digest(image), "audio": _file_digest(audio), "prompt": prompt,
        "settings": settings.as_dict(), "separate_vocals": separate_vocals, "models": _model_identity(files),
        "dtype": str(pipeline.dtype), "device": pipeline.device.type,
    })
    store = RenderStore(render_dir or os.path.splitext(out)[0] + ".render", key,
                        {"image": image, "audio": audio, "prompt": prompt, "clips": plan.num_clips,
                         "frames": speech.total_frames})
    resumed = 0
    for clip in pipeline.render(identity, speech, prompt, settings, store=store, reporter=reporter):
        resumed += clip.resumed

    reporter(ProgressEvent("write", clips=plan.num_clips, message=out))
    crop = identity.references.output_crop
    waveform = speech.audio.samples.numpy()
    with Mp4Writer(out, audio=(waveform, speech.audio.sample_rate)) as writer:
        for index in range(plan.num_clips):
            frames = store.clip_frames(index)
            frames = crop_output_frames(torch.from_numpy(frames), crop, channels_last=True).numpy()
            writer.write_all(np.ascontiguousarray(frames))
    if not keep_render:
        store.clear()
    reporter(ProgressEvent("done", clips=plan.num_clips, message=out))
    return GenerateResult(out, writer.frames, plan.num_clips, resumed, identity.notes + speech.notes)
