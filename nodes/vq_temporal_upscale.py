"""VQTemporalUpscale4K: Hallo2's temporal VQ face restorer + background upsampling + paste-back, up to 4K.

IMAGE in, IMAGE out for short clips; for long videos connect a VIDEO (e.g. DiTDenoise's) and use the VIDEO output:
frames stream from file to file with the audio, so memory stays at one 16-frame window whatever the length.
"""

from __future__ import annotations

import os
import time
import uuid
from fractions import Fraction

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch
from comfy_api.v0_0_2 import InputImpl, io

from ..hallo_core.errors import InputError, ModelFileError
from ..hallo_core.media.video import Mp4Writer, read_video_frames, video_frame_count, video_frame_rate
from ..hallo_core.upscaler.background import BackgroundUpscaler
from ..hallo_core.upscaler.video import UpscaleSettings, output_size
from ..hallo_core.upscaler.video_file import build_video_upscaler
from . import model_folders as folders
from .hallo_types import CATEGORY, HalloModelType
from .inputs import choice_input, model_combo
from .segment_node import check_image_output, duration_text, output_connected, send_text, video_preview

TARGETS = ["scale", "1080p (long side 1920)", "4K (long side 3840)", "long side 4096"]
_LONG_SIDE = {"1080p (long side 1920)": 1920, "4K (long side 3840)": 3840, "long side 4096": 4096}


class HalloVQTemporalUpscale4K(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HalloVQTemporalUpscale4K",
            display_name="Hallo2 VQ Temporal Upscale 4K",
            category=CATEGORY,
            description="Restores the face consistently across frames with Hallo2's temporal VQ network (16-frame "
                        "windows), upsamples the background (an UPSCALE_MODEL such as RealESRGAN_x2plus, else "
                        "Lanczos) and pastes the face back. Keeps every frame (the official script drops the last).",
            inputs=[
                HalloModelType.Input("model", tooltip="LoadHalloModel with an upscaler file selected"),
                io.Image.Input("images", optional=True, tooltip="frames to upscale (short clips)"),
                io.Video.Input("video", optional=True, tooltip="a video to upscale file to file (long videos)"),
                io.UpscaleModel.Input("upscale_model", optional=True,
                                      tooltip="background upsampler (RealESRGAN_x2plus, as official); "
                                              "without it the background is Lanczos-resized"),
                model_combo("parsing_model", "hallo_upscaler", [folders.NONE] + folders.files(
                    "hallo_upscaler", contains=("parsing",)),
                    "parsing_parsenet.pth for the official soft face mask; none: a feathered box"),
                choice_input("target", TARGETS, default="scale",
                             tooltip="the output size: 'scale' multiplies by scale; the others set the long side"),
                io.Float.Input("scale", default=4.0, min=1.0, max=8.0, step=0.5,
                               tooltip="with target 'scale': 4 turns 480x720 into 1920x2880"),
                io.Float.Input("fidelity_weight", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="0: codebook only (cleanest), 1: closest to the input (official default 0.5)"),
                io.Boolean.Input("face_upsample", default=False, optional=True,
                                 tooltip="also run upscale_model on each restored face (official --face_upsample): "
                                         "sharper face at 4K, slower; needs an upscale_model"),
            ],
            outputs=[io.Image.Output(display_name="images"), io.Video.Output(display_name="video")],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
        )

    @classmethod
    def execute(cls, model, parsing_model, target, scale, fidelity_weight, images=None, video=None,
                upscale_model=None, face_upsample=False) -> io.NodeOutput:
        if (images is None) == (video is None):
            raise InputError("connect either images (short clips) or a video (long videos) to VQTemporalUpscale4K")
        if model.upscaler is None:
            raise ModelFileError("no upscaler selected in LoadHalloModel: put Hallo2's net_g (hallo2/net_g.pth or a "
                                 "converted .safetensors) in models/hallo_upscaler and pick it as 'upscaler'")
        device = mm.get_torch_device()
        long_side = _LONG_SIDE.get(target)
        settings = UpscaleSettings(scale=None if long_side else scale, target_long_side=long_side,
                                   fidelity_weight=fidelity_weight, face_upsample=face_upsample)
        background = None
        if upscale_model is not None:
            upscale_model.to(device)
            background = BackgroundUpscaler.from_spandrel(upscale_model)
        parsing = None if parsing_model == folders.NONE else folders.resolve_file("hallo_upscaler", parsing_model)
        upscaler = build_video_upscaler(model.upscaler, os.path.join(model.files.face_models, "scrfd_10g_bnkps.onnx"),
                                        settings, parsing, background, device)

        if images is not None:
            frames, height, width = list(images), images.shape[1], images.shape[2]
            count = len(frames)
        else:
            source = video.get_stream_source()
            width, height = video.get_dimensions()
            count = video_frame_count(source)
            frames = read_video_frames(source)
        out_h, out_w, _ = output_size(height, width, settings.scale, settings.target_long_side)
        want_images = images is not None and output_connected(cls.hidden.prompt, cls.hidden.unique_id, 0)
        if want_images:
            check_image_output(count, out_h, out_w, "connect a VIDEO instead of images and use the 'video' output, "
                               "which streams to a file")

        bar = comfy.utils.ProgressBar(count, node_id=cls.hidden.unique_id)
        kept = []
        started = time.monotonic()

        def stream():
            for index, frame in enumerate(upscaler.stream(frames)):
                mm.throw_exception_if_processing_interrupted()
                bar.update_absolute(index + 1, count)
                if index % 8 == 0 or index + 1 == count:
                    left = (time.monotonic() - started) / (index + 1) * (count - index - 1)
                    send_text(f"frame {index + 1}/{count} · about {duration_text(left)} left", cls.hidden.unique_id)
                if want_images:
                    kept.append(frame)
                yield frame

        folder = os.path.join(folder_paths.get_output_directory(), "hallo_renders", "upscaled")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"upscaled_{uuid.uuid4().hex[:12]}.mp4")
        fps = video_frame_rate(source) if video is not None else Fraction(25)
        with Mp4Writer(path, fps=fps, audio_from=source if video is not None else None) as writer:
            writer.write_all(stream())
        result = torch.stack(kept).float().div(255) if kept else torch.zeros(1, out_h, out_w, 3)
        send_text(f"{writer.frames} frames at {out_w}x{out_h}, "
                  f"{time.monotonic() - started:.0f} s", cls.hidden.unique_id)
        return io.NodeOutput(result, InputImpl.VideoFromFile(path), ui=video_preview(path))
