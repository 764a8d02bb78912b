"""DiTDenoise: renders a stretch of the speech with Hallo3, clip after clip, with previews, progress and cancel."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..hallo_core.errors import InputError
from .hallo_types import CATEGORY, HalloAudioType, HalloIdentityType, HalloModelType, HalloMotionType
from .segment_node import render_segment


def segment_inputs(model: str, identity: str, steps: int, clip_seconds: float) -> list:
    """The inputs every denoise node has: model, speech, identity, motion, the segment, steps, guidance and seed."""
    return [
        HalloModelType.Input("model", tooltip=f"a {model} model from LoadHalloModel"),
        HalloAudioType.Input("speech", tooltip="AudioEncodeWav2Vec's speech features"),
        HalloIdentityType.Input("identity", tooltip=f"IdentityReference's {identity}"),
        HalloMotionType.Input("motion", optional=True,
                              tooltip="the previous segment's continuation (or MotionFrameSampler); without it the "
                                      "segment starts from the portrait"),
        io.Float.Input("start_seconds", default=0.0, min=0.0, max=36000.0, step=0.04,
                       tooltip=f"where the segment starts; snapped down to the {clip_seconds:.2f} s clip grid"),
        io.Float.Input("duration_seconds", default=0.0, min=0.0, max=36000.0, step=0.04,
                       tooltip="length of the segment; 0 renders to the end of the speech"),
        io.Int.Input("steps", default=steps, min=1, max=1000, tooltip=f"denoising steps (official: {steps})"),
        io.Float.Input("cfg", default=3.5, min=0.0, max=20.0, step=0.1, tooltip="guidance scale (official: 3.5)"),
        io.Int.Input("seed", default=42, min=0, max=2**63 - 1, control_after_generate=True,
                     tooltip="the same seed gives the same video; segments of one video keep one seed"),
    ]


def segment_outputs() -> list:
    return [
        io.Image.Output(display_name="frames", tooltip="the segment's frames (short segments; long ones: use video)"),
        io.Audio.Output(display_name="audio", tooltip="the speech under the segment's frames"),
        io.Video.Output(display_name="video", tooltip="the segment as an MP4 with its sound, backed by a file"),
        HalloMotionType.Output(display_name="continuation",
                               tooltip="where this segment ends: connect it to the next segment's 'motion' (directly "
                                       "or through MotionFrameSampler) to continue exactly"),
    ]


def motion_settings(backbone, motion, **values):
    """The backbone's official settings with the node's values and the motion overrides applied."""
    overrides = dict(motion.overrides) if motion is not None else {}
    return backbone.default_settings().with_overrides(backbone.name, motion=overrides, **values)


class HalloDiTDenoise(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HalloDiTDenoise",
            display_name="Hallo3 DiT Denoise",
            category=CATEGORY,
            description="Renders the speech from start_seconds for duration_seconds (0: to the end) with Hallo3 at 25 "
                        "fps, in clips of 47 new frames (1.88 s), each continuing the previous one. Chain segments "
                        "through 'continuation'; they give the same frames as one render of the whole speech.",
            inputs=[
                *segment_inputs("Hallo3", "prepared portrait and prompt", 50, 47 / 25),
            ],
            outputs=segment_outputs(),
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
        )

    @classmethod
    def execute(cls, model, speech, identity, start_seconds, duration_seconds, steps, cfg, seed,
                motion=None) -> io.NodeOutput:
        if model.backbone.name != "hallo3":
            raise InputError(f"DiTDenoise renders Hallo3; this model is {model.backbone.name}: use UNetDenoise")
        settings = motion_settings(model.backbone, motion, steps=steps, cfg_scale=cfg, seed=seed)
        return render_segment(cls, model, speech, identity, motion, start_seconds, duration_seconds, settings)
