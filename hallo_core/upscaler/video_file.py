"""The upscaler assembled from its model files, and upscaling a video file (the CLI's `upscale` and the node's VIDEO
path share both).

Frames are decoded, upscaled and encoded one at a time, so memory stays bounded by the upscaler's window whatever the
video length. The output keeps the source frame rate and sound (media/video.py's MP4 writer); every input frame gives
one output frame (the official script drops the last).
"""

from __future__ import annotations

import os
from typing import Callable

import torch

from ..media.video import Mp4Writer, check_output_path, read_video_frames, video_frame_rate
from .background import BackgroundUpscaler, load_background_model
from .face_alignment import ScrfdFaceDetector
from .face_parsing import load_parsenet
from .video import UpscaleSettings, VideoFaceUpscaler
from .weights import load_temporal_codeformer


def build_video_upscaler(upscaler_weights: str, detector_model: str | None, settings: UpscaleSettings,
                         parsing_model: str | None = None,
                         background: BackgroundUpscaler | str | None = None,
                         device: str | torch.device = "cpu") -> VideoFaceUpscaler:
    """The streaming upscaler from its files.

    `detector_model` None restores no faces (background only); `parsing_model` None pastes with a feathered box;
    `background` is a ready `BackgroundUpscaler`, a RealESRGAN file, or None for Lanczos.
    """
    network = load_temporal_codeformer(upscaler_weights, device=device, dtype=settings.network_dtype)
    detector = ScrfdFaceDetector(detector_model) if detector_model else None
    parsenet = load_parsenet(parsing_model, device=device) if parsing_model else None
    if background is None:
        background = BackgroundUpscaler.lanczos()
    elif not isinstance(background, BackgroundUpscaler):
        background = load_background_model(background, device=device)
    return VideoFaceUpscaler(network, detector, background, parsenet, settings, device)


def upscale_video_file(in_path: str | os.PathLike, out_path: str | os.PathLike, *, upscaler_weights: str,
                       detector_model: str | None, parsing_model: str | None = None,
                       background_model: str | None = None, scale: float | None = 4.0,
                       target_long_side: int | None = None, fidelity_weight: float = 0.5, face_upsample: bool = False,
                       device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, crf: int = 18,
                       frame_chunk: int | None = None, progress: Callable[[int], None] | None = None) -> dict:
    """Upscale a video file to an MP4 with its audio (the CLI's entry point).

    `dtype` is the network's (official: float32); `frame_chunk` bounds the frames its convolutions see at once
    (memory). Returns a summary: frames, fps, out, faces_detected, faces_reused.
    """
    in_path = os.fspath(in_path)
    out_path = check_output_path(out_path)
    fps = video_frame_rate(in_path)
    settings = UpscaleSettings(scale=scale, target_long_side=target_long_side, fidelity_weight=fidelity_weight,
                               face_upsample=face_upsample, network_dtype=dtype, network_frame_chunk=frame_chunk)
    upscaler = build_video_upscaler(upscaler_weights, detector_model, settings, parsing_model, background_model,
                                    device)
    with Mp4Writer(out_path, fps=fps, audio_from=in_path, crf=crf) as writer:
        for frame in upscaler.stream(read_video_frames(in_path)):
            writer.write(frame)
            if progress is not None:
                progress(writer.frames)
    track = upscaler.track
    return {"frames": writer.frames, "fps": float(fps), "out": out_path,
            "faces_detected": track.detected_frames if track else 0,
            "faces_reused": track.reused_frames if track else 0}
