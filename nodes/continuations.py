"""Where a segment ends, found again from its frames: exact continuation across chained DiTDenoise nodes.

DiTDenoise hands on frames as an IMAGE: cropped back to a square when the portrait was square, and with no room
for anything else. The next segment needs the *uncropped* last frames to continue exactly as a single render would.
So each DiTDenoise files them under a digest of its last output frame; MotionFrameSampler computes the same digest
of the IMAGE it receives and, when it matches, continues from the exact frames. A modified IMAGE (another node in
between) simply does not match, and the continuation is then approximate and says so.
"""

from __future__ import annotations

import hashlib
import os

import folder_paths
import torch
from safetensors.torch import load_file, save_file


def _folder() -> str:
    return os.path.join(folder_paths.get_output_directory(), "hallo_renders", "continuations")


def _digest(last_frame: torch.Tensor) -> str:
    """Digest of one IMAGE frame (h, w, 3) float32 in [0, 1]."""
    data = last_frame.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:40]


def record(last_output_frame: torch.Tensor, motion_frames: torch.Tensor, end_frame: int) -> None:
    """File the uncropped final frames (n, 3, H, W) of a segment under its last output frame (h, w, 3)."""
    folder = _folder()
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, _digest(last_output_frame) + ".safetensors")
    save_file({"frames": motion_frames.detach().to("cpu", torch.float32).contiguous(),
               "end_frame": torch.tensor([end_frame])}, path + ".partial")
    os.replace(path + ".partial", path)


def lookup(last_frame: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    path = os.path.join(_folder(), _digest(last_frame) + ".safetensors")
    if not os.path.isfile(path):
        return None
    stored = load_file(path)
    return stored["frames"], int(stored["end_frame"][0])
