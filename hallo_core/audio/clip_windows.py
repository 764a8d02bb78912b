"""The audio of each clip in the long-video loop (hallo3 `sample_video.py:347-424`, spec section 4.4).

Every clip renders `frames_per_clip` (49) frames; the first `motion_frames` (2) continue the previous clip, so each clip
adds 47 new frames. The official loop builds clip t's audio as

    audio_t = cat([pre_fix, windows[47t : 47t+47]]);  pre_fix = audio_t[-2:]   (zeros before clip 0)

and pads a short last clip by repeating its last row. Unrolled, clip t covers the global frames 47t-2 .. 47t+46: frames
before 0 are zero audio (the reference-image copies that open clip 0), frames past the end repeat the last frame. The
clip count is ceil(num_frames / 47), and the finished video is cut to `audio_length` frames.

These functions compute that directly from the index arithmetic, so any clip can be cut on its own (segments, resume)
and the whole (frames, 5, layers, dim) window tensor never has to exist.
"""

from __future__ import annotations

import math

import torch

from .wav2vec_features import FRAMES_PER_CLIP, WINDOW_RADIUS, AudioFeatures

MOTION_FRAMES = 2


def new_frames_per_clip(frames_per_clip: int = FRAMES_PER_CLIP, motion_frames: int = MOTION_FRAMES) -> int:
    if not 0 <= motion_frames < frames_per_clip:
        raise ValueError(f"motion_frames={motion_frames} must be in [0, frames_per_clip={frames_per_clip})")
    return frames_per_clip - motion_frames


def num_clips(num_frames: int, frames_per_clip: int = FRAMES_PER_CLIP, motion_frames: int = MOTION_FRAMES) -> int:
    """Clips the official loop renders for `num_frames` (padded) feature frames."""
    return math.ceil(num_frames / new_frames_per_clip(frames_per_clip, motion_frames))


def clip_frame_indices(clip_index: int, num_frames: int, frames_per_clip: int = FRAMES_PER_CLIP,
                       motion_frames: int = MOTION_FRAMES) -> torch.Tensor:
    """Global feature frame behind each of the clip's rows; -1 marks the zero audio of clip 0's leading frames."""
    clips = num_clips(num_frames, frames_per_clip, motion_frames)
    if not 0 <= clip_index < clips:
        raise ValueError(f"clip {clip_index} does not exist: {num_frames} frames make {clips} clips")
    start = clip_index * new_frames_per_clip(frames_per_clip, motion_frames) - motion_frames
    rows = torch.arange(start, start + frames_per_clip)
    return torch.where(rows < 0, torch.full_like(rows, -1), rows.clamp(max=num_frames - 1))


def window_indices(num_frames: int, radius: int = WINDOW_RADIUS) -> torch.Tensor:
    """(num_frames, 2*radius+1): the frames in each frame's window, clamped to [0, num_frames-1]."""
    return (torch.arange(num_frames)[:, None] + torch.arange(-radius, radius + 1)[None, :]).clamp(0, num_frames - 1)


def clip_audio(features: AudioFeatures | torch.Tensor, clip_index: int, *, frames_per_clip: int | None = None,
               motion_frames: int = MOTION_FRAMES, radius: int = WINDOW_RADIUS, dtype: torch.dtype | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
    """Clip `clip_index`'s audio windows, (frames_per_clip, 2*radius+1, layers, dim), as the official loop builds them.

    `features` is an `AudioFeatures` or its (num_frames, layers, dim) tensor. The official code casts each clip to
    bf16 on the GPU; pass `dtype`/`device` for that.
    """
    layers = features.layers if isinstance(features, AudioFeatures) else features
    if frames_per_clip is None:
        frames_per_clip = features.frames_per_clip if isinstance(features, AudioFeatures) else FRAMES_PER_CLIP
    n = layers.shape[0]
    rows = clip_frame_indices(clip_index, n, frames_per_clip, motion_frames)
    index = window_indices(n, radius)[rows.clamp(min=0)]  # (frames_per_clip, window)
    clip = layers[index.to(layers.device)]
    clip[(rows < 0).to(layers.device)] = 0
    return clip.to(device=device if device is not None else clip.device, dtype=dtype or clip.dtype)


def clip_output_frames(clip_index: int, frames_per_clip: int = FRAMES_PER_CLIP,
                       motion_frames: int = MOTION_FRAMES) -> range:
    """Global video frames that clip `clip_index` adds (its rows motion_frames .. frames_per_clip-1)."""
    new = new_frames_per_clip(frames_per_clip, motion_frames)
    return range(clip_index * new, (clip_index + 1) * new)
