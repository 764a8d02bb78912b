"""What the denoise nodes (DiTDenoise, UNetDenoise) share: a segment rendered through hallo_core's segment service
with ComfyUI's progress bar, previews, progress text and interrupt, and its outputs (IMAGE, AUDIO, VIDEO, the
continuation for the next segment).

Finished clips are kept in `ComfyUI/output/hallo_renders/<render key>/`, so a render that is interrupted (or a ComfyUI
that crashes) resumes from its last finished clip when queued again with the same inputs.
"""

from __future__ import annotations

import os
import time

import comfy.utils
import folder_paths
import psutil
import torch
from comfy_api.v0_0_2 import InputImpl, io
from PIL import Image

from ..hallo_core.errors import InputError
from ..hallo_core.face.reference_image import crop_output_frames, uncrop_frames
from ..hallo_core.render.backbone import Continuation
from ..hallo_core.render.progress import Reporter
from ..hallo_core.render.segments import Segment
from .hallo_types import HalloMotion

IMAGE_MEMORY_SHARE = 0.5  # refuse an IMAGE output larger than this share of the free host memory


def output_connected(prompt: dict | None, node_id: str | None, index: int) -> bool:
    """Whether output `index` of this node feeds any node of the prompt (assume yes when unknown)."""
    if not prompt or node_id is None:
        return True
    for node in prompt.values():
        for value in node.get("inputs", {}).values():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) == str(node_id) and value[1] == index:
                return True
    return False


def check_image_output(frames: int, height: int, width: int, advice: str) -> None:
    """Refuse an IMAGE output that would not fit in memory, before rendering it (float32 RGB)."""
    needed = frames * height * width * 3 * 4
    if needed > IMAGE_MEMORY_SHARE * psutil.virtual_memory().available:
        raise InputError(f"{frames} frames at {width}x{height} take {needed / 2**30:.1f} GB as an IMAGE, more than the "
                         f"free memory allows; {advice}")


def starting_continuation(motion: HalloMotion | None, backbone, identity) -> Continuation | None:
    """The continuation a segment starts from: exact from a denoise node, or approximate frames (an IMAGE from
    elsewhere) put back into the model's frame."""
    if motion is None or motion.continuation is None:
        return None
    continuation = motion.continuation
    if motion.exact:
        return continuation
    frames = uncrop_frames(continuation.frames, identity.output_crop, backbone.frame_size)
    return Continuation(frames, None)


def render_segment(node, model, speech, identity, motion: HalloMotion | None, start_seconds: float,
                   duration_seconds: float, settings) -> io.NodeOutput:
    """Render one segment for a denoise node `node` (its `hidden` gives the node id and prompt)."""
    backbone = model.backbone
    previous = starting_continuation(motion, backbone, identity.conditioning)
    segment = Segment.from_seconds(backbone, identity.conditioning, speech, identity.prompt, settings,
                                   start_seconds, duration_seconds or None, previous)
    node_id = node.hidden.unique_id
    crop = identity.conditioning.output_crop
    height, width = backbone.frame_size
    out_width = crop[1] if crop else width
    keep_images = output_connected(node.hidden.prompt, node_id, 0)
    if keep_images:
        check_image_output(len(segment.frames), height, out_width, "render it as shorter segments "
                           "(duration_seconds) or use only the 'video' output")

    key = segment.key()
    directory = os.path.join(folder_paths.get_output_directory(), "hallo_renders", key[:24])
    steps = settings.steps
    progress = SegmentProgress(node_id, len(segment.clips) * steps, backbone.latent_previewer(identity.conditioning))
    reporter = Reporter(progress, cancel=model.models.cancel_check)
    frames = []

    def keep(clip) -> None:
        if keep_images:
            frames.append(crop_output_frames(clip.frames.permute(0, 2, 3, 1), crop, channels_last=True))

    with segment.open_store(directory) as store:
        result = segment.render(store, reporter, on_clip=keep)
        video_path = os.path.join(store.directory, "segment.mp4")
        segment.write_mp4(store, video_path)
    images = torch.cat(frames) if frames else torch.zeros(1, height, out_width, 3)
    waveform, rate = segment.audio_slice()
    audio = {"waveform": torch.from_numpy(waveform).unsqueeze(0).contiguous(), "sample_rate": rate}
    continuation = HalloMotion(settings.motion.as_dict(), result.continuation, exact=True)

    resumed = f", {result.resumed} resumed" if result.resumed else ""
    lines = [f"frames {segment.frames.start}-{segment.frames.stop} ({result.seconds:.2f} s), "
             f"{len(segment.clips)} clips{resumed}", *result.notes]
    progress.finish()
    preview = video_preview(video_path, "\n".join(lines))
    return io.NodeOutput(images, audio, InputImpl.VideoFromFile(video_path), continuation, ui=preview)


class SegmentProgress:
    """ComfyUI progress bar over all steps, latent previews, and a 'clip i of n' text with the time left."""

    def __init__(self, node_id, total_steps: int, previewer):
        self.node_id = node_id
        self.bar = comfy.utils.ProgressBar(total_steps, node_id=node_id)
        self.previewer = previewer
        self.started = None
        self.created = time.monotonic()

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
        if event.latents is not None and self.previewer is not None:
            preview = ("JPEG", Image.fromarray(self.previewer(event.latents)), 512)
        self.bar.update_absolute(done, self.bar.total, preview)
        send_text(f"clip {event.clip + 1}/{event.clips} · step {event.step}/{event.steps} · "
                  f"about {duration_text(left)} left", self.node_id)

    def finish(self) -> None:
        """The result itself is the node's text output (web/hallo.js keeps it under the status line)."""
        self.bar.update_absolute(self.bar.total, self.bar.total, None)
        send_text(f"finished in {duration_text(time.monotonic() - self.created)}", self.node_id)


def duration_text(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def video_preview(path: str, text: str | None = None) -> dict:
    """The node's UI output for an MP4 in the output folder: ComfyUI plays it, with sound, in the node (and shows
    `text` below it)."""
    subfolder = os.path.relpath(os.path.dirname(path), folder_paths.get_output_directory()).replace(os.sep, "/")
    preview = {"images": [{"filename": os.path.basename(path), "subfolder": subfolder, "type": "output"}],
               "animated": (True,)}
    if text is not None:
        preview["text"] = (text,)
    return preview


def send_text(text: str, node_id) -> None:
    try:
        from server import PromptServer

        PromptServer.instance.send_progress_text(text, node_id)
    except Exception:  # progress text is a nicety: never fail a render over it
        pass

