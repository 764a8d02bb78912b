"""Which clips a video needs, which output frames each clip makes, and the seed policy.

Official clip loop (hallo3_spec.md 4.4): a clip has 49 frames; its first 2 continue the previous clip (the motion
frames) and the other 47 are new. Clip c makes output frames [47c, 47c + 47); the video is trimmed to
`ceil(seconds * 25)` frames. The official loop also renders clips that lie wholly past the end of the audio (up to the
audio padded to a multiple of 49); each clip depends only on earlier ones, so skipping them changes no kept frame.

Seed policy: every random draw of clip c (motion-frame dropout mask, VAE posterior sample of the condition latent,
initial noise, sampler noise) comes from its own CPU generator seeded with `clip_seed(seed, c)`, and the reference
latent's posterior sample from `reference_seed(seed)`. A clip's numbers therefore depend only on the base seed, its
index, its inputs and the previous clip's frames, so a video rendered in segments, or resumed after a crash, equals
one rendered in a single pass. Draws are made on the CPU, so results do not depend on the GPU's random generator.

The audio of each clip is cut by `audio.clip_windows` with the same arithmetic; `clip_windows.num_clips` counts the
clips of the official loop (padded audio), `ClipPlan.num_clips` the ones a video needs.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from ..audio.clip_windows import MOTION_FRAMES as OFFICIAL_MOTION_FRAMES
from ..audio.clip_windows import new_frames_per_clip

FPS = 25


def _derived_seed(seed: int, stream: str) -> int:
    digest = hashlib.sha256(f"hallo3:{int(seed)}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def clip_seed(seed: int, clip: int) -> int:
    return _derived_seed(seed, f"clip:{clip}")


def reference_seed(seed: int) -> int:
    return _derived_seed(seed, "reference")


def clip_generator(seed: int, clip: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(clip_seed(seed, clip))


def reference_generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(reference_seed(seed))


def video_frame_count(seconds: float) -> int:
    """Output frames for an audio duration: ceil(seconds * 25), as the official `audio_length`."""
    return math.ceil(seconds * FPS)


@dataclass(frozen=True)
class ClipPlan:
    total_frames: int  # output frames of the whole video
    frames_per_clip: int = 49
    motion_frames: int = OFFICIAL_MOTION_FRAMES

    def __post_init__(self):
        new_frames_per_clip(self.frames_per_clip, self.motion_frames)  # validates the pair

    @property
    def new_frames_per_clip(self) -> int:
        return new_frames_per_clip(self.frames_per_clip, self.motion_frames)

    @property
    def num_clips(self) -> int:
        return math.ceil(self.total_frames / self.new_frames_per_clip)

    def clip_output_frames(self, clip: int) -> range:
        """Global output frames clip `clip` contributes (the last clip is trimmed to the video)."""
        start = clip * self.new_frames_per_clip
        return range(start, min(start + self.new_frames_per_clip, self.total_frames))

    def clips_for_frames(self, start: int, stop: int) -> range:
        """Clips that make output frames [start, stop)."""
        stop = min(stop, self.total_frames)
        if not 0 <= start < stop:
            raise ValueError(f"empty frame range [{start}, {stop})")
        return range(start // self.new_frames_per_clip, math.ceil(stop / self.new_frames_per_clip))

    def segment_clips(self, start_seconds: float, duration_seconds: float | None) -> range:
        """Clips of a segment given in seconds; its start snaps down to the clip grid (1.88 s), its end up."""
        first = int(start_seconds * FPS) // self.new_frames_per_clip
        start = first * self.new_frames_per_clip
        if start >= self.total_frames:
            raise ValueError(f"segment start {start_seconds:.2f} s is past the end of the audio")
        stop = self.total_frames if duration_seconds is None else math.ceil((start_seconds + duration_seconds) * FPS)
        return self.clips_for_frames(start, max(stop, start + 1))
