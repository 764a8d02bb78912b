"""The render directory: every finished clip is kept, so an interrupted render resumes where it stopped.

Layout:
    manifest.json                 what is being rendered (a key over every input and option that changes a frame)
    clip_00000.mkv ...            each finished clip's new frames, lossless (FFV1), written atomically
    motion_00007.safetensors      the last finished clip's final decoded frames (float), needed to continue

A clip counts as finished when its frame file exists; its motion file is written first, so a crash between the two
only redoes that clip. Only the newest motion file is kept. A directory whose manifest key differs (other inputs or
options) is cleared before reuse, never mixed.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..media.video import read_clip_frames, write_clip_frames

_CLIP = re.compile(r"clip_(\d{5})\.mkv")
_MOTION = re.compile(r"motion_(\d{5})\.safetensors")


class RenderStore:
    def __init__(self, directory: str | os.PathLike, key: str, description: dict | None = None):
        self.directory = os.fspath(directory)
        self.key = key
        manifest = os.path.join(self.directory, "manifest.json")
        self.resumed = False
        if os.path.isfile(manifest):
            try:
                with open(manifest) as f:
                    stored = json.load(f).get("key")
            except (OSError, ValueError):
                stored = None
            if stored == key:
                self.resumed = True
            else:
                self.clear()
        os.makedirs(self.directory, exist_ok=True)
        if not self.resumed:
            with open(manifest + ".partial", "w") as f:
                json.dump({"key": key, **(description or {})}, f, indent=1, default=str)
            os.replace(manifest + ".partial", manifest)

    def _clip_path(self, clip: int) -> str:
        return os.path.join(self.directory, f"clip_{clip:05d}.mkv")

    def _motion_path(self, clip: int) -> str:
        return os.path.join(self.directory, f"motion_{clip:05d}.safetensors")

    def finished_clips(self) -> list[int]:
        return sorted(int(m.group(1)) for name in os.listdir(self.directory) if (m := _CLIP.fullmatch(name)))

    def has_clip(self, clip: int) -> bool:
        return os.path.isfile(self._clip_path(clip))

    def resume_point(self, first: int, last: int) -> int:
        """First clip in [first, last) still to render: after the longest finished run that can be continued."""
        clip = first
        while clip < last and self.has_clip(clip):
            clip += 1
        if clip > first and clip < last and not os.path.isfile(self._motion_path(clip - 1)):
            clip -= 1  # its continuation state is missing: redo it
        return clip

    def save_clip(self, clip: int, frames: np.ndarray, motion_frames: torch.Tensor,
                  last_latent: torch.Tensor | None = None) -> None:
        """frames: uint8 (n, h, w, 3) the clip contributes; motion_frames: its last decoded frames (float);
        last_latent: its last latent frame (for continuing from latents)."""
        state = {"frames": motion_frames.detach().to("cpu").contiguous()}
        if last_latent is not None:
            state["latent"] = last_latent.detach().to("cpu").contiguous()
        save_file(state, self._motion_path(clip) + ".partial")
        os.replace(self._motion_path(clip) + ".partial", self._motion_path(clip))
        write_clip_frames(self._clip_path(clip), frames)
        for name in os.listdir(self.directory):
            match = _MOTION.fullmatch(name)
            if match and int(match.group(1)) != clip:
                os.remove(os.path.join(self.directory, name))

    def clip_frames(self, clip: int) -> np.ndarray:
        return read_clip_frames(self._clip_path(clip))

    def motion_frames(self, clip: int) -> torch.Tensor:
        return load_file(self._motion_path(clip))["frames"]

    def motion_latent(self, clip: int) -> torch.Tensor | None:
        return load_file(self._motion_path(clip)).get("latent")

    def clear(self) -> None:
        """Remove this store's files (only ours: a user folder given as render directory keeps its other files)."""
        if not os.path.isdir(self.directory):
            return
        for name in os.listdir(self.directory):
            if _CLIP.fullmatch(name) or _MOTION.fullmatch(name) or name.startswith("manifest.json") \
                    or name.endswith(".partial") or ".partial." in name:
                os.remove(os.path.join(self.directory, name))
        if not os.listdir(self.directory):
            os.rmdir(self.directory)
