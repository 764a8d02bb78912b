"""MotionFrameSampler: how the next segment continues a previous one (or starts from the portrait), and its
motion-frame options."""

from __future__ import annotations

from comfy_api.v0_0_2 import io, ui

from ..hallo_core.errors import InputError
from ..hallo_core.render.backbone import Continuation
from .hallo_types import CATEGORY, HalloMotion, HalloMotionType
from .inputs import choice_input

OFFICIAL = "official"


class HalloMotionFrameSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HalloMotionFrameSampler",
            display_name="Hallo Motion Frame Sampler",
            category=CATEGORY,
            description="Continues a previous segment (its 'continuation': exact; or any frames: approximate) with "
                        "these motion-frame options. Without either the next segment starts from the portrait. "
                        "'official' values are the model's own (Hallo3: drop 10 %; Hallo2: 25 % outside the face; "
                        "Hallo: none); the others change the result.",
            inputs=[
                HalloMotionType.Input("continuation", optional=True,
                                      tooltip="a denoise node's 'continuation': continues exactly"),
                io.Image.Input("previous_frames", optional=True,
                               tooltip="frames of a video made elsewhere: continues approximately"),
                io.Int.Input("motion_frames", default=2, min=1, max=8, tooltip="frames each clip continues from "
                                                                               "(official: 2)"),
                io.Float.Input("pixel_dropout", default=-1.0, min=-1.0, max=0.9, step=0.01,
                               tooltip="share of motion-frame pixels dropped; -1: the model's official value"),
                io.Int.Input("drop_patch", default=1, min=1, max=64,
                             tooltip="Hallo2 patch-drop: drop square patches of this size (1: single pixels)"),
                io.Float.Input("noise_std", default=0.0, min=0.0, max=0.5, step=0.005,
                               tooltip="Hallo2 Gaussian noise on the motion frames (0: off)"),
                choice_input("protect_face", [OFFICIAL, "on", "off"], default=OFFICIAL,
                               tooltip="never drop pixels inside the portrait's face box (official: Hallo2 on)"),
            ],
            outputs=[HalloMotionType.Output(display_name="motion",
                                            tooltip="connect to the next denoise node's 'motion'")],
        )

    @classmethod
    def execute(cls, motion_frames, pixel_dropout, drop_patch, noise_std, protect_face, continuation=None,
                previous_frames=None) -> io.NodeOutput:
        if continuation is not None and previous_frames is not None:
            raise InputError("connect either a continuation (exact) or previous_frames (approximate), not both")
        overrides = {"frames": motion_frames, "drop_patch": drop_patch, "noise_std": noise_std}
        if pixel_dropout >= 0:
            overrides["pixel_dropout"] = pixel_dropout
        if protect_face != OFFICIAL:
            overrides["protect_face"] = protect_face == "on"
        if continuation is not None:
            if continuation.continuation is None:
                return io.NodeOutput(HalloMotion(overrides), ui=ui.PreviewText("starts from the portrait"))
            frames = continuation.continuation.frames
            if frames.shape[0] < motion_frames:
                raise InputError(f"{motion_frames} motion frames needed, the previous segment kept "
                                 f"{frames.shape[0]}; lower motion_frames")
            note = (f"continues exactly from {continuation.continuation.end_frame / 25:.2f} s"
                    if continuation.exact else "continues approximately")
            return io.NodeOutput(HalloMotion(overrides, continuation.continuation, continuation.exact),
                                 ui=ui.PreviewText(note))
        if previous_frames is None:
            return io.NodeOutput(HalloMotion(overrides), ui=ui.PreviewText("starts from the portrait"))
        if previous_frames.shape[0] < motion_frames:
            raise InputError(f"{motion_frames} motion frames needed, previous_frames has {previous_frames.shape[0]}; "
                             "connect more frames or lower motion_frames")
        frames = previous_frames[-motion_frames:].permute(0, 3, 1, 2).float()
        note = "continues from frames made elsewhere: approximate (use a denoise node's continuation to be exact)"
        return io.NodeOutput(HalloMotion(overrides, Continuation(frames, None), exact=False), ui=ui.PreviewText(note))
