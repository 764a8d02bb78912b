"""A segment: a stretch of a video rendered into its render directory and written as an MP4 with its stretch of sound.

One service for every caller: `generate` renders the whole speech as one segment; the ComfyUI denoise nodes render
the segment their inputs ask for. It owns what they would otherwise each redo: the render key over every input and
option that changes a frame, the render directory, the check of the previous segment's continuation, the output crop,
the MP4 with the audio slice, and the check that the MP4 holds exactly the frames the speech needs.

Chained segments continue exactly: a segment's result carries the `Continuation` of its last clip (its uncropped float
last frames, where it ended, and the settings that must match), which the next segment takes as `previous`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..errors import InputError, OutputError
from ..face.reference_image import crop_output_frames
from ..media.video import Mp4Writer
from .backbone import Backbone, ClipResult, Continuation, tensor_digest
from .clip_plan import FPS, ClipPlan
from .engine import render_clips
from .progress import ProgressEvent, Reporter
from .store import FORMAT, RenderStore

# Settings that make chained segments equal one render when they match.
CONTINUITY_SETTINGS = ("seed", "steps", "cfg_scale", "motion")


@dataclass
class SegmentResult:
    clips: range
    frames: range  # output frames [start, stop) of the whole video
    resumed: int  # clips reused from the render directory
    continuation: Continuation  # of the last clip: what the next segment continues from
    directory: str
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return len(self.frames) / FPS


def continuation_digest(continuation: Continuation | None) -> str | None:
    if continuation is None:
        return None
    tensors = [continuation.frames] + [continuation.tensors[name] for name in sorted(continuation.tensors)]
    return f"{continuation.end_frame}:{tensor_digest(*tensors)}"


class Segment:
    """`Segment(backbone, identity, speech, prompt, settings, clips, previous)`; `render(directory)`; `write_mp4`."""

    def __init__(self, backbone: Backbone, identity: Any, speech: Any, prompt: str, settings: Any,
                 clips: range | None = None, previous: Continuation | None = None):
        for what, prepared in (("portrait", identity), ("speech", speech)):
            if getattr(prepared, "family", backbone.family) != backbone.family:
                raise InputError(f"the {what} was prepared for another model family ({prepared.family}) than this "
                                 f"{backbone.name} model; prepare it with the same model")
        self.backbone = backbone
        self.identity = identity
        self.speech = speech
        self.prompt = prompt
        self.settings = settings
        self.plan: ClipPlan = backbone.plan(speech.total_frames, settings)
        self.clips = clips if clips is not None else range(self.plan.num_clips)
        self.previous = previous
        self.notes: list[str] = []
        self._check_previous()

    @classmethod
    def from_seconds(cls, backbone: Backbone, identity: Any, speech: Any, prompt: str, settings: Any,
                     start_seconds: float = 0.0, duration_seconds: float | None = None,
                     previous: Continuation | None = None) -> "Segment":
        """The segment [start, start + duration) of the speech, snapped to the clip grid (duration None: to the
        end)."""
        plan = backbone.plan(speech.total_frames, settings)
        try:
            clips = plan.segment_clips(start_seconds, duration_seconds)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        return cls(backbone, identity, speech, prompt, settings, clips, previous)

    @property
    def frames(self) -> range:
        return self.plan.frames_of(self.clips)

    def _check_previous(self) -> None:
        first = self.frames.start
        if self.clips.start == 0:
            if self.previous is not None:
                raise InputError("a segment that starts at 0 s begins from the portrait; disconnect the previous "
                                 "segment or set the start to where it ended")
            return
        if self.previous is None:
            raise InputError(f"this segment starts at {first / FPS:.2f} s: connect the previous segment's "
                             "continuation (or start at 0 s)")
        source = self.previous.source
        if source.get("backbone") not in (None, self.backbone.name):
            raise InputError(f"the previous segment was rendered by {source['backbone']}, this one by "
                             f"{self.backbone.name}; continue a segment of the same model")
        end = self.previous.end_frame
        if end is not None and end != first:
            raise InputError(f"the previous segment ends at {end / FPS:.2f} s but this one starts at "
                             f"{first / FPS:.2f} s; set the start to {end / FPS:.2f} s")
        settings = source.get("settings") or {}
        ours = _settings_dict(self.settings)
        changed = [name for name in CONTINUITY_SETTINGS if name in settings and settings[name] != ours.get(name)]
        if changed:
            self.notes.append(f"the previous segment used other {', '.join(changed)}: it continues exactly, but the "
                              "video will differ from one render of the whole speech")
        if end is None:
            self.notes.append("continues from given frames, not a segment's continuation: approximate")

    # --- the render -----------------------------------------------------------------------------------------------
    def key(self) -> str:
        """A key over every input and option that changes a frame of this segment."""
        parts = {
            "format": FORMAT,
            "model": self.backbone.model_identity(),
            "identity": self.identity.digest(),
            "speech": self.speech.digest(),
            "prompt": self.prompt,
            "settings": _settings_dict(self.settings),
            "clips": [self.clips.start, self.clips.stop],
            "frames": self.plan.total_frames,
            "previous": continuation_digest(self.previous),
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def continuation_source(self) -> dict:
        """What a continuation of this segment records about how it was made."""
        return {"backbone": self.backbone.name, "settings": _settings_dict(self.settings)}

    def open_store(self, directory: str | os.PathLike) -> RenderStore:
        description = {"backbone": self.backbone.name, "prompt": self.prompt, "clips": [self.clips.start,
                       self.clips.stop], "frames": [self.frames.start, self.frames.stop]}
        return RenderStore(directory, self.key(), description)

    def render(self, store: RenderStore, reporter: Reporter | None = None,
               on_clip: Callable[[ClipResult], None] | None = None) -> SegmentResult:
        """Render every clip not already finished in `store`; `on_clip` sees each clip in order."""
        reporter = reporter or Reporter()
        notes = list(self.notes) + store.notes
        resumed, last = 0, None
        video = None
        pending = [c for c in self.clips if not store.verified(c)]
        if pending:
            reporter(ProgressEvent("prepare", clips=len(self.clips), message="per-video conditioning"))
            video = self.backbone.prepare_video(self.identity, self.speech, self.prompt, self.settings)
        for clip in render_clips(self.backbone, video, self.plan, self.settings, self.clips, self.previous, store,
                                 reporter):
            resumed += clip.resumed
            last = clip
            if on_clip is not None:
                on_clip(clip)
        notes += [n for n in store.notes if n not in notes]
        last = last.continuation
        continuation = Continuation(last.frames, last.end_frame, dict(last.tensors), self.continuation_source())
        return SegmentResult(self.clips, self.frames, resumed, continuation, store.directory, notes)

    # --- the MP4 --------------------------------------------------------------------------------------------------
    def audio_slice(self) -> tuple[np.ndarray, int]:
        """(channels, samples) of the original speech under this segment's frames, and its rate."""
        audio = self.speech.audio
        rate = audio.sample_rate
        start, stop = round(self.frames.start * rate / FPS), round(self.frames.stop * rate / FPS)
        return audio.samples[:, start:stop].numpy(), rate

    def write_mp4(self, store: RenderStore, out: str | os.PathLike, reporter: Reporter | None = None) -> int:
        """The segment's frames (cropped back to the portrait's shape) with its audio, as an MP4; returns the frame
        count, which is checked against the speech (never a short video)."""
        reporter = reporter or Reporter()
        reporter(ProgressEvent("write", clips=len(self.clips), message=os.fspath(out)))
        crop = self.identity.output_crop
        with Mp4Writer(out, fps=FPS, audio=self.audio_slice()) as writer:
            for index in self.clips:
                frames = crop_output_frames(torch.from_numpy(store.clip_frames(index)), crop, channels_last=True)
                writer.write_all(frames.numpy())
            if writer.frames != len(self.frames):
                raise OutputError(f"{out}: {writer.frames} frames were rendered but the speech needs "
                                  f"{len(self.frames)}; run the same command again to redo the missing clips")
        return writer.frames


def _settings_dict(settings: Any) -> dict:
    return settings.as_dict() if hasattr(settings, "as_dict") else dict(vars(settings))
