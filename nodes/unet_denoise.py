"""UNetDenoise: renders a stretch of the speech with Hallo or Hallo2, with the pose / expression / lip weights."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..hallo_core.errors import InputError
from .dit_denoise import motion_settings, segment_inputs, segment_outputs
from .hallo_types import CATEGORY
from .segment_node import render_segment


def weight_input(name: str, what: str) -> io.Float.Input:
    return io.Float.Input(name, default=1.0, min=0.0, max=10.0, step=0.05,
                          tooltip=f"how much the speech drives {what} (official 1.0; 0 turns it off)")


class HalloUNetDenoise(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HalloUNetDenoise",
            display_name="Hallo/Hallo2 UNet Denoise",
            category=CATEGORY,
            description="Renders the speech from start_seconds for duration_seconds (0: to the end) with Hallo or "
                        "Hallo2 at 25 fps, in clips of 16 frames (0.64 s), each continuing the previous one. The "
                        "three weights scale the audio's hold on the head pose, the expression and the lips (the "
                        "regions IdentityReference shows). Chained segments give the same frames as one render.",
            inputs=[
                *segment_inputs("Hallo or Hallo2", "prepared portrait", 40, 16 / 25),
                weight_input("pose_weight", "the head pose (the background region)"),
                weight_input("expression_weight", "the facial expression (the face region)"),
                weight_input("lip_weight", "the lips"),
            ],
            outputs=segment_outputs(),
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
        )

    @classmethod
    def execute(cls, model, speech, identity, start_seconds, duration_seconds, steps, cfg, seed, pose_weight,
                expression_weight, lip_weight, motion=None) -> io.NodeOutput:
        if model.backbone.family != "unet":
            raise InputError(f"UNetDenoise renders Hallo and Hallo2; this model is {model.backbone.name}: use "
                             "DiTDenoise")
        settings = motion_settings(model.backbone, motion, steps=steps, cfg_scale=cfg, seed=seed,
                                   pose_weight=pose_weight, expression_weight=expression_weight,
                                   lip_weight=lip_weight)
        return render_segment(cls, model, speech, identity, motion, start_seconds, duration_seconds, settings)
