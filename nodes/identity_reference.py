"""IdentityReference: the portrait (first image of an IMAGE batch) and the prompt, prepared once per video; for
Hallo and Hallo2 also the pose / expression / lip masks, as core MASKs and drawn over the portrait."""

from __future__ import annotations

import torch
from comfy_api.v0_0_2 import io, ui

from ..hallo_core.face.mask_preview import region_masks, region_preview
from .hallo_types import CATEGORY, HalloIdentity, HalloIdentityType, HalloModelType
from .segment_node import send_text


class HalloIdentityReference(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HalloIdentityReference",
            display_name="Hallo Identity Reference",
            category=CATEGORY,
            description="Finds the face (largest if several), takes its raw ArcFace embedding and prepares the "
                        "references as the model needs them (Hallo3: pad or cover-crop to 3:2; Hallo/Hallo2: a square "
                        "around the face, and the pose / expression / lip regions the UNetDenoise weights act on, "
                        "shown over the portrait).",
            inputs=[
                HalloModelType.Input("model"),
                io.Image.Input("image", tooltip="the portrait; only the first image of a batch is used"),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="Hallo3: what the scene looks like, e.g. 'A woman talking on a beach at "
                                        "sunset' (Hallo and Hallo2 take no prompt)"),
                io.Boolean.Input("allow_no_face", default=False,
                                 tooltip="render even when no face is found (zero identity, as the official code "
                                         "silently does); off refuses such an image"),
            ],
            outputs=[
                HalloIdentityType.Output(display_name="identity", tooltip="connect to the denoise node"),
                io.Mask.Output(display_name="pose_mask", tooltip="Hallo/Hallo2: where pose_weight acts (background)"),
                io.Mask.Output(display_name="expression_mask", tooltip="Hallo/Hallo2: where expression_weight acts"),
                io.Mask.Output(display_name="lip_mask", tooltip="Hallo/Hallo2: where lip_weight acts"),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, image, prompt, allow_no_face) -> io.NodeOutput:
        first = image[0] if image.dim() == 4 else image
        backbone = model.backbone
        conditioning = backbone.prepare_identity(first, allow_no_face=allow_no_face)
        identity = HalloIdentity(conditioning, prompt, tuple(first.shape[:2]))
        notes = list(conditioning.notes)
        if prompt.strip() and not backbone.takes_prompt:
            notes.append(f"{backbone.name} takes no prompt; it is not used")
        height, width = backbone.frame_size
        if backbone.family == "unet":
            masks = region_masks(conditioning.reference.masks)
            outputs = [masks[name][None] for name in ("pose", "expression", "lip")]
            preview = region_preview(conditioning.pixels, conditioning.reference.masks)[None]
            notes.append("blue: pose, green: expression, red: lips")
        else:
            outputs = [torch.zeros(1, height, width) for _ in range(3)]
            preview = ((conditioning.references.full[0].float() + 1) / 2).clamp(0, 1).permute(1, 2, 0)[None]
        text = "; ".join(notes) or "one face found"
        send_text(text, cls.hidden.unique_id)
        return io.NodeOutput(identity, *outputs, ui=ui.PreviewImage(preview, cls=cls))
