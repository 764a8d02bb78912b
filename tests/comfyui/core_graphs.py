"""Small API-format prompts made of ComfyUI core nodes only, used to prove the harness and run_api.py."""
from __future__ import annotations

import math
import struct
import wave
from pathlib import Path


def tiny_image(width=64, height=48, color=0xFF0000, prefix="smoke") -> dict:
    """EmptyImage -> SaveImage."""
    return {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": width, "height": height, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def video_with_audio(audio_name: str, frames=25, fps=25.0, size=32, prefix="video/smoke") -> dict:
    """EmptyImage batch + LoadAudio -> CreateVideo -> SaveVideo (h264 + aac mp4)."""
    return {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": size, "height": size, "batch_size": frames, "color": 0x3366CC}},
        "2": {"class_type": "LoadAudio", "inputs": {"audio": audio_name}},
        "3": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": fps, "audio": ["2", 0]}},
        "4": {"class_type": "SaveVideo",
              "inputs": {"video": ["3", 0], "filename_prefix": prefix, "format": "auto", "codec": "auto"}},
    }


def slow_upscale(model_name: str, size=1024, batch=48) -> dict:
    """EmptyImage -> UpscaleModelLoader/ImageUpscaleWithModel (tiled, one progress step per tile) -> PreviewImage.
    With the tiny model: batch * 9 tiles of 512 px. The interrupt tests need the node still running well after its
    first progress message reaches the client: 72 tiles took 2.3 s on 2 CPU cores, which a busy machine can outrun;
    the default 432 take 13.6 s there."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": batch, "color": 0}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": model_name}},
        "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }


def write_tone_wav(path: Path, seconds=2.0, rate=16000, freq=440.0) -> Path:
    """A mono 16-bit sine WAV (standard library only)."""
    n = int(seconds * rate)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * freq * i / rate)))
                               for i in range(n)))
    return path


def write_tiny_upscale_model(folder: Path, feat=16, convs=6) -> str:
    """A random-weight RealESRGAN 'Compact' (SRVGGNet) scale-1 model that spandrel recognises; returns its name."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    sd = {"body.0.weight": torch.randn(feat, 3, 3, 3, generator=g) * 0.1, "body.0.bias": torch.zeros(feat),
          "body.1.weight": torch.full((feat,), 0.25)}
    for i in range(convs):
        sd[f"body.{2 * i + 2}.weight"] = torch.randn(feat, feat, 3, 3, generator=g) * 0.05
        sd[f"body.{2 * i + 2}.bias"] = torch.zeros(feat)
        sd[f"body.{2 * i + 3}.weight"] = torch.full((feat,), 0.25)
    last = 2 * convs + 2
    sd[f"body.{last}.weight"] = torch.randn(3, feat, 3, 3, generator=g) * 0.05
    sd[f"body.{last}.bias"] = torch.zeros(3)
    name = f"tiny_compact_x1_{feat}nf{convs}nc.safetensors"
    Path(folder).mkdir(parents=True, exist_ok=True)
    save_file(sd, str(Path(folder) / name))
    return name
