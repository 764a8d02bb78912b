"""A calibrated step cache (TeaCache-style): skip the transformer's blocks on steps where their output would change
little, reusing the last computed blocks' residual.

Signal: the relative L1 change, from one step to the next, of block 0's modulated input (its adaLN output: it mixes
the noisy latents with the timestep, so it moves as the blocks' output will). How that change maps to the change of
the blocks' residual (output minus input) depends on the model, so it is fitted on the user's own model: `python -m
hallo_core calibrate` renders one short clip computing every step, records (input change, residual change) per step
and fits a polynomial, stored as a small JSON file beside the weights (or where the user says). While rendering,
the predicted residual changes accumulate; while the sum stays under the threshold a step reuses the last residual,
otherwise it computes all blocks and the sum restarts. The first and last steps always compute.

Without a calibration the cache refuses to run (one line naming the calibrate command) rather than guessing. Off by
default: it changes the result, by amounts measured in docs/benchmarks.md. The cache is attached to a transformer for
one clip (`attached`), wrapping its `run_blocks`; the computation itself has no branch for it. The skip decision reads
one number per step on the host (a device sync per step: the price of skipping).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..errors import InputError

FORMAT = "hallo3-step-cache/1"
DEGREE = 3
CALIBRATE_COMMAND = "python -m hallo_core calibrate --models DIR --image PORTRAIT --audio SPEECH"


def default_calibration_path(transformer_path: str | os.PathLike) -> str:
    """Beside the transformer's weights: `<folder>/step_cache_calibration.json` for an official folder,
    `<file stem>.step_cache.json` for a single weights file."""
    path = os.fspath(transformer_path)
    if os.path.isdir(path):
        return os.path.join(path, "step_cache_calibration.json")
    return os.path.splitext(path)[0] + ".step_cache.json"


def weights_size(path: str | os.PathLike) -> int:
    """Bytes of a weights file, or of every file of a weights folder: which model a calibration was made on."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names
               if "step_cache" not in name)  # the calibration itself may live in the folder


