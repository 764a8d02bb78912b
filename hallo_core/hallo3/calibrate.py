"""`python -m hallo_core calibrate`: fit the step cache (step_cache.py) on the user's own Hallo3 model.

One clip of the user's portrait and speech is rendered with every step computed, recording per step how much block
0's modulated input and the blocks' residual changed; a polynomial from the first to the second is fitted and stored
as a small JSON file beside the transformer's weights (or at --out). `generate --step-cache T` reads it.
"""

from __future__ import annotations

import sys

from .step_cache import CalibrationRecorder, StepCacheCalibration, fit_calibration

THRESHOLDS = (0.1, 0.2, 0.3)  # shown after calibrating: how many steps each would skip on this render


def add_parser(commands) -> None:
    """The `calibrate` subcommand (cli.py calls this once from build_parser)."""
    calibrate = commands.add_parser("calibrate", help="fit the step cache on your Hallo3 model (one short render)")
    calibrate.add_argument("--models", required=True, help="the official pretrained_models/ folder (Hallo3)")
    calibrate.add_argument("--image", required=True, help="a portrait, as for generate")
    calibrate.add_argument("--audio", required=True, help="speech, as for generate (one clip of it is rendered)")
    calibrate.add_argument("--prompt", default="", help="scene description, as for generate")
    calibrate.add_argument("--steps", type=int, default=50, help="steps of the calibration render (official 50)")
    calibrate.add_argument("--seed", type=int, default=42)
    calibrate.add_argument("--out", default=None,
                           help="where to write the calibration (default: beside the transformer's weights)")
    calibrate.add_argument("--device", default=None, help="cuda or cpu (default: cuda when PyTorch sees a GPU)")
    calibrate.add_argument("--precision", "--dtype", dest="precision", default="auto",
                           choices=["auto", "bf16", "fp16", "fp32", "fp8_e4m3fn"])
    calibrate.add_argument("--memory", default="balanced", choices=["full", "balanced", "low", "12gb"])
    calibrate.add_argument("--no-vocal-separation", action="store_true")
    calibrate.set_defaults(run=run)


def calibrate(models_dir, image, audio, out=None, prompt: str = "", steps: int = 50, seed: int = 42,
              options=None, separate_vocals: bool = True) -> tuple[str, StepCacheCalibration]:
    """Render clip 0 with the recorder attached, fit, write; returns (path, calibration)."""
    from ..runtime.options import EngineOptions, check_integer
    from .backbone import Hallo3Settings
    from .loaders import local_hallo3_backbone

    check_integer("steps", steps, 3, 1000)
    options = options or EngineOptions.resolve()
    backbone = local_hallo3_backbone(models_dir, options, require_vocal_separator=separate_vocals)
    path = out or backbone.calibration_path()
    settings = Hallo3Settings(steps=steps, seed=seed)
    identity = backbone.prepare_identity(image)
    speech = backbone.prepare_speech(audio, separate_vocals=separate_vocals)
    video = backbone.prepare_video(identity, speech, prompt, settings)
    recorder = CalibrationRecorder(steps)
    backbone.calibration_recorder = recorder
    try:
        backbone.render_clip(video, 0, None, settings, lambda *_: None)
    finally:
        backbone.calibration_recorder = None
    calibration = fit_calibration(recorder.pairs(), steps, backbone.model_config(), backbone.weights_bytes())
    return calibration.save(path), calibration


def predicted_skips(calibration: StepCacheCalibration, threshold: float) -> int:
    """Steps the cache would skip on the calibration render itself (its recorded input changes, in order)."""
    import torch

    skipped, accumulated = 0, 0.0
    changes = [x for x, _ in calibration.pairs]  # pair i: step i + 1 against step i
    for index, change in enumerate(changes):
        step = index + 1
        accumulated += float(calibration.predict(torch.tensor(change)))
        if step < calibration.steps - 1 and accumulated < threshold:
            skipped += 1
        else:
            accumulated = 0.0
    return skipped


def run(args) -> int:
    from ..runtime.options import EngineOptions

    options = EngineOptions.resolve(args.device, args.precision, args.memory)
    path, calibration = calibrate(args.models, args.image, args.audio, args.out, args.prompt, args.steps, args.seed,
                                  options, separate_vocals=not args.no_vocal_separation)
    skips = ", ".join(f"{t:g}: {predicted_skips(calibration, t)}" for t in THRESHOLDS)
    print(f"{path}: step cache calibrated on {len(calibration.pairs)} step pairs; steps this render would skip at "
          f"thresholds {skips} (of {calibration.steps}); use generate --step-cache T", file=sys.stdout)
    return 0
