"""Progress reporting and cancellation for long renders.

The engine reports through one callback with a `ProgressEvent`; the command line draws a progress bar from it and
ComfyUI forwards it to its progress bar and previews. `cancel()` is asked before every denoising step: returning
True (or raising) stops the render; finished clips stay in the render directory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import RenderCancelled


@dataclass
class ProgressEvent:
    phase: str  # "prepare", "reference", "denoise", "decode", "clip_done", "write", "done"
    clip: int = 0  # 0-based index of the clip being worked on
    clips: int = 0  # clips in this render
    step: int = 0  # 1-based denoising step within the clip (denoise phase)
    steps: int = 0
    latents: torch.Tensor | None = field(default=None, repr=False)  # current x0 estimate, for previews
    message: str = ""
    elapsed: float = 0.0  # seconds since the render started


ProgressCallback = Callable[[ProgressEvent], None]
CancelCheck = Callable[[], bool]


class Reporter:
    """Stamps events with the elapsed time and checks the cancel hook."""

    def __init__(self, callback: ProgressCallback | None = None, cancel: CancelCheck | None = None):
        self.callback = callback
        self.cancel = cancel
        self.started = time.monotonic()

    def __call__(self, event: ProgressEvent) -> None:
        event.elapsed = time.monotonic() - self.started
        if self.callback is not None:
            self.callback(event)

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel():
            raise RenderCancelled("render cancelled; finished clips are kept and a re-run resumes from them")
