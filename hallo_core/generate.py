"""`generate`: portrait + speech (+ prompt) -> MP4 at 25 fps with the speech, as long as the speech.

The whole speech is one segment (render/segments.py) of the backbone the models folder holds. It renders into a
render directory (default `<out>.render/`) that keeps every finished clip, so running the same command again after an
interruption continues from the last finished clip; the MP4 is written at the end under a temporary name and renamed.
The render directory is removed after success unless asked to keep it. Everything that can be checked is checked
before the first model loads: the output path, the render folder, the image, the audio, the model files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from .audio.decode import decode_audio
from .backbones import load_backbone
from .errors import OutputError
from .face.reference_image import load_image
from .media.video import check_output_path, folder_writable
from .render.backbone import Backbone
from .render.progress import ProgressEvent, Reporter
from .render.segments import Segment
from .runtime.options import EngineOptions


@dataclass
class GenerateResult:
    path: str
    frames: int
    clips: int
    resumed_clips: int
    notes: list[str]
    backbone: str


def check_render_folder(path: str) -> str:
    """A render folder that exists and is writable, or can be created."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"the render folder {path} is a file; give a folder with --render-dir")
    existing = path
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    if not folder_writable(existing):
        raise OutputError(f"cannot create the render folder {path}: {existing} is not writable; give another "
                          "folder with --render-dir")
    return path


def generate(
    image: str,
    audio: str,
    out: str,
    models: str | Backbone,
    prompt: str = "",
    settings: Any = None,
    options: EngineOptions | None = None,
    separate_vocals: bool = True,
    render_dir: str | None = None,
    keep_render: bool = False,
    progress: Callable[[ProgressEvent], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    backbone: str | None = None,
    speech_options: dict | None = None,
) -> GenerateResult:
    """Render `audio` spoken by the portrait `image` into `out` (an .mp4). `models` is an official models folder (or
    an already built backbone); `settings` default to the backbone's official ones; `speech_options` go to the
    backbone's speech preparation (Hallo2: `long_audio_pieces`).

    With a parallel plan (`options.parallel`, or the built backbone's; `torchrun ... generate --parallel`), every
    process calls this: rank 0 renders as below with the denoising steps spread over all of them
    (hallo_core/parallel/session.py), and every process returns rank 0's result."""
    engine = options if isinstance(models, (str, os.PathLike)) else getattr(models, "options", None)
    plan = getattr(engine, "parallel", None)
    if plan is not None and plan.active:
        from .parallel import parallel_generate

        model = models if not isinstance(models, (str, os.PathLike)) else load_backbone(
            models, options, backbone, require_vocal_separator=separate_vocals)
        settings = settings if settings is not None else model.default_settings()
        return parallel_generate(model, settings, plan, lambda: _generate(
            image, audio, out, model, prompt, settings, separate_vocals, render_dir, keep_render, progress, cancel,
            speech_options))
    return _generate(image, audio, out, models, prompt, settings, separate_vocals, render_dir, keep_render, progress,
                     cancel, speech_options, options, backbone)


def _generate(image, audio, out, models, prompt, settings, separate_vocals, render_dir, keep_render, progress, cancel,
              speech_options, options=None, backbone=None) -> GenerateResult:
    # Cheap checks first: a bad path or file is reported before any model is loaded.
    out = check_output_path(out)
    render_dir = check_render_folder(render_dir or os.path.splitext(out)[0] + ".render")
    original_audio = decode_audio(audio)
    image_rgb = load_image(image)
    model = models if not isinstance(models, (str, os.PathLike)) else load_backbone(
        models, options or EngineOptions.resolve(), backbone, require_vocal_separator=separate_vocals)
    settings = settings if settings is not None else model.default_settings()
    reporter = Reporter(progress, cancel)

    reporter(ProgressEvent("prepare", message="face and references"))
    identity = model.prepare_identity(image_rgb)
    reporter(ProgressEvent("prepare", message="speech features"))
    speech = model.prepare_speech(original_audio, separate_vocals=separate_vocals, **(speech_options or {}))
    segment = Segment(model, identity, speech, prompt, settings)
    if prompt and not getattr(model, "takes_prompt", True):
        segment.notes.append(f"{model.name} takes no prompt; the prompt is not used")
    with segment.open_store(render_dir) as store:
        result = segment.render(store, reporter)
        frames = segment.write_mp4(store, out, reporter)
        if not keep_render:
            store.clear()
    reporter(ProgressEvent("done", clips=len(segment.clips), message=out))
    return GenerateResult(out, frames, len(segment.clips), result.resumed, identity.notes + speech.notes +
                          result.notes, model.name)
