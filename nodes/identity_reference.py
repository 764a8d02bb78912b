"""IdentityReference: the portrait (first image of an IMAGE batch) and the prompt, prepared once per video."""

from __future__ import annotations

from comfy_api.latest import io, ui

from .hallo_types import CATEGORY, HalloIdentity, HalloIdentityType, HalloModelType


class HalloIdentityReference(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HalloIdentityReference",
            display_name="Hallo Identity Reference",
            category=CATEGORY,
            description="Finds the face (largest if several), takes its raw ArcFace embedding, builds the face-masked "
                        "reference and resizes both references the official way (square: pad to 3:2; otherwise "
                        "cover-crop).",
            inputs=[
                HalloModelType.Input("model"),
                io.Image.Input("image", tooltip="the portrait; only the first image of a batch is used"),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="what the scene looks like, e.g. 'A woman talking on a beach at sunset'"),
                io.Boolean.Input("allow_no_face", default=False,
                                 tooltip="render even when no face is found (zero identity, as the official code "
                                         "silently does); off refuses such an image"),
            ],
            outputs=[HalloIdentityType.Output(display_name="identity")],
        )

    @classmethod
    def execute(cls, model, image, prompt, allow_no_face) -> io.NodeOutput:
        first = image[0] if image.dim() == 4 else image
        conditioning = model.backbone.prepare_identity(first, allow_no_face=allow_no_face)
        identity = HalloIdentity(conditioning, prompt, tuple(first.shape[:2]))
        notes = "; ".join(conditioning.notes) or "one face found"
        return io.NodeOutput(identity, ui=ui.PreviewText(notes))
