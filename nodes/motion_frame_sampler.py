"""MotionFrameSampler: how the next DiTDenoise continues a previous segment (or starts from the portrait)."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..hallo_core.errors import InputError
from ..hallo_core.render.motion import MotionOptions
from . import continuations
from .hallo_types import CATEGORY, HalloMotion, HalloMotionType


class HalloMotionFrameSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HalloMotionFrameSampler",
            display_name="MotionFrameSampler",
            category=CATEGORY,
            description="Takes the last frames of a previous segment (from DiTDenoise) as the motion frames of the "
                        "next one. Without frames the next segment starts from the portrait. The defaults are the "
                        "official ones; the Hallo2 options change the result.",
            inputs=[
                io.Image.Input("previous_frames", optional=True,
                               tooltip="frames of the previous segment (DiTDenoise 'frames')"),
                io.Int.Input("motion_frames", default=2, min=1, max=8, tooltip="official: 2"),
                io.Float.Input("pixel_dropout", default=0.1, min=0.0, max=0.9, step=0.01,
                               tooltip="share of motion-frame pixels dropped (official: 0.1)"),
                io.Int.Input("drop_patch", default=1, min=1, max=64,
                             tooltip="Hallo2 patch-drop: drop square patches of this size (1: single pixels)"),
                io.Float.Input("noise_std", default=0.0, min=0.0, max=0.5, step=0.005,
                               tooltip="Hallo2 Gaussian noise on the motion frames (0: off)"),
                io.Boolean.Input("protect_face", default=False,
                                 tooltip="never drop pixels inside the portrait's face box"),
            ],
            outputs=[HalloMotionType.Output(display_name="motion")],
        )

    @classmethod
    def execute(cls, motion_frames, pixel_dropout, drop_patch, noise_std, protect_face,
                previous_frames=None) -> io.NodeOutput:
        try:
            options = MotionOptions(frames=motion_frames, pixel_dropout=pixel_dropout, drop_patch=drop_patch,
                                    noise_std=noise_std, protect_face=protect_face)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        if previous_frames is None:
            return io.NodeOutput(HalloMotion(options), ui=ui.PreviewText("starts from the portrait"))
        if previous_frames.shape[0] < motion_frames:
            raise InputError(f"{motion_frames} motion frames needed, the previous segment has "
                             f"{previous_frames.shape[0]}; connect a longer segment or lower motion_frames")
        found = continuations.lookup(previous_frames[-1])
        if found is not None:
            frames, end_frame = found
            motion = HalloMotion(options, frames[-motion_frames:], exact=True, end_frame=end_frame)
            note = f"continues exactly from frame {end_frame}"
        else:
            frames = previous_frames[-motion_frames:].permute(0, 3, 1, 2).float()
            motion = HalloMotion(options, frames, exact=False)
            note = "continues from the given frames (not a DiTDenoise output: approximate continuation)"
        return io.NodeOutput(motion, ui=ui.PreviewText(note))
