"""Which clips a video needs, which output frames each clip makes, segments in seconds, and derived seeds.

A video of `total_frames` output frames (ceil(seconds * 25) of its speech) is made clip after clip; each clip adds
`new_frames_per_clip` frames (Hallo3: 47 of its 49, the first 2 continuing the previous clip; Hallo/Hallo2: 16 after 2
motion frames of conditioning). Clip c makes output frames [c*n, c*n + n), and the last clip is trimmed to the video.
The official loops also render clips wholly past the end of the audio (up to the audio padded to whole clips); each
clip depends only on earlier ones, so skipping them changes no kept frame.

Seeds: `derived_seed(namespace, seed, stream)` gives independent 63-bit seeds for named random streams (a backbone's
per-clip generators), so a clip's numbers depend only on the base seed, its index, its inputs and the continuation it
starts from.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

FPS = 25


def derived_seed(namespace: str, seed: int, stream: str) -> int:
    digest = hashlib.sha256(f"{namespace}:{int(seed)}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator: draws do not depend on the GPU's random generator or on the device."""
    return torch.Generator("cpu").manual_seed(seed)


def video_frame_count(seconds: float) -> int:
    """Output frames for an audio duration: ceil(seconds * 25), as the official `audio_length`."""
    return math.ceil(seconds * FPS)


@dataclass(frozen=True)
class ClipPlan:
    total_frames: int  # output frames of the whole video
    new_frames_per_clip: int = 47

    def __post_init__(self):
        if self.new_frames_per_clip < 1:
            raise ValueError(f"a clip must add at least one frame, got {self.new_frames_per_clip}")
        if self.total_frames < 1:
            raise ValueError(f"a video needs at least one frame, got {self.total_frames}")

    @property
    def num_clips(self) -> int:
        return math.ceil(self.total_frames / self.new_frames_per_clip)

    def clip_output_frames(self, clip: int) -> range:
        """Global output frames clip `clip` contributes (the last clip is trimmed to the video)."""
        start = clip * self.new_frames_per_clip
        return range(start, min(start + self.new_frames_per_clip, self.total_frames))

    def frames_of(self, clips: range) -> range:
        """Output frames made by `clips`."""
        return range(self.clip_output_frames(clips.start).start, self.clip_output_frames(clips.stop - 1).stop)

    def clips_for_frames(self, start: int, stop: int) -> range:
        """Clips that make output frames [start, stop)."""
        stop = min(stop, self.total_frames)
        if not 0 <= start < stop:
            raise ValueError(f"empty frame range [{start}, {stop})")
        return range(start // self.new_frames_per_clip, math.ceil(stop / self.new_frames_per_clip))

    @property
    def clip_seconds(self) -> float:
        return self.new_frames_per_clip / FPS

    def segment_clips(self, start_seconds: float, duration_seconds: float | None) -> range:
        """Clips of a segment given in seconds; its start snaps down to the clip grid, its end up."""
        first = int(start_seconds * FPS) // self.new_frames_per_clip
        start = first * self.new_frames_per_clip
        if start >= self.total_frames:
            raise ValueError(f"segment start {start_seconds:.2f} s is past the end of the speech "
                             f"({self.total_frames / FPS:.2f} s)")
        stop = self.total_frames if duration_seconds is None else math.ceil((start_seconds + duration_seconds) * FPS)
        return self.clips_for_frames(start, max(stop, start + 1))
