"""One batch job, run on a Ray worker: `generate` into the job's render directory, progress sent to the batch.

The render directory is beside the output on the output storage (hallo_core/render/store.py), so when the worker dies
Ray runs the job again, on this node or another, and `generate` reuses every finished clip. A job never raises for a
bad input or a bug: it returns its record with the error in one line (a `HalloError`'s message as it is, anything
else as `Type: message`, with the traceback kept in the record), so one bad job never stops the batch.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable

from ..errors import HalloError
from ..render.progress import ProgressEvent
from .manifest import Job

Report = Callable[[dict], None]


def run_job(job: Job, device: str, keep_render: bool, report: Report) -> dict:
    """The job's results record: output, frames, clips, resumed_clips, seconds, error (None when it worked)."""
    from ..backbones import load_backbone
    from ..generate import generate
    from ..runtime.options import EngineOptions

    started = time.monotonic()
    report({"event": "start", "pid": os.getpid(), "host": socket.gethostname()})
    record = {"line": job.line, "output": job.output, "frames": None, "clips": None, "resumed_clips": None,
              "backbone": None, "error": None, "notes": []}
    try:
        options = EngineOptions.resolve(device, **job.engine)
        backbone = load_backbone(job.models, options, job.backbone, require_vocal_separator=job.vocal_separation,
                                 frame_size=job.frame_size)
        result = generate(job.image, job.audio, job.output, backbone, prompt=job.prompt, settings=job.settings,
                          separate_vocals=job.vocal_separation, render_dir=job.render_dir, keep_render=keep_render,
                          progress=_Forward(report), speech_options=job.speech_options)
        record.update(frames=result.frames, clips=result.clips, resumed_clips=result.resumed_clips,
                      backbone=result.backbone, notes=result.notes)
    except HalloError as error:
        record["error"] = str(error)
    except Exception as error:  # a bug: one line for the results, the traceback kept beside it
        record["error"] = one_line(error)
        record["traceback"] = traceback.format_exc()
    record["seconds"] = round(time.monotonic() - started, 2)
    report({"event": "end", "error": record["error"]})
    return record


def one_line(error: BaseException, limit: int = 300) -> str:
    """`Type: message` in one line, cut to `limit` characters."""
    text = " ".join(str(error).split())
    line = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


class _Forward:
    """ProgressEvents -> small dicts for the batch's progress actor; denoising steps at most once a second (the
    view needs no more, and every call is a message to the actor)."""

    def __init__(self, report: Report, every: float = 1.0):
        self.report = report
        self.every = every
        self.last = 0.0

    def __call__(self, event: ProgressEvent) -> None:
        if event.phase == "clip_done":
            self.report({"event": "clip_done", "clip": event.clip, "clips": event.clips,
                         "resumed": event.message == "resumed"})
        elif event.phase == "denoise":
            now = time.monotonic()
            if now - self.last >= self.every:
                self.last = now
                self.report({"event": "step", "clip": event.clip, "clips": event.clips, "step": event.step,
                             "steps": event.steps})
        elif event.phase == "prepare" and event.clips:
            self.report({"event": "clips", "clips": event.clips})
        elif event.phase == "write":
            self.report({"event": "write"})
