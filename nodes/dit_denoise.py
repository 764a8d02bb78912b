"""DiTDenoise: renders a stretch of the speech as video, clip after clip, with previews, progress and cancel.

Finished clips are kept in `ComfyUI/output/hallo_renders/<render key>/`, so a render that is interrupted (or a
ComfyUI that crashes) resumes from its last finished clip when queued again with the same inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import comfy.utils
import folder_paths
import psutil
import torch
from comfy_api.latest import InputImpl, io
from PIL import Image

from ..hallo_core.errors import InputError
from ..hallo_core.face.reference_image import crop_output_frames
from ..hallo_core.hallo3.pipeline import RenderSettings
from ..hallo_core.media.video import Mp4Writer
from ..hallo_core.render.clip_plan import FPS
from ..hallo_core.render.motion import MotionOptions
from ..hallo_core.render.progress import Reporter
from ..hallo_core.render.store import RenderStore
from . import continuations
from .hallo_types import CATEGORY, HalloAudioType, HalloIdentityType, HalloModelType, HalloMotion, HalloMotionType

IMAGE_MEMORY_SHARE = 0.5  # refuse an IMAGE output larger than this share of the free host memory


def _tensor_digest(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _output_connected(prompt: dict | None, node_id: str | None, index: int) -> bool:
    """Whether output `index` of this node feeds any node of the prompt (assume yes when unknown)."""
    if not prompt or node_id is None:
        return True
    for node in prompt.values():
        for value in node.get("inputs", {}).values():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) == str(node_id) and value[1] == index:
                return True
    return False


class HalloDiTDenoise(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HalloDiTDenoise",
            display_name="DiTDenoise",
            category=CATEGORY,
            description="Renders the speech from start_seconds for duration_seconds (0: to the end) at 25 fps, in "
                        "clips of 47 new frames (1.88 s), each continuing the previous one. Chain segments with "
                        "MotionFrameSampler; they give the same frames as one render of the whole speech.",
            inputs=[
                HalloModelType.Input("model"),
                HalloAudioType.Input("speech"),
                HalloIdentityType.Input("identity"),
                HalloMotionType.Input("motion", optional=True,
                                      tooltip="MotionFrameSampler; without it the segment starts from the portrait"),
                io.Float.Input("start_seconds", default=0.0, min=0.0, max=36000.0, step=0.04,
                               tooltip="where the segment starts; snapped down to the 1.88 s clip grid"),
                io.Float.Input("duration_seconds", default=0.0, min=0.0, max=36000.0, step=0.04,
                               tooltip="length of the segment; 0 renders to the end of the speech"),
                io.Int.Input("steps", default=50, min=1, max=1000, tooltip="official: 50"),
                io.Float.Input("cfg", default=3.5, min=1.0, max=20.0, step=0.1, tooltip="official: 3.5"),
                io.Int.Input("seed", default=42, min=0, max=2**63 - 1, control_after_generate=True),
            ],
            outputs=[
                io.Image.Output(display_name="frames"),
                io.Audio.Output(display_name="audio"),
                io.Video.Output(display_name="video"),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
        )

    @classmethod
    def execute(cls, model, speech, identity, start_seconds, duration_seconds, steps, cfg, seed,
                motion=None) -> io.NodeOutput:
        pipeline = model.pipeline
        motion = motion or HalloMotion(MotionOptions())
        settings = RenderSettings(steps=steps, cfg_scale=cfg, seed=seed, motion=motion.options)
        plan = pipeline.plan(speech.total_frames, motion.options)
        try:
            clips = plan.segment_clips(start_seconds, duration_seconds or None)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        first_frame = clips.start * plan.new_frames_per_clip
        last_frame = plan.clip_output_frames(clips.stop - 1).stop
        previous = cls._previous_frames(motion, identity, clips.start, first_frame, pipeline.frame_size)

        node_id = cls.hidden.unique_id
        crop = identity.conditioning.references.output_crop
        height, width = pipeline.frame_size
        out_width = crop[1] if crop else width
        keep_images = _output_connected(cls.hidden.prompt, node_id, 0)
        image_bytes = (last_frame - first_frame) * height * out_width * 3 * 4
        if keep_images and image_bytes > IMAGE_MEMORY_SHARE * psutil.virtual_memory().available:
            seconds = (last_frame - first_frame) / FPS
            raise InputError(f"this segment is {seconds:.0f} s, {image_bytes / 2**30:.1f} GB as an IMAGE, more than "
                             "the free memory allows; render it as shorter segments (duration_seconds) or use only "
                             "the 'video' output")

        key = _render_key(model, speech, identity, settings, clips, previous)
        store = RenderStore(os.path.join(folder_paths.get_output_directory(), "hallo_renders", key[:24]), key,
                            {"start_frame": first_frame, "end_frame": last_frame, "prompt": identity.prompt})
        progress = _Progress(node_id, len(clips) * steps, pipeline.latent_previewer(identity.conditioning))
        reporter = Reporter(progress, cancel=model.models.cancel_check)

        frames, final_motion = [], None
        for clip in pipeline.render(identity.conditioning, speech, identity.prompt, settings, clips=clips,
                                    previous_frames=previous, store=store, reporter=reporter):
            if keep_images:
                frames.append(crop_output_frames(clip.frames.permute(0, 2, 3, 1), crop, channels_last=True))
            final_motion = clip.motion_frames
        images = torch.cat(frames) if frames else torch.zeros(1, height, out_width, 3)

        video_path = os.path.join(store.directory, "segment.mp4")
        audio = _audio_segment(speech.audio, first_frame, last_frame)
        with Mp4Writer(video_path, audio=(audio["waveform"][0].numpy(), audio["sample_rate"])) as writer:
            for index in clips:
                writer.write_all(crop_output_frames(torch.from_numpy(store.clip_frames(index)), crop,
                                                    channels_last=True).numpy())
        if keep_images:
            continuations.record(images[-1], final_motion, last_frame)
        summary = f"frames {first_frame}-{last_frame} ({(last_frame - first_frame) / FPS:.2f} s), {len(clips)} clips"
        subfolder = os.path.relpath(store.directory, folder_paths.get_output_directory()).replace(os.sep, "/")
        preview = {"images": [{"filename": "segment.mp4", "subfolder": subfolder, "type": "output"}],
                   "animated": (True,), "text": (summary,)}  # ComfyUI plays it, with sound, in the node
        return io.NodeOutput(images, audio, InputImpl.VideoFromFile(video_path), ui=preview)

    @staticmethod
    def _previous_frames(motion, identity, start_clip, first_frame, frame_size):
        if start_clip == 0:
            if motion.frames is not None:
                raise InputError("a segment that starts at 0 s begins from the portrait; disconnect the previous "
                                 "frames or set start_seconds to where the previous segment ended")
            return None
        if motion.frames is None:
            raise InputError(f"this segment starts at {first_frame / FPS:.2f} s: connect MotionFrameSampler with the "
                             "previous segment's frames (or start at 0 s)")
        if motion.end_frame is not None and motion.end_frame != first_frame:
            raise InputError(f"the previous segment ends at {motion.end_frame / FPS:.2f} s but this one starts at "
                             f"{first_frame / FPS:.2f} s; set start_seconds to {motion.end_frame / FPS:.2f}")
        frames = motion.frames.float()
        height, width = frame_size
        crop = identity.conditioning.references.output_crop
        if frames.shape[-1] != width and crop is not None and frames.shape[-1] == crop[1]:
            # Frames cropped back to a square: put them back in the padded frame (black outside).
            padded = torch.zeros(frames.shape[0], 3, height, width)
            padded[..., crop[0]:crop[0] + crop[1]] = frames
            frames = padded
        if tuple(frames.shape[-2:]) != (height, width):
            raise InputError(f"the previous frames are {frames.shape[-1]}x{frames.shape[-2]}, the model renders "
                             f"{width}x{height}; connect the frames of a DiTDenoise with the same model")
        return frames


def _render_key(model, speech, identity, settings, clips, previous) -> str:
    parts = {
        "models": {name: str(path) for name, path in vars(model.files).items()},
        "dtype": str(model.dtype),
        "speech": _tensor_digest(speech.features.layers),
        "identity": _tensor_digest(identity.conditioning.face_embedding, identity.conditioning.references.full,
                                   identity.conditioning.references.masked),
        "prompt": identity.prompt,
        "settings": settings.as_dict(),
        "clips": [clips.start, clips.stop],
        "previous": _tensor_digest(previous) if previous is not None else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _audio_segment(audio, first_frame: int, last_frame: int) -> dict:
    rate = audio.sample_rate
    start, stop = round(first_frame * rate / FPS), round(last_frame * rate / FPS)
    return {"waveform": audio.samples[:, start:stop].unsqueeze(0).contiguous(), "sample_rate": rate}


class _Progress:
    """ComfyUI progress bar over all steps, latent previews, and a 'clip i of n' text with the time left."""

    def __init__(self, node_id, total_steps: int, previewer):
        self.node_id = node_id
        self.bar = comfy.utils.ProgressBar(total_steps, node_id=node_id)
        self.previewer = previewer
        self.started = None

    def __call__(self, event) -> None:
        if event.phase != "denoise":
            return
        done = event.clip * event.steps + event.step
        if self.started is None:
            self.started = (time.monotonic(), done - 1)
        elapsed = time.monotonic() - self.started[0]
        rate = elapsed / max(done - self.started[1], 1)
        left = rate * (self.bar.total - done)
        preview = None
        if event.latents is not None:
            preview = ("JPEG", Image.fromarray(self.previewer(event.latents)), 512)
        self.bar.update_absolute(done, self.bar.total, preview)
        _send_text(f"clip {event.clip + 1}/{event.clips} · step {event.step}/{event.steps} · "
                   f"about {_duration(left)} left", self.node_id)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _send_text(text: str, node_id) -> None:
    try:
        from server import PromptServer

        PromptServer.instance.send_progress_text(text, node_id)
    except Exception:  # progress text is a nicety: never fail a render over it
        pass
