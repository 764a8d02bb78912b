"""Hallo and Hallo2 as a render-engine backbone: a square portrait and speech in; 25 fps frames out, 16 per clip.

Per video: the face embedding, the square reference, the hierarchical masks (pose / expression / lip) and the
face-locator image; wav2vec2 features in 16-frame clips. Per clip c (official order, hallo `scripts/inference.py`,
hallo2 `scripts/inference_long.py`):
  motion frames (the reference twice for clip 0, else the previous clip's last 2 decoded float frames) -> Hallo2: the
  pixel drop outside the face -> VAE means of [reference, motion 1, motion 2]; initial noise; image, audio and face
  tokens; the ReferenceNet's bank (once per clip, timestep 0, fp16-rounded); 40 DDIM steps with CFG 3.5 and the
  pose / expression / lip weights -> per-frame VAE decode -> 16 new frames.

Seed policy (`seed_policy`): "official" (default) draws everything from one CPU generator seeded once for the whole
video, as the official scripts (per clip: Hallo2's rand(H, W) drop mask, then the latent noise), so a render
reproduces the official one; the generator's state is saved with every clip's continuation, so segments and resumed
renders still equal one render (a segment continued from frames made elsewhere replays the draws of the clips
before it). "per-clip" gives every clip its own generator, as Hallo3 does.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..audio import Audio, decode_audio
from ..audio.unet_windows import prepare_unet_speech, unet_clip_audio, unet_output_frames
from ..audio.wav2vec_features import AudioFeatures
from ..errors import InputError
from ..face import load_image
from ..face.unet_reference import UnetReference, prepare_unet_reference
from ..render.backbone import ClipResult, Continuation, StepCallback, tensor_digest
from ..render.clip_plan import ClipPlan, derived_seed, seeded_generator
from ..render.latent_preview import LatentPreviewer
from ..render.motion import MotionOptions, augment_motion_frames
from ..render.settings import RenderSettings
from ..runtime.options import EngineOptions, check_number
from .clip import ClipInputs, clip_conditioning, guided_velocity, motion_frame_pixels, project_clip, reference_bank
from .denoiser import MOTION_FRAMES
from .sampler import OFFICIAL_CFG_SCALE, OFFICIAL_STEPS, ddim_schedule, sample_ddim
from .vae import decode_latents, encode_frames

CLIP_FRAMES = 16
OFFICIAL_FRAME_SIZE = 512
LATENT_CHANNELS = 4
OFFICIAL_MOTION = {
    "hallo": MotionOptions(frames=MOTION_FRAMES, pixel_dropout=0.0),
    "hallo2": MotionOptions(frames=MOTION_FRAMES, pixel_dropout=0.25, protect_face=True),  # use_mask, mask_rate
}
SEED_POLICIES = ("official", "per-clip")


class ModelProvider(Protocol):
    def use(self, name: str): ...

    def release(self, name: str) -> None: ...


@dataclass(frozen=True)
class UNetSettings(RenderSettings):
    steps: int = OFFICIAL_STEPS
    cfg_scale: float = OFFICIAL_CFG_SCALE
    motion: MotionOptions = field(default_factory=lambda: OFFICIAL_MOTION["hallo"])
    pose_weight: float = 1.0  # how much the speech moves the head (the background / pose branch)
    expression_weight: float = 1.0  # how much it drives the face (expression branch)
    lip_weight: float = 1.0  # how much it drives the lips
    seed_policy: str = "official"

    def __post_init__(self):
        super().__post_init__()
        for name in ("pose_weight", "expression_weight", "lip_weight"):
            check_number(name.replace("_", " "), getattr(self, name), 0.0, 10.0)
        if self.motion.frames != MOTION_FRAMES:
            raise InputError(f"Hallo and Hallo2 continue each clip from exactly {MOTION_FRAMES} motion frames (the "
                             f"network is built for them), not {self.motion.frames}")
        if self.motion.carry_latents:
            raise InputError("carry_latents is a Hallo3 option; Hallo and Hallo2 re-encode the motion frames")
        if self.seed_policy not in SEED_POLICIES:
            raise InputError(f"seed policy must be one of {', '.join(SEED_POLICIES)}, got {self.seed_policy!r}")

    @property
    def motion_scale(self) -> tuple[float, float, float]:
        return (self.pose_weight, self.expression_weight, self.lip_weight)


@dataclass
class UNetIdentity:
    """The portrait, prepared once: the square reference and what the masks and the face locator take."""

    reference: UnetReference
    notes: list[str] = field(default_factory=list)
    output_crop = None  # the video is the square itself
    family = "unet"

    @property
    def pixels(self) -> torch.Tensor:  # (1, 3, F, F) in [-1, 1]
        return self.reference.pixels

    def digest(self) -> str:
        masks = self.reference.masks
        return tensor_digest(self.reference.pixels, self.reference.face_embedding, masks.face_region,
                             *masks.full, *masks.face, *masks.lip)


@dataclass
class UNetSpeech:
    """The speech, prepared once: wav2vec2 features in 16-frame clips of the (separated) vocals, the original audio."""

    features: AudioFeatures
    audio: Audio  # the original, unseparated audio: what the video carries
    notes: list[str] = field(default_factory=list)
    family = "unet"

    @property
    def total_frames(self) -> int:
        return unet_output_frames(self.features)

    def digest(self) -> str:
        return tensor_digest(self.features.layers, torch.tensor([self.features.audio_length]))


@dataclass
class UNetVideo:
    identity: UNetIdentity
    speech: UNetSpeech
    protected: torch.Tensor  # (H, W) bool: the face region, never dropped from the motion frames


class UNetBackbone:
    family = "unet"  # Hallo and Hallo2 share their prepared portrait and speech
    phases = ("projections", "vae", "reference_net", "denoiser")
    takes_prompt = False

    def __init__(self, models: ModelProvider, version: str, options: EngineOptions = EngineOptions(),
                 files: Any = None, frame_size: int | None = None, weights: dict | None = None):
        if version not in OFFICIAL_MOTION:
            raise ValueError(version)
        size = frame_size or OFFICIAL_FRAME_SIZE
        if size % 64 or not 64 <= size <= 2048:
            raise InputError(f"Hallo and Hallo2 render square frames whose side is a multiple of 64 (official 512), "
                             f"got {size}")
        self.models = models
        self.name = version
        self.options = options
        self.files = files
        self.frame_size = (size, size)
        self.dtype, self.device = options.dtype, options.device
        self.weights = weights or {}

    # --- facts ------------------------------------------------------------------------------------------------------
    def default_settings(self) -> UNetSettings:
        return UNetSettings(motion=OFFICIAL_MOTION[self.name])

    def plan(self, total_frames: int, settings: UNetSettings | None = None) -> ClipPlan:
        return ClipPlan(total_frames, CLIP_FRAMES)

    def model_identity(self) -> dict:
        # The UNet runs eager: the compile option (Hallo3's transformer blocks) changes none of its frames.
        return {"backbone": self.name, "weights": self.weights, "frame_size": self.frame_size[0],
                **self.options.identity(), "compile": False}

    # --- per video ----------------------------------------------------------------------------------------------------
    def prepare_identity(self, image: Any, allow_no_face: bool = False, non_square: str = "crop") -> UNetIdentity:
        image_rgb = load_image(image)
        landmarker = getattr(self.files, "face_landmarker", None)
        with self.models.use("face") as analyzer:
            reference = prepare_unet_reference(image_rgb, analyzer, frame_size=self.frame_size[0],
                                               non_square=non_square, allow_no_face=allow_no_face,
                                               mediapipe_task=landmarker)
        return UNetIdentity(reference, list(reference.notes))

    def prepare_speech(self, audio: Any, separate_vocals: bool = True, long_audio_pieces: bool = False) -> UNetSpeech:
        original = decode_audio(audio)
        with contextlib.ExitStack() as phase:
            separator = phase.enter_context(self.models.use("separator")) if separate_vocals else None
            wav2vec = phase.enter_context(self.models.use("wav2vec"))
            prepared = prepare_unet_speech(original, wav2vec, separator, long_audio_pieces=long_audio_pieces)
        return UNetSpeech(prepared.features, original, list(prepared.notes))

    def prepare_video(self, identity: UNetIdentity, speech: UNetSpeech, prompt: str,
                      settings: UNetSettings) -> UNetVideo:
        protected = identity.reference.masks.face_region[0].bool().any(0)
        return UNetVideo(identity, speech, protected)

    def latent_previewer(self, identity: UNetIdentity) -> LatentPreviewer:
        """Latent -> RGB previews fitted on this portrait; one small VAE encode."""
        with self.models.use("vae") as vae:
            latent = encode_frames(vae, identity.pixels)  # (1, 4, h, w)
        return LatentPreviewer(latent[0], identity.pixels[0])

    # --- one clip ---------------------------------------------------------------------------------------------------
    def render_clip(self, video: UNetVideo, index: int, previous: Continuation | None, settings: UNetSettings,
                    on_step: StepCallback) -> ClipResult:
        height, width = self.frame_size
        generator = self._generator(settings, index, previous)
        reference = video.identity.pixels[0].to(self.device, torch.float32)
        previous_frames = None
        if previous is not None:
            previous_frames = previous.motion_frames(MOTION_FRAMES, self.frame_size, self.device)
            previous_frames = previous_frames.transpose(0, 1)  # (3, m, H, W) in [0, 1]
        rows = motion_frame_pixels(reference, previous_frames, MOTION_FRAMES)
        motion = augment_motion_frames(rows[1:], settings.motion, generator, video.protected)
        rows = torch.cat([rows[:1], motion])
        latent_shape = (1, LATENT_CHANNELS, CLIP_FRAMES, height // 8, width // 8)
        noise = torch.randn(latent_shape, generator=generator, dtype=torch.float32)

        masks = video.identity.reference.masks
        audio = unet_clip_audio(video.speech.features, index)[None]  # (1, 16, 5, layers, dim)
        with self.models.use("vae") as vae:
            latents = encode_frames(vae, rows)
        inputs = ClipInputs(latents, video.identity.reference.face_embedding, masks.face_region, masks.full,
                            masks.face, masks.lip, audio_windows=audio, motion_scale=settings.motion_scale)
        with self.models.use("projections") as projections:
            tokens = project_clip(projections.image_proj, projections.audio_proj, projections.face_locator, inputs,
                                  self.dtype, self.device)
        with torch.no_grad(), self.models.use("reference_net") as reference_net:
            bank = reference_bank(reference_net, latents, tokens.image_tokens)
        cfg = settings.cfg_scale != 1.0
        with torch.no_grad(), self.models.use("denoiser") as denoiser:
            conditioning, _ = clip_conditioning(denoiser, inputs, tokens, bank, cfg)
            del bank
            velocity = guided_velocity(denoiser, conditioning, cfg, settings.cfg_scale)
            final = sample_ddim(velocity, noise.to(self.device, self.dtype), ddim_schedule(settings.steps),
                                lambda info: on_step(info["step"] + 1, info["steps"],
                                                     info["denoised"].transpose(1, 2)))
        with torch.no_grad(), self.models.use("vae") as vae:
            pixels = decode_latents(vae, final)[0].transpose(0, 1)  # (16, 3, H, W) in [0, 1]
        kept = self.plan(video.speech.total_frames, settings).clip_output_frames(index)
        tensors = {"generator": generator.get_state()} if settings.seed_policy == "official" else {}
        continuation = Continuation(pixels[-MOTION_FRAMES:].float().cpu(), kept.stop, tensors)
        return ClipResult(index, pixels[:len(kept)].float().cpu(), continuation)

    def _generator(self, settings: UNetSettings, index: int, previous: Continuation | None) -> torch.Generator:
        if settings.seed_policy == "per-clip":
            return seeded_generator(derived_seed(self.name, settings.seed, f"clip:{index}"))
        generator = seeded_generator(settings.seed)
        state = previous.tensors.get("generator") if previous is not None else None
        if state is not None:
            generator.set_state(state)
        elif index > 0:  # frames from elsewhere: replay the draws of the clips before this one
            for _ in range(index):
                augment_motion_frames(torch.zeros(MOTION_FRAMES, 3, *self.frame_size), settings.motion, generator)
                torch.randn((1, LATENT_CHANNELS, CLIP_FRAMES, self.frame_size[0] // 8, self.frame_size[1] // 8),
                            generator=generator)
        return generator

