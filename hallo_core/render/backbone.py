"""What the render engine needs from a backbone (Hallo3's DiT, the Hallo/Hallo2 UNet), and what a clip hands on.

The engine (engine.py) owns everything that is the same for every backbone: which clips a video needs, resuming
from the render store, segments, progress and cancel, and the MP4 (segments.py). A backbone owns its models and
numbers: it prepares the portrait and the speech once per video, conditions and denoises one clip at a time, and
decodes it. The contract, in the order the engine calls it:

    identity = backbone.prepare_identity(image)                    # once per portrait
    speech = backbone.prepare_speech(audio)                        # once per speech
    plan = backbone.plan(speech.total_frames, settings)            # which clips, which frames each makes
    video = backbone.prepare_video(identity, speech, prompt, settings)   # per-video work (text, reference tokens)
    for clip in clips:
        result = backbone.render_clip(video, clip, previous, settings, step_callback)
        previous = result.continuation                             # the next clip continues from it

Every random draw of a clip comes from the backbone's seed policy, which depends only on the seed, the clip index and
the continuation it starts from; so a render split into segments, or resumed after a crash, equals one made in a
single pass.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from ..errors import InputError
from .clip_plan import ClipPlan


@dataclass
class Continuation:
    """Where a clip (or a segment) ends: what the next clip needs to continue exactly as a single render would.

    `frames` are the clip's last decoded frames, uncropped float32 (m, 3, H, W) in [0, 1] (the motion frames of the
    next clip). `end_frame` is the output frame after this clip (None: unknown, frames from elsewhere). `tensors`
    holds whatever else the backbone's next clip needs (a last latent frame), saved with the frames in the render
    store. `source` says how a segment's continuation was made (backbone, settings), so the next segment can check.
    """

    frames: torch.Tensor
    end_frame: int | None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    source: dict = field(default_factory=dict)

    def motion_frames(self, count: int, frame_size: tuple[int, int], device: torch.device) -> torch.Tensor:
        """The last `count` frames, float32 in [0, 1] on `device`, for a model rendering `frame_size` (H, W) frames;
        a continuation that cannot serve is refused in one line."""
        frames = self.frames
        if frames.shape[0] < count:
            raise InputError(f"{count} motion frames needed, the previous segment gave {frames.shape[0]}")
        if tuple(frames.shape[-2:]) != tuple(frame_size):
            raise InputError(f"the previous segment's frames are {frames.shape[-1]}x{frames.shape[-2]}, this model "
                             f"renders {frame_size[1]}x{frame_size[0]}; continue a segment of the same model")
        return frames[-count:].to(device, torch.float32)


class ClipResult:
    """A finished clip: its new frames and its continuation (read from the render store only when asked for, for a
    resumed clip)."""

    def __init__(self, index: int, frames: torch.Tensor, continuation: Continuation | Callable[[], Continuation],
                 resumed: bool = False):
        self.index = index
        self.frames = frames  # (n, 3, H, W) float32 in [0, 1]: the clip's new frames, trimmed to the video
        self._continuation = continuation
        self.resumed = resumed  # read back from the render directory instead of rendered

    @property
    def continuation(self) -> Continuation:
        if callable(self._continuation):
            self._continuation = self._continuation()
        return self._continuation


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 over the exact bytes of tensors (render keys)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{data.dtype}{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def frames_to_uint8(frames: torch.Tensor) -> "torch.Tensor":
    """(n, 3, H, W) in [0, 1] -> (n, H, W, 3) uint8 by truncation, as the official writers do."""
    return (frames.permute(0, 2, 3, 1) * 255).to(torch.uint8).cpu()


StepCallback = Callable[[int, int, torch.Tensor | None], None]  # (step 1-based, steps, current x0 or None)


@runtime_checkable
class Backbone(Protocol):
    """A model family the engine can render with. Attributes are read-only facts of the loaded models."""

    name: str  # "hallo3", "hallo", "hallo2"
    family: str  # backbones of one family share their prepared portrait and speech ("hallo3", "unet")
    frame_size: tuple[int, int]  # (height, width) of rendered frames
    phases: tuple[str, ...]  # model names used in the clip loop, in order (memory presets move them)

    def plan(self, total_frames: int, settings: Any) -> ClipPlan:
        """Clips of a video of `total_frames` output frames under `settings` (motion frames, ...)."""

    def prepare_identity(self, image: Any, allow_no_face: bool = False) -> Any:
        """The portrait, prepared once; has `.family`, `.notes`, `.output_crop` and `.digest()`."""

    def prepare_speech(self, audio: Any, separate_vocals: bool = True) -> Any:
        """The speech, prepared once; has `.family`, `.total_frames`, `.audio` (the original, for the MP4), `.notes`
        and `.digest()`."""

    def prepare_video(self, identity: Any, speech: Any, prompt: str, settings: Any) -> Any:
        """Per-video work shared by all its clips (text states, reference tokens, ...)."""

    def render_clip(self, video: Any, index: int, previous: Continuation | None, settings: Any,
                    on_step: StepCallback) -> ClipResult:
        """Clip `index`, continuing `previous` (None: clip 0, from the portrait). `on_step` is called after every
        denoising step; raising from it stops the render."""

    def default_settings(self) -> Any:
        """The official render settings of this backbone."""

    def latent_previewer(self, identity: Any) -> Callable[[torch.Tensor], Any] | None:
        """latents -> uint8 RGB preview, fitted on this portrait (None: no previews)."""

    def model_identity(self) -> dict:
        """What identifies the loaded weights and engine options in a render key (paths, sizes, dtype, ...)."""
