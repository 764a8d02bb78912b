"""Configuration of the Hallo3 transformers, inferred from the weights' shapes.

The same code path serves the 5B model (42 layers, width 3072), the tiny golden model (2 layers, width 64) and the tiny
random models of `make-tiny-models`: every size comes from a tensor shape. Two numbers cannot be read from shapes, the
text length and the number of latent frames; the official code hard-codes them (226 and 13) and so do we, unless a
checkpoint written by `convert` or `make-tiny-models` stores its configuration in its safetensors metadata.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Mapping

from ..errors import ModelFileError
from ..loading.stored_config import StoredConfig

# Values the official code hard-codes (its 480x720, 49-frame configuration).
OFFICIAL_TEXT_LENGTH = 226
OFFICIAL_LATENT_FRAMES = 13
OFFICIAL_ASPECT_HW = (2, 3)  # 480x720 pixels, 60x90 latents, 30x45 tokens


@dataclass
class Hallo3Config(StoredConfig):
    num_layers: int = 42
    num_attention_heads: int = 48
    attention_head_dim: int = 64
    in_channels: int = 32  # 16 noisy latent channels + 16 condition ("concat") channels
    out_channels: int = 16
    patch_size: int = 2
    time_embed_dim: int = 512
    text_embed_dim: int = 4096
    text_length: int = OFFICIAL_TEXT_LENGTH
    latent_frames: int = OFFICIAL_LATENT_FRAMES
    latent_height: int = 60
    latent_width: int = 90
    mlp_dim: int = 12288
    norm_eps: float = 1e-5  # block and final-transformer LayerNorms
    qk_norm_eps: float = 1e-6
    final_norm_eps: float = 1e-6  # the final layer's norm_final
    rope_theta: float = 10000.0
    # Hallo3 additions; the reference network has neither.
    has_audio: bool = True
    has_face: bool = True
    audio_input_dim: int = 5 * 12 * 768  # window x wav2vec layers x wav2vec width
    audio_intermediate_dim: int = 512
    audio_context_tokens: int = 32
    audio_token_dim: int = 768
    face_embed_dim: int = 512
    face_tokens: int = 4
    face_token_dim: int = 1024
    extra: dict = field(default_factory=dict)

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def grid_height(self) -> int:
        return self.latent_height // self.patch_size

    @property
    def grid_width(self) -> int:
        return self.latent_width // self.patch_size

    @property
    def tokens_per_frame(self) -> int:
        return self.grid_height * self.grid_width

    @property
    def pixel_size(self) -> tuple[int, int]:
        """Frame size (height, width) in pixels for the VAE's 8x spatial compression."""
        return self.latent_height * 8, self.latent_width * 8

    def reference_config(self) -> "Hallo3Config":
        """The identity reference network: the same transformer without audio and face modules."""
        return dataclasses.replace(self, has_audio=False, has_face=False)

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, tuple[int, ...]], **overrides) -> "Hallo3Config":
        """Infer the configuration from our (diffusers-style) parameter names and shapes."""

        def shape(key):
            if key not in shapes:
                raise ModelFileError(f"not a Hallo3 transformer checkpoint: tensor '{key}' is missing")
            return tuple(shapes[key])

        hidden, in_channels, patch, _ = shape("patch_embed.proj.weight")
        head_dim = shape("transformer_blocks.0.attn1.norm_q.weight")[0]
        num_layers = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("transformer_blocks."))
        values = dict(
            num_layers=num_layers,
            num_attention_heads=hidden // head_dim,
            attention_head_dim=head_dim,
            in_channels=in_channels,
            out_channels=shape("proj_out.weight")[0] // (patch * patch),
            patch_size=patch,
            time_embed_dim=shape("time_embedding.linear_1.weight")[0],
            text_embed_dim=shape("patch_embed.text_proj.weight")[1],
            mlp_dim=shape("transformer_blocks.0.ff.net.0.proj.weight")[0],
            has_audio="audio_proj.proj1.weight" in shapes,
            has_face="face_proj.proj.weight" in shapes,
        )
        if values["has_audio"]:
            token_dim = shape("audio_proj.norm.weight")[0]
            values.update(
                audio_input_dim=shape("audio_proj.proj1.weight")[1],
                audio_intermediate_dim=shape("audio_proj.proj1.weight")[0],
                audio_token_dim=token_dim,
                audio_context_tokens=shape("audio_proj.proj3.weight")[0] // token_dim,
            )
        if values["has_face"]:
            token_dim = shape("face_proj.norm.weight")[0]
            values.update(
                face_embed_dim=shape("face_proj.proj.weight")[1],
                face_token_dim=token_dim,
                face_tokens=shape("face_proj.proj.weight")[0] // token_dim,
            )
        values.update(overrides)
        text_length = values.get("text_length", OFFICIAL_TEXT_LENGTH)
        frames = values.get("latent_frames", OFFICIAL_LATENT_FRAMES)
        if "latent_height" not in values or "latent_width" not in values:
            positions = shape("patch_embed.pos_embedding")[1]
            grid_h, grid_w = _grid_from_positions(positions, text_length, frames)
            values.setdefault("latent_height", grid_h * patch)
            values.setdefault("latent_width", grid_w * patch)
        return cls(**values)


def _grid_from_positions(positions: int, text_length: int, frames: int) -> tuple[int, int]:
    """Token grid (h, w) of a learned position table, assuming the official 2:3 frame aspect."""
    video = positions - text_length
    if video <= 0 or video % frames:
        raise ModelFileError(
            f"cannot infer the frame size from a position table of {positions} rows "
            f"(expected {text_length} text + {frames} frames x h x w); pass the model configuration explicitly"
        )
    per_frame = video // frames
    ah, aw = OFFICIAL_ASPECT_HW
    unit = math.isqrt(per_frame // (ah * aw)) if per_frame % (ah * aw) == 0 else 0
    if unit == 0 or unit * unit * ah * aw != per_frame:
        raise ModelFileError(
            f"cannot infer the frame size from {per_frame} tokens per frame (not a 2:3 grid); "
            "pass the model configuration explicitly"
        )
    return ah * unit, aw * unit
