"""Hallo3 as a render-engine backbone: a portrait, speech and a prompt in; 25 fps frames out, clip after clip.

Per video (exact rewrites of the official per-clip work):
  face embedding and references (InsightFace, face mask, resize); wav2vec2 features; T5 once per prompt;
  the reference latent and the reference network once (its input never changes), its tokens' keys and values once.
Per clip c (official order):
  motion frames (reference copies for clip 0, else the previous clip's last decoded frames) -> dropout mask ->
  VAE encode of [reference, motion] -> condition latents; audio windows of the clip -> audio tokens; initial noise;
  50 steps of DPM-Solver++(2M) with CFG 3.5 -> latents -> chunked VAE decode -> 47 new frames.

Seed policy: every random draw of clip c (motion-frame dropout mask, VAE posterior sample of the condition latent,
initial noise, sampler noise) comes from its own CPU generator seeded with `clip_seed(seed, c)`, and the reference
latent's posterior sample from `reference_seed(seed)`. A clip's numbers therefore depend only on the base seed, its
index, its inputs and the previous clip's frames, so a video rendered in segments, or resumed after a crash, equals
one rendered in a single pass. Draws are made on the CPU, so results do not depend on the GPU's random generator.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from ..audio import Audio, AudioFeatures, clip_audio, decode_audio, prepare_speech
from ..errors import InputError
from ..face import ReferenceImages, load_image, prepare_reference
from ..render.backbone import ClipResult, Continuation, StepCallback, tensor_digest
from ..render.clip_plan import ClipPlan, derived_seed, seeded_generator
from ..render.latent_preview import LatentPreviewer
from ..render.motion import MotionOptions, augment_motion_frames, box_mask
from ..render.settings import RenderSettings
from ..render.store import file_digest
from ..runtime.options import EngineOptions, check_number
from .config import Hallo3Config
from .denoiser import OFFICIAL_CFG_SCALE, GuidedDenoiser, LateCfgCache, SeparateGuidance, build_clip_conditioning
from .motion_condition import encode_condition, pad_condition
from .sampler import generator_noise, sample_vp_dpmpp_2m, sat_schedule
from .step_cache import CalibratedStepCache, StepCacheCalibration, weights_size

OFFICIAL_STEPS = 50
OFFICIAL_MOTION = MotionOptions(frames=2, pixel_dropout=0.1)


def clip_seed(seed: int, clip: int) -> int:
    return derived_seed("hallo3", seed, f"clip:{clip}")


def reference_seed(seed: int) -> int:
    return derived_seed("hallo3", seed, "reference")


class ModelProvider(Protocol):
    """Gives each model on the compute device for one phase (`LocalModels`, or ComfyUI's model management)."""

    def use(self, name: str): ...

    def release(self, name: str) -> None: ...


@dataclass(frozen=True)
class Hallo3Settings(RenderSettings):
    steps: int = OFFICIAL_STEPS
    cfg_scale: float = OFFICIAL_CFG_SCALE
    motion: MotionOptions = field(default_factory=lambda: OFFICIAL_MOTION)
    step_cache: float = 0.0  # calibrated step cache threshold (step_cache.py); 0 = off, the official computation
    step_cache_file: str | None = None  # its calibration (default: beside the transformer's weights)
    cfg_cache: float = 0.0  # share of the last steps reusing the cached (cond - uncond) difference; 0 = off
    guidance: SeparateGuidance | None = None  # the paper's separate text/audio(/reference) scales; None = official

    def __post_init__(self):
        super().__post_init__()
        check_number("step cache threshold", self.step_cache, 0.0, 10.0)
        check_number("cfg cache share of steps", self.cfg_cache, 0.0, 1.0, high_open=True)
        if self.cfg_cache > 0 and self.guidance is not None:
            raise InputError("--cfg-cache works with the official single guidance scale; drop --text-cfg/--audio-cfg/"
                             "--ref-cfg or --cfg-cache")

    def as_dict(self) -> dict:
        values = super().as_dict()
        if self.step_cache > 0 and self.step_cache_file and os.path.isfile(self.step_cache_file):
            values["step_cache_digest"] = file_digest(self.step_cache_file)[0]  # a new calibration: another result
        return values


@dataclass
class IdentityConditioning:
    """The portrait, prepared once: raw ArcFace embedding and the full / face-masked references at the frame size."""

    family = "hallo3"

    face_embedding: torch.Tensor  # (1, 512) float32
    references: ReferenceImages  # (1, 3, H, W) in [-1, 1]
    face_box: tuple[int, int, int, int] | None  # face box in frame pixels (x0, y0, x1, y1), for `protect_face`
    notes: list[str] = field(default_factory=list)

    @property
    def output_crop(self) -> tuple[int, int] | None:
        return self.references.output_crop

    def digest(self) -> str:
        return tensor_digest(self.face_embedding, self.references.full, self.references.masked)


@dataclass
class SpeechConditioning:
    """The speech, prepared once: wav2vec2 features of (possibly separated) vocals, and the original audio."""

    family = "hallo3"

    features: AudioFeatures
    audio: Audio  # the original, unseparated audio: what the video carries
    notes: list[str] = field(default_factory=list)

    @property
    def total_frames(self) -> int:
        return self.features.audio_length

    def digest(self) -> str:
        return tensor_digest(self.features.layers)


@dataclass
class Hallo3Video:
    """Per-video state shared by all clips: the conditioning, T5 states, the reference keys/values, the face."""

    identity: IdentityConditioning
    speech: SpeechConditioning
    text: torch.Tensor
    reference_kv: list
    face: torch.Tensor
    step_cache: StepCacheCalibration | None = None


class Hallo3Backbone:
    name = family = "hallo3"
    phases = ("text_encoder", "reference_net", "vae", "transformer")
    takes_prompt = True

    def __init__(self, models: ModelProvider, config: Hallo3Config, options: EngineOptions = EngineOptions(),
                 weights: dict | None = None, transformer_path: str | None = None):
        self.models = models
        self.transformer_path = transformer_path  # where the step cache's calibration lives by default
        self.calibration_recorder = None  # set by `calibrate`: records every step of the next clip
        self.denoiser_wrapper = None  # set by hallo_core/parallel/: each clip's GuidedDenoiser -> one spread over GPUs
        self.config = config
        self.options = options
        self.dtype = options.dtype
        self.device = options.device
        self.weights = weights or {}  # what identifies the loaded weights (paths, sizes, modification times)
        self._text_cache: dict[str, torch.Tensor] = {}
        self._reference_cache: dict[tuple, list[torch.Tensor]] = {}

    # --- geometry ------------------------------------------------------------------------------------------------
    @property
    def frame_size(self) -> tuple[int, int]:
        return self.config.pixel_size

    @property
    def frames_per_clip(self) -> int:
        return 1 + 4 * (self.config.latent_frames - 1)

    def plan(self, total_frames: int, settings: Hallo3Settings | None = None) -> ClipPlan:
        motion = (settings or self.default_settings()).motion
        if motion.frames >= self.frames_per_clip:
            raise InputError(f"{motion.frames} motion frames leave no new frame in a {self.frames_per_clip}-frame "
                             "clip; use 2 (official)")
        return ClipPlan(total_frames, self.frames_per_clip - motion.frames)

    def default_settings(self) -> Hallo3Settings:
        return Hallo3Settings()

    def model_identity(self) -> dict:
        return {"backbone": self.name, "weights": self.weights, **self.options.identity()}

    # --- per-video conditioning ------------------------------------------------------------------------------------
    def prepare_identity(self, image: Any, allow_no_face: bool = False, mask_method: str = "auto",
                         mediapipe_task: str | None = None) -> IdentityConditioning:
        image_rgb = load_image(image)
        with self.models.use("face") as analyzer:
            reference = prepare_reference(image_rgb, analyzer, size=self.frame_size, allow_no_face=allow_no_face,
                                          mask_method=mask_method, mediapipe_task=mediapipe_task)
        found = reference.identity
        face_box = (_box_in_frame(reference.mask.box, image_rgb.shape[:2], self.frame_size)
                    if found.face is not None else None)
        return IdentityConditioning(found.embedding.float(), reference.images, face_box, reference.notes)

    def prepare_speech(self, audio: Any, separate_vocals: bool = True,
                       long_audio_pieces: bool = False) -> SpeechConditioning:
        if long_audio_pieces:
            raise InputError("audio pieces (--audio-pieces) are a Hallo2 option; Hallo3 encodes the whole "
                             "speech at once")
        original = decode_audio(audio)
        with contextlib.ExitStack() as phase:
            separator = phase.enter_context(self.models.use("separator")) if separate_vocals else None
            wav2vec = phase.enter_context(self.models.use("wav2vec"))
            prepared = prepare_speech(original, wav2vec, separator, frames_per_clip=self.frames_per_clip)
        return SpeechConditioning(prepared.features, original)

    def text_states(self, prompt: str) -> torch.Tensor:
        """T5 states of the prompt (1, text_length, dim), once per prompt."""
        if prompt not in self._text_cache:
            with self.models.use("text_encoder") as encoder:
                self._text_cache[prompt] = encoder.encode(prompt).to(self.device)
        return self._text_cache[prompt]

    def reference_tokens(self, identity: IdentityConditioning, seed: int) -> list[torch.Tensor]:
        """The reference network's per-layer tokens: once per video (the official code recomputes them per clip)."""
        key = (identity.digest(), seed)
        if key not in self._reference_cache:
            with self.models.use("vae") as vae:  # (1, 3, 1, H, W) -> (1, 1, 16, h, w)
                latent = vae.encode(identity.references.masked.unsqueeze(2),
                                    seeded_generator(reference_seed(seed))).permute(0, 2, 1, 3, 4)
            with torch.no_grad(), self.models.use("reference_net") as reference_net:
                tokens = reference_net(latent.to(self.device))
            self.models.release("reference_net")  # never needed again for this video
            self._reference_cache = {key: tokens}
        return self._reference_cache[key]

    def prepare_video(self, identity: IdentityConditioning, speech: SpeechConditioning, prompt: str,
                      settings: Hallo3Settings) -> Hallo3Video:
        calibration = self.step_cache_calibration(settings) if settings.step_cache > 0 else None  # refuse early
        text = self.text_states(prompt)
        tokens = self.reference_tokens(identity, settings.seed)
        with self.models.use("transformer") as transformer:
            reference_kv = transformer.reference_key_values(tokens)
        return Hallo3Video(identity, speech, text, reference_kv, identity.face_embedding.to(self.device),
                           calibration)

    def calibration_path(self, settings: Hallo3Settings | None = None) -> str | None:
        from .step_cache import default_calibration_path

        if settings is not None and settings.step_cache_file:
            return settings.step_cache_file
        return default_calibration_path(self.transformer_path) if self.transformer_path else None

    def step_cache_calibration(self, settings: Hallo3Settings) -> StepCacheCalibration:
        """The step cache's calibration for these weights, or a one-line error naming the calibrate command."""
        path = self.calibration_path(settings)
        calibration = StepCacheCalibration.load(path)
        calibration.check_model(self.model_config(), self.weights_bytes(), path)
        return calibration

    def model_config(self) -> dict:
        return json.loads(self.config.to_json())

    def weights_bytes(self) -> int:
        return weights_size(self.transformer_path) if self.transformer_path else 0

    def latent_previewer(self, identity: IdentityConditioning) -> LatentPreviewer:
        """Latent -> RGB previews fitted on this portrait (latent_preview.py); one small VAE encode."""
        with self.models.use("vae") as vae:
            latent = vae.encode_mean(identity.references.full.unsqueeze(2))  # (1, 16, 1, h, w)
        return LatentPreviewer(latent[0, :, 0], identity.references.full[0])

    # --- one clip --------------------------------------------------------------------------------------------------
    def render_clip(self, video: Hallo3Video, index: int, previous: Continuation | None, settings: Hallo3Settings,
                    on_step: StepCallback) -> ClipResult:
        motion = settings.motion
        plan = self.plan(video.speech.total_frames, settings)
        generator = seeded_generator(clip_seed(settings.seed, index))
        full = video.identity.references.full.to(self.device)
        if previous is None:
            source = full.expand(motion.frames, -1, -1, -1)  # clip 0: copies of the reference image
        else:
            source = previous.motion_frames(motion.frames, self.frame_size, self.device) * 2 - 1
        source = augment_motion_frames(source.to(self.dtype), motion, generator,
                                       box_mask(video.identity.face_box, self.frame_size))

        previous_latent = previous.tensors.get("latent") if previous is not None else None
        if motion.carry_latents and previous_latent is not None:
            # Option: continue from the previous clip's last latent frame, skipping the decode/re-encode round trip.
            condition = pad_condition(previous_latent.unsqueeze(1).to(self.device), self.config.latent_frames)
        else:
            with self.models.use("vae") as vae:
                condition = encode_condition(vae.encode, full.to(self.dtype), source, self.config.latent_frames,
                                             generator)
        latent_shape = (1, self.config.latent_frames, self.config.out_channels,
                        self.config.latent_height, self.config.latent_width)
        noise = torch.randn(latent_shape, generator=generator, dtype=torch.float32).to(self.device)
        audio = clip_audio(video.speech.features, index, frames_per_clip=self.frames_per_clip,
                           motion_frames=motion.frames).unsqueeze(0)
        schedule = sat_schedule(settings.steps)

        with self.models.use("transformer") as transformer:
            conditioning = build_clip_conditioning(transformer, condition.to(self.device), video.text,
                                                   audio.to(self.device), video.face, video.reference_kv)
            late_cfg = LateCfgCache(settings.cfg_cache) if settings.cfg_cache > 0 else None
            denoiser = GuidedDenoiser(transformer, conditioning, schedule, settings.cfg_scale, settings.guidance,
                                      late_cfg)
            if self.denoiser_wrapper is not None:
                denoiser = self.denoiser_wrapper(denoiser)
            with self._block_wrapper(video, settings).attached(transformer):
                latents = sample_vp_dpmpp_2m(
                    denoiser, noise, schedule, generator_noise(generator),
                    lambda info: on_step(info["step"] + 1, info["steps"], info["denoised"]))

        with self.models.use("vae") as vae:
            pixels = vae.decode(latents.permute(0, 2, 1, 3, 4))[0].transpose(0, 1)  # (49, 3, H, W) in [0, 1]
        kept = plan.clip_output_frames(index)
        new = pixels[motion.frames: motion.frames + len(kept)]
        continuation = Continuation(pixels[-motion.frames:].float().cpu(), kept.stop,
                                    {"latent": latents[:, -1].float().cpu()})
        return ClipResult(index, new.float().cpu(), continuation)

    def _block_wrapper(self, video: Hallo3Video, settings: Hallo3Settings):
        """What wraps the transformer's blocks for this clip: the calibration recorder, the step cache, or nothing."""
        if self.calibration_recorder is not None:
            return self.calibration_recorder
        if video.step_cache is not None and settings.step_cache > 0:
            return CalibratedStepCache(settings.step_cache, video.step_cache, settings.steps)
        return _NoWrapper()


class _NoWrapper:
    @contextlib.contextmanager
    def attached(self, model):
        yield self


def _box_in_frame(box, image_hw, frame_hw) -> tuple[int, int, int, int]:
    """A (x0, x1, y0, y1) box of the source image mapped through the official resize (pad or cover-crop)."""
    x0, x1, y0, y1 = box
    height, width = image_hw
    frame_h, frame_w = frame_hw
    if height == width:
        scale, dx, dy = frame_h / height, (frame_w - frame_h) // 2, 0
    else:
        scale = max(frame_h / height, frame_w / width)
        dx, dy = (width * scale - frame_w) / -2, (height * scale - frame_h) / -2
    return (int(x0 * scale + dx), int(y0 * scale + dy), int(np.ceil(x1 * scale + dx)), int(np.ceil(y1 * scale + dy)))
