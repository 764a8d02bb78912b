"""The clip loop, once for every backbone: resume, continuation, progress and cancel around `Backbone.render_clip`.

`render_clips` renders a range of clips in order. Each clip continues the previous one's `Continuation`: the one
rendered just before, the one saved in the render store, or the one handed in from a previous segment. With a store,
every finished and intact clip is reused instead of rendered (a damaged one is rendered again), and every rendered
clip is saved before the next starts. Progress events carry the clip and step; the cancel hook is asked at every step.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from ..errors import InputError
from .backbone import Backbone, ClipResult, Continuation, frames_to_uint8
from .clip_plan import ClipPlan
from .progress import ProgressEvent, Reporter
from .store import RenderStore


def render_clips(
    backbone: Backbone,
    video: Any,
    plan: ClipPlan,
    settings: Any,
    clips: range | None = None,
    previous: Continuation | None = None,
    store: RenderStore | None = None,
    reporter: Reporter | None = None,
) -> Iterator[ClipResult]:
    """Render `clips` (default: all of `plan`) and yield each finished clip in order.

    `previous` is the continuation of the clip before `clips.start` (from a previous segment); clip 0 starts from the
    portrait. Resumed clips are yielded with `resumed=True`, their frames read back from the store.
    """
    reporter = reporter or Reporter()
    clips = clips if clips is not None else range(plan.num_clips)
    if not 0 <= clips.start < clips.stop <= plan.num_clips:
        raise InputError(f"clips {clips.start}..{clips.stop - 1} are outside the video's {plan.num_clips} clips")
    if clips.start == 0 and previous is not None:
        raise InputError("the first clip starts from the portrait; a previous segment's frames cannot be continued "
                         "at 0 s")
    if clips.start > 0 and previous is None and not (store is not None and store.verified(clips.start - 1)):
        raise InputError(f"clip {clips.start} continues clip {clips.start - 1}: pass the previous segment's "
                         "continuation (MotionFrameSampler) or render from the start")
    total = len(clips)
    last_rendered: ClipResult | None = None  # in memory: its continuation needs no file
    for index in clips:
        position = index - clips.start
        if store is not None and store.verified(index):
            frames = torch.from_numpy(store.clip_frames(index)).permute(0, 3, 1, 2).float() / 255
            last_rendered = None
            reporter(ProgressEvent("clip_done", clip=position, clips=total, message="resumed"))
            yield ClipResult(index, frames, lambda index=index: store.continuation(index), resumed=True)
            continue
        start = _continuation_before(index, clips, previous, last_rendered, store)
        reporter(ProgressEvent("prepare", clip=position, clips=total))

        def on_step(step: int, steps: int, latents: torch.Tensor | None, position=position) -> None:
            reporter.check_cancel()
            reporter(ProgressEvent("denoise", clip=position, clips=total, step=step, steps=steps, latents=latents))

        reporter.check_cancel()
        result = backbone.render_clip(video, index, start, settings, on_step)
        kept = plan.clip_output_frames(index)
        if result.frames.shape[0] != len(kept):
            raise RuntimeError(f"clip {index} made {result.frames.shape[0]} frames, the plan needs {len(kept)}")
        if store is not None:
            store.save_clip(index, frames_to_uint8(result.frames).numpy(), result.continuation)
        last_rendered = result
        reporter(ProgressEvent("clip_done", clip=position, clips=total))
        yield result


def _continuation_before(index: int, clips: range, previous: Continuation | None, last: ClipResult | None,
                         store: RenderStore | None) -> Continuation | None:
    if index == 0:
        return None
    if last is not None and last.index == index - 1:
        return last.continuation
    if index == clips.start and previous is not None:
        return previous
    return store.continuation(index - 1)
