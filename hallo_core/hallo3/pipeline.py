"""The Hallo3 render: a portrait, speech and a prompt in; 25 fps frames out, clip after clip (hallo3_spec.md 4).

Per video (exact rewrites of the official per-clip work):
  face embedding and references (InsightFace, face mask, resize); wav2vec2 features; T5 once per prompt;
  the reference latent and the reference network once (its input never changes), its tokens' keys and values once.
Per clip c (official, section 4.4):
  motion frames (reference copies for clip 0, else the previous clip's last decoded frames) -> dropout mask ->
  VAE encode of [reference, motion] -> condition latents; audio windows of the clip -> audio tokens; initial noise;
  50 steps of DPM-Solver++(2M) with CFG 3.5 -> latents -> chunked VAE decode -> 47 new frames.
Every random draw of a clip comes from that clip's own generator (clip_plan.py), so clips can be rendered in
segments or resumed and still equal a single pass.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Protocol

import numpy as np
import torch

from ..audio import Audio, AudioFeatures, clip_audio, decode_audio, prepare_speech
from ..errors import InputError
from ..face import ReferenceImages, load_image, prepare_reference
from ..render.clip_plan import ClipPlan, clip_generator, reference_generator
from ..render.latent_preview import LatentPreviewer
from ..render.motion import MotionOptions, augment_motion_frames, encode_condition, pad_condition
from ..render.progress import ProgressEvent, Reporter
from ..render.store import RenderStore
from .config import Hallo3Config
from .denoiser import OFFICIAL_CFG_SCALE, GuidedDenoiser, SeparateGuidance, build_clip_conditioning
from .sampler import generator_noise, sample_vp_dpmpp_2m, sat_schedule
from .step_cache import StepCache

OFFICIAL_STEPS = 50


class ModelProvider(Protocol):
    """Gives each model on the compute device for one phase (`LocalModels`, or ComfyUI's model management)."""

    def use(self, name: str): ...

    def release(self, name: str) -> None: ...


@dataclass(frozen=True)
class RenderSettings:
    steps: int = OFFICIAL_STEPS
    cfg_scale: float = OFFICIAL_CFG_SCALE
    seed: int = 42
    motion: MotionOptions = field(default_factory=MotionOptions)
    step_cache: float = 0.0  # first-block cache threshold (step_cache.py); 0 = off, the official computation
    guidance: SeparateGuidance | None = None  # the paper's separate text/audio(/reference) scales; None = official

    def __post_init__(self):
        if not 1 <= self.steps <= 1000:
            raise InputError(f"steps must be between 1 and 1000, got {self.steps}")
        if not 0.0 <= self.step_cache < 1.0:
            raise InputError(f"step cache threshold must be in [0, 1), got {self.step_cache}")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class IdentityConditioning:
    """The portrait, prepared once: raw ArcFace embedding and the full / face-masked references at the frame size."""

    face_embedding: torch.Tensor  # (1, 512) float32
    references: ReferenceImages  # (1, 3, H, W) in [-1, 1]
    face_box: tuple[int, int, int, int] | None  # face box in frame pixels (x0, y0, x1, y1), for `protect_face`
    notes: list[str] = field(default_factory=list)


@dataclass
class SpeechConditioning:
    """The speech, prepared once: wav2vec2 features of (possibly separated) vocals, and the original audio."""

    features: AudioFeatures
    audio: Audio  # the original, unseparated audio: what the video carries
    notes: list[str] = field(default_factory=list)

    @property
    def total_frames(self) -> int:
        return self.features.audio_length


@dataclass
class ClipResult:
    index: int
    frames: torch.Tensor  # (n, 3, H, W) float32 in [0, 1]: the clip's new frames, trimmed to the video
    motion_frames: torch.Tensor  # (m, 3, H, W) float32 in [0, 1]: its last decoded frames, to continue from
    resumed: bool = False  # read back from the render directory instead of rendered
    last_latent: torch.Tensor | None = None  # (1, 16, h, w) its last latent frame (for `carry_latents`)


def frames_to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(n, 3, H, W) in [0, 1] -> (n, H, W, 3) uint8 by truncation, as the official writer does."""
    return (frames.permute(0, 2, 3, 1) * 255).to(torch.uint8).cpu().numpy()


class Hallo3Pipeline:
    def __init__(self, models: ModelProvider, config: Hallo3Config, dtype: torch.dtype = torch.bfloat16,
                 device: str | torch.device = "cpu"):
        self.models = models
        self.config = config
        self.dtype = dtype
        self.device = torch.device(device)
        self._text_cache: dict[str, torch.Tensor] = {}
        self._reference_cache: dict[tuple, list[torch.Tensor]] = {}

    # --- geometry ------------------------------------------------------------------------------------------------
    @property
    def frame_size(self) -> tuple[int, int]:
        return self.config.pixel_size

    @property
    def frames_per_clip(self) -> int:
        return 1 + 4 * (self.config.latent_frames - 1)

    def plan(self, total_frames: int, motion: MotionOptions = MotionOptions()) -> ClipPlan:
        return ClipPlan(total_frames, self.frames_per_clip, motion.frames)

    # --- per-video conditioning ------------------------------------------------------------------------------------
    def identity(self, image: Any, allow_no_face: bool = False, mask_method: str = "auto",
                 mediapipe_task: str | None = None) -> IdentityConditioning:
        image_rgb = load_image(image)
        with self.models.use("face") as analyzer:
            reference = prepare_reference(image_rgb, analyzer, size=self.frame_size, allow_no_face=allow_no_face,
                                          mask_method=mask_method, mediapipe_task=mediapipe_task)
        found = reference.identity
        face_box = (_box_in_frame(reference.mask.box, image_rgb.shape[:2], self.frame_size)
                    if found.face is not None else None)
        return IdentityConditioning(found.embedding.float(), reference.images, face_box, reference.notes)

    def speech(self, audio: Any, separate_vocals: bool = True) -> SpeechConditioning:
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
        masked = identity.references.masked
        key = (hashlib.sha256(masked.detach().cpu().float().numpy().tobytes()).hexdigest(), seed)
        if key not in self._reference_cache:
            with self.models.use("vae") as vae:  # (1, 3, 1, H, W) -> (1, 1, 16, h, w)
                latent = vae.encode(masked.unsqueeze(2), reference_generator(seed)).permute(0, 2, 1, 3, 4)
            with torch.no_grad(), self.models.use("reference_net") as reference_net:
                tokens = reference_net(latent.to(self.device))
            self.models.release("reference_net")  # never needed again for this video
            self._reference_cache = {key: tokens}
        return self._reference_cache[key]

    def latent_previewer(self, identity: IdentityConditioning) -> LatentPreviewer:
        """Latent -> RGB previews fitted on this portrait (latent_preview.py); one small VAE encode."""
        with self.models.use("vae") as vae:
            latent = vae.encode_mean(identity.references.full.unsqueeze(2))  # (1, 16, 1, h, w)
        return LatentPreviewer(latent[0, :, 0], identity.references.full[0])

    # --- the clip loop ---------------------------------------------------------------------------------------------
    def render(
        self,
        identity: IdentityConditioning,
        speech: SpeechConditioning,
        prompt: str,
        settings: RenderSettings = RenderSettings(),
        clips: range | None = None,
        previous_frames: torch.Tensor | None = None,
        store: RenderStore | None = None,
        reporter: Reporter | None = None,
    ) -> Iterator[ClipResult]:
        """Render `clips` (default: all) and yield each finished clip in order.

        `previous_frames` (m, 3, H, W) in [0, 1] are the last frames of the clip before `clips.start` (from a previous
        segment); clip 0 starts from the reference image. With a `store`, finished clips are kept and skipped on a
        re-run.
        """
        reporter = reporter or Reporter()
        plan = self.plan(speech.total_frames, settings.motion)
        clips = clips if clips is not None else range(plan.num_clips)
        if clips.start > 0 and previous_frames is None and not (store and store.has_clip(clips.start - 1)):
            raise InputError(f"clip {clips.start} continues clip {clips.start - 1}: pass the previous segment's "
                             "frames (MotionFrameSampler) or render from the start")
        first = store.resume_point(clips.start, clips.stop) if store else clips.start
        for index in range(clips.start, first):  # finished in an earlier, interrupted run
            frames = torch.from_numpy(store.clip_frames(index)).permute(0, 3, 1, 2).float() / 255
            last = store.motion_frames(index) if index == first - 1 else frames[-settings.motion.frames:]
            yield ClipResult(index, frames, last, resumed=True)
        previous_latent = None
        if first > clips.start:
            previous_frames = store.motion_frames(first - 1)
            previous_latent = store.motion_latent(first - 1)
        if first >= clips.stop:
            return

        text = self.text_states(prompt)
        tokens = self.reference_tokens(identity, settings.seed)
        schedule = sat_schedule(settings.steps)
        with self.models.use("transformer") as transformer:
            reference_kv = transformer.reference_key_values(tokens)
            face = identity.face_embedding.to(self.device)
        for index in range(first, clips.stop):
            reporter(ProgressEvent("prepare", clip=index - clips.start, clips=len(clips)))
            result = self._render_clip(index, plan, identity, speech, text, face, reference_kv, settings,
                                       schedule, previous_frames, previous_latent, reporter, len(clips), clips.start)
            if store is not None:
                store.save_clip(index, frames_to_uint8(result.frames), result.motion_frames, result.last_latent)
            previous_frames, previous_latent = result.motion_frames, result.last_latent
            reporter(ProgressEvent("clip_done", clip=index - clips.start, clips=len(clips)))
            yield result

    def _render_clip(self, index, plan, identity, speech, text, face, reference_kv, settings, schedule,
                     previous_frames, previous_latent, reporter, clip_count, first_clip) -> ClipResult:
        motion = settings.motion
        generator = clip_generator(settings.seed, index)
        full = identity.references.full.to(self.device)
        if previous_frames is None:
            source = full.expand(motion.frames, -1, -1, -1)  # clip 0: copies of the reference image
        else:
            if previous_frames.shape[0] < motion.frames:
                raise InputError(f"{motion.frames} motion frames needed, the previous segment gave "
                                 f"{previous_frames.shape[0]}")
            source = previous_frames[-motion.frames:].to(self.device, torch.float32) * 2 - 1
        source = augment_motion_frames(source.to(self.dtype), motion, generator, identity.face_box)

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
        audio = clip_audio(speech.features, index, frames_per_clip=self.frames_per_clip,
                           motion_frames=motion.frames).unsqueeze(0)

        with self.models.use("transformer") as transformer:
            conditioning = build_clip_conditioning(transformer, condition.to(self.device), text,
                                                   audio.to(self.device), face, reference_kv)
            cache = StepCache(settings.step_cache) if settings.step_cache > 0 else None
            denoiser = GuidedDenoiser(transformer, conditioning, schedule, settings.cfg_scale, cache,
                                      settings.guidance)

            def guided(x, step):
                reporter.check_cancel()
                return denoiser(x, step)

            def on_step(info):
                reporter(ProgressEvent("denoise", clip=index - first_clip, clips=clip_count, step=info["step"] + 1,
                                       steps=info["steps"], latents=info["denoised"]))

            latents = sample_vp_dpmpp_2m(guided, noise, schedule, generator_noise(generator), on_step)

        reporter(ProgressEvent("decode", clip=index - first_clip, clips=clip_count))
        with self.models.use("vae") as vae:
            pixels = vae.decode(latents.permute(0, 2, 1, 3, 4))[0].transpose(0, 1)  # (49, 3, H, W) in [0, 1]
        kept = plan.clip_output_frames(index)
        new = pixels[motion.frames: motion.frames + len(kept)]
        return ClipResult(index, new.float().cpu(), pixels[-motion.frames:].float().cpu(),
                          last_latent=latents[:, -1].float().cpu())


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
