"""The batch manifest: one JSON object per line, one job each, every line checked before anything starts.

    {"image": "portraits/anna.jpg", "audio": "speech/anna.wav", "prompt": "A woman talking", "steps": 40}
    {"image": "portraits/ben.png", "audio": "speech/ben.mp3", "models": "/models/hallo3", "output": "ben.mp4"}

Relative paths are relative to the manifest's folder; `output` is a file name in the batch's output folder (default
`<image name>_<audio name>.mp4`). Blank lines and lines starting with `#` are skipped. The keys are the `generate`
options (hallo_core/cli.py) with underscores: see `KEYS`. A line is bad when it is not a JSON object, has an unknown
key, a value of the wrong type or out of range, a missing file or models folder, an option its backbone does not
have, or the output of an earlier line (each job has its own render folder); every bad line is reported with its
line number.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from ..errors import HalloError, InputError
from ..runtime.options import EngineOptions

# key -> JSON type. Settings and engine keys mean what the `generate` flag of the same name means.
KEYS = {
    "image": str, "audio": str, "models": str, "output": str, "prompt": str, "backbone": str,
    "steps": int, "seed": int, "cfg": float, "vocal_separation": bool,
    "precision": str, "memory": str, "attention": str, "compile": bool, "fp8_matmul": bool,
    "step_cache": float, "step_cache_calibration": str, "cfg_cache": float,
    "text_cfg": float, "audio_cfg": float, "ref_cfg": float,
    "pose_weight": float, "expression_weight": float, "lip_weight": float, "size": int, "seed_policy": str,
    "audio_pieces": bool,
    "motion_frames": int, "motion_dropout": float, "motion_drop_patch": int, "motion_noise": float,
    "protect_face": bool, "carry_latents": bool,
}
ENGINE_KEYS = {"precision": "auto", "memory": "balanced", "attention": "auto", "compile": None, "fp8_matmul": False}
SETTINGS_FIELDS = {"steps": "steps", "cfg": "cfg_scale", "seed": "seed", "step_cache": "step_cache",
                   "step_cache_calibration": "step_cache_file", "cfg_cache": "cfg_cache", "pose_weight": "pose_weight",
                   "expression_weight": "expression_weight", "lip_weight": "lip_weight", "seed_policy": "seed_policy"}
FILE_KEYS = ("image", "audio", "step_cache_calibration")
MOTION_FIELDS = {"motion_frames": "frames", "motion_dropout": "pixel_dropout", "motion_drop_patch": "drop_patch",
                 "motion_noise": "noise_std", "protect_face": "protect_face", "carry_latents": "carry_latents"}
GUIDANCE_KEYS = ("text_cfg", "audio_cfg", "ref_cfg")
_TYPE_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}


@dataclass(frozen=True)
class Job:
    line: int
    image: str  # absolute paths
    audio: str
    models: str
    output: str
    prompt: str
    backbone: str | None
    vocal_separation: bool
    engine: dict  # EngineOptions.resolve's names (device excepted: the worker's resources decide it)
    frame_size: int | None  # Hallo/Hallo2 `size`
    settings: Any  # the backbone's RenderSettings, checked
    speech_options: dict | None  # the backbone's speech preparation options (`audio_pieces`)
    key: str  # digest of everything that makes the video: a finished job with the same key is not redone

    @property
    def render_dir(self) -> str:
        """Where the job keeps its finished clips: beside its output, on the output storage, as `generate` does."""
        return os.path.splitext(self.output)[0] + ".render"


@dataclass(frozen=True)
class BadLine:
    line: int
    error: str


def read_manifest(path: str, out_dir: str, default_models: str | None = None) -> tuple[list[Job], list[BadLine]]:
    """The good jobs and the bad lines of a manifest; an unreadable manifest is an InputError."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the batch manifest {path}: {getattr(error, 'strerror', None) or error}") \
            from None
    base = os.path.dirname(os.path.abspath(path))
    checker = _Checker(base, os.path.abspath(out_dir), default_models and os.path.abspath(default_models))
    jobs: list[Job] = []
    bad: list[BadLine] = []
    taken: dict[str, int] = {}
    for number, text in enumerate(lines, 1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        try:
            values = checker.values(text)
            output = values.get("output") or os.path.join(checker.out_dir, "_".join(
                os.path.splitext(os.path.basename(values[key]))[0] for key in ("image", "audio")) + ".mp4")
            job = checker.job(number, values, output)
            if output in taken:  # one render directory per job
                raise InputError(f"output {os.path.basename(output)} is also line {taken[output]}'s; give each job "
                                 "its own \"output\"")
            jobs.append(job)
            taken[output] = number
        except HalloError as error:
            bad.append(BadLine(number, str(error)))
    if not jobs and not bad:
        raise InputError(f"the batch manifest {path} holds no job; write one JSON object per line, e.g. "
                         '{"image": "portrait.jpg", "audio": "speech.wav"}')
    return jobs, bad


class _Checker:
    def __init__(self, base: str, out_dir: str, default_models: str | None):
        self.base = base
        self.out_dir = out_dir
        self.default_models = default_models
        self.backbones: dict[tuple, Any] = {}

    def values(self, text: str) -> dict:
        """The line's values, typed and with absolute paths; every problem of the line in one message."""
        try:
            values = json.loads(text)
        except ValueError as error:
            raise InputError(f"not a JSON object ({error.args[0].split(':')[0]}); write one object per line, e.g. "
                             '{"image": "portrait.jpg", "audio": "speech.wav"}') from None
        if not isinstance(values, dict):
            raise InputError(f"a JSON {type(values).__name__} instead of an object with \"image\" and \"audio\"")
        problems = []
        for key in values:
            if key not in KEYS:
                close = difflib.get_close_matches(key, KEYS, n=1)
                problems.append(f"unknown key \"{key}\"" + (f" (did you mean \"{close[0]}\"?)" if close else ""))
        for key, kind in KEYS.items():
            if key in values and not _is(values[key], kind):
                problems.append(f"\"{key}\" must be {_TYPE_NAMES[kind]}, got {json.dumps(values[key])}")
            elif key in values and kind is float:
                values[key] = float(values[key])  # 4 and 4.0 are the same render
        if self.default_models is not None:
            values.setdefault("models", self.default_models)
        for key in ("image", "audio", "models", "step_cache_calibration"):
            if key not in values:
                if key != "step_cache_calibration":
                    problems.append(f"\"{key}\" is missing" + (" (or give --models)" if key == "models" else ""))
            elif isinstance(values[key], str):
                values[key] = os.path.normpath(os.path.join(self.base, os.path.expanduser(values[key])))
                is_there = os.path.isdir if key == "models" else os.path.isfile
                if not is_there(values[key]):
                    what = "models folder" if key == "models" else key.replace("_", " ")
                    problems.append(f"{what} {values[key]} not found")
        output = values.get("output")
        if isinstance(output, str) and (os.path.basename(output) != output or not output.lower().endswith(".mp4")):
            problems.append(f"\"output\" must be a file name ending in .mp4 (it goes into --out), got \"{output}\"")
        if problems:
            raise InputError("; ".join(problems))
        if "output" in values:
            values["output"] = os.path.join(self.out_dir, values["output"])
        return values

    def job(self, line: int, values: dict, output: str) -> Job:
        from ..backbones import load_backbone
        from ..media.video import check_output_path

        engine = {key: values.get(key, default) for key, default in ENGINE_KEYS.items()}
        EngineOptions.resolve("cpu", **engine)  # the names only: the device is the worker's
        check_output_path(output)
        vocal_separation = values.get("vocal_separation", True)
        cache = (values["models"], values.get("backbone"), vocal_separation, values.get("size"))
        if cache not in self.backbones:  # the model files are checked once per folder, nothing is loaded
            self.backbones[cache] = load_backbone(values["models"], EngineOptions.resolve("cpu"),
                                                  values.get("backbone"), require_vocal_separator=vocal_separation,
                                                  frame_size=values.get("size"))
        backbone = self.backbones[cache]
        settings = job_settings(backbone, values)
        spec = {key: values[key] for key in sorted(values) if key in KEYS and key != "output"}
        files = {key: _stat(values[key]) for key in FILE_KEYS if key in values}
        digest = hashlib.sha256(json.dumps([spec, files, output, backbone.name], sort_keys=True).encode())
        return Job(line=line, image=values["image"], audio=values["audio"], models=values["models"], output=output,
                   prompt=values.get("prompt", ""), backbone=values.get("backbone"), vocal_separation=vocal_separation,
                   engine=engine, frame_size=values.get("size"), settings=settings,
                   speech_options={"long_audio_pieces": True} if values.get("audio_pieces") else None,
                   key=digest.hexdigest()[:24])


def job_settings(backbone: Any, values: dict) -> Any:
    """The backbone's official settings with the line's values, as the `generate` command builds them (hallo_core/
    cli.py); a key the backbone does not have is refused by its manifest name."""
    defaults = backbone.default_settings()
    fields = {f.name for f in dataclasses.fields(defaults)}
    foreign = [key for key, field in SETTINGS_FIELDS.items() if key in values and field not in fields]
    foreign += [key for key in GUIDANCE_KEYS if key in values and "guidance" not in fields]
    if foreign:
        verb = "is not an option" if len(foreign) == 1 else "are not options"
        raise InputError(f"{', '.join(json.dumps(key) for key in foreign)} {verb} of {backbone.name}")
    overrides = {field: values[key] for key, field in SETTINGS_FIELDS.items() if key in values}
    if values.get("step_cache") and "step_cache_file" not in overrides:  # in the render key: its contents count
        overrides["step_cache_file"] = getattr(backbone, "calibration_path", lambda: None)()
    elif not values.get("step_cache"):
        overrides.pop("step_cache_file", None)  # as `generate`: no step cache, no calibration file
    motion = {field: values[key] for key, field in MOTION_FIELDS.items() if key in values}
    if any(key in values for key in GUIDANCE_KEYS):
        from ..hallo3.denoiser import SeparateGuidance

        cfg = values.get("cfg", defaults.cfg_scale)
        overrides["guidance"] = SeparateGuidance(text=values.get("text_cfg", cfg), audio=values.get("audio_cfg", cfg),
                                                 reference=values.get("ref_cfg"))
    return defaults.with_overrides(backbone.name, motion=motion, **overrides)


def _is(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _stat(path: str) -> list:
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]