def relative_change(now: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """mean |now - before| / mean |before|, as a 0-d float32 tensor (stays on the device)."""
    return (now.float() - before.float()).abs().mean() / before.float().abs().mean().clamp_min(1e-12)


@dataclass(frozen=True)
class StepCacheCalibration:
    """The fitted rescaling: predicted residual change = polyval(coefficients, input change)."""

    coefficients: tuple[float, ...]
    pairs: tuple[tuple[float, float], ...]  # the calibration render's (input change, residual change) per step
    steps: int
    model_config: dict
    weights_bytes: int
    created: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat())
    format: str = FORMAT

    def predict(self, change: torch.Tensor) -> torch.Tensor:
        result = torch.zeros_like(change)
        for coefficient in self.coefficients:  # Horner, on the device
            result = result * change + coefficient
        return result.clamp_min(0.0)

    def save(self, path: str | os.PathLike) -> str:
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        if not os.access(folder, os.W_OK):
            raise InputError(f"cannot write the calibration to {path}: the folder is not writable; pick another "
                             "path with --out")
        temporary = path + ".tmp"
        with open(temporary, "w") as f:
            json.dump(asdict(self), f, indent=1)
        os.replace(temporary, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike | None) -> StepCacheCalibration:
        if path is None or not os.path.isfile(path):
            raise InputError(f"the step cache needs a calibration of this model and {path or 'none'} does not exist; "
                             f"make one with: {CALIBRATE_COMMAND} (or pass --step-cache-calibration FILE)")
        try:
            with open(path) as f:
                data = json.load(f)
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            return cls(coefficients=tuple(float(c) for c in data["coefficients"]),
                       pairs=tuple((float(x), float(y)) for x, y in data["pairs"]), steps=int(data["steps"]),
                       model_config=dict(data["model_config"]), weights_bytes=int(data["weights_bytes"]),
                       created=str(data["created"]), format=data["format"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise InputError(f"{path} is not a step cache calibration ({error}); make one with: "
                             f"{CALIBRATE_COMMAND}") from None

    def check_model(self, model_config: dict, weights_bytes: int, path: str) -> None:
        if model_config != self.model_config or weights_bytes != self.weights_bytes:
            raise InputError(f"{path} was calibrated on another model; calibrate this one with: {CALIBRATE_COMMAND}")


def fit_calibration(pairs: list[tuple[float, float]], steps: int, model_config: dict,
                    weights_bytes: int) -> StepCacheCalibration:
    """Least-squares polynomial from input change to residual change (degree 3, fewer with few steps)."""
    if len(pairs) < 2:
        raise InputError("calibration needs at least 3 steps; use --steps 10 or more")
    x, y = np.array(pairs, dtype=np.float64).T
    degree = min(DEGREE, len(pairs) - 1)
    coefficients = np.polyfit(x, y, degree)
    return StepCacheCalibration(tuple(float(c) for c in coefficients), tuple((float(a), float(b)) for a, b in pairs),
                                steps, model_config, weights_bytes)


class _BlockWrapper:
    """What the cache and the recorder share: wrapping `model.run_blocks` for one clip and the per-step signal."""

    def __init__(self, steps: int):
        self.steps = steps
        self.calls = 0  # main-branch calls = steps done
        self.previous_input: torch.Tensor | None = None
        self.previous_residual: tuple[torch.Tensor, torch.Tensor] | None = None

    @contextlib.contextmanager
    def attached(self, model):
        inner = model.run_blocks

        def run_blocks(hidden, text, temb, rotary, frame_rotary, reference_kv, face_tokens, audio_tokens):
            if reference_kv is None:  # the separate guidance's reference-free branch: not the cached call
                return inner(hidden, text, temb, rotary, frame_rotary, reference_kv, face_tokens, audio_tokens)
            streamer = getattr(model, "block_streamer", None)  # block 0 may wait in host memory (low, 12gb)
            with streamer.resident(0) if streamer is not None else contextlib.nullcontext():
                modulated = model.transformer_blocks[0].norm1(hidden, text, temb)[0]
            args = (hidden, text, temb, rotary, frame_rotary, reference_kv, face_tokens, audio_tokens)
            if self.previous_input is not None and self.previous_input.shape != modulated.shape:
                # another batch layout (the late-step CFG cache's conditional row alone): a new sequence
                self.previous_input = self.previous_residual = None
            result = self.step(inner, args, modulated)
            self.previous_input = modulated
            self.calls += 1
            return result

        model.run_blocks = run_blocks  # an instance attribute shadows the method while attached
        try:
            yield self
        finally:
            del model.run_blocks

    def compute(self, inner, args):
        hidden, text = inner(*args)
        residual = (hidden - args[0], text - args[1])
        return (hidden, text), residual


class CalibratedStepCache(_BlockWrapper):
    def __init__(self, threshold: float, calibration: StepCacheCalibration, steps: int):
        super().__init__(steps)
        self.threshold = threshold
        self.calibration = calibration
        self.accumulated: torch.Tensor | None = None
        self.skipped = 0
        self.computed = 0

    def step(self, inner, args, modulated):
        first, last = self.previous_input is None, self.calls == self.steps - 1
        if not first:
            predicted = self.calibration.predict(relative_change(modulated, self.previous_input))
            self.accumulated = predicted if self.accumulated is None else self.accumulated + predicted
            if not last and self.previous_residual is not None and float(self.accumulated) < self.threshold:
                self.skipped += 1
                return args[0] + self.previous_residual[0], args[1] + self.previous_residual[1]
        result, self.previous_residual = self.compute(inner, args)
        self.accumulated = None
        self.computed += 1
        return result


class CalibrationRecorder(_BlockWrapper):
    """Computes every step and records (input change, residual change) pairs for `fit_calibration`."""

    def __init__(self, steps: int):
        super().__init__(steps)
        self.changes: list[tuple[torch.Tensor, torch.Tensor]] = []

    def step(self, inner, args, modulated):
        result, residual = self.compute(inner, args)
        if self.previous_input is not None and self.previous_residual is not None:
            self.changes.append((relative_change(modulated, self.previous_input),
                                 relative_change(residual[0], self.previous_residual[0])))
        self.previous_residual = residual
        return result

    def pairs(self) -> list[tuple[float, float]]:
        return [(float(x), float(y)) for x, y in self.changes]
