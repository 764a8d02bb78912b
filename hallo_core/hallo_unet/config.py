"""Configuration of the Hallo / Hallo2 networks, inferred from the weights' shapes.

The official `net.pth` holds five networks under fixed prefixes (`reference_unet.`, `denoising_unet.`,
`face_locator.`, `imageproj.`, `audioproj.`). Every width, depth and token count is read from a tensor shape, so the
full SD1.5-size model, the tiny golden model and the tiny random models take the same code path. What leaves no trace
in the shapes is an official constant: 8 attention heads everywhere (SD1.5's `attention_head_dim=8` is, under its
legacy name, the head count), 8 motion-module heads, 32 GroupNorm groups, and the SD1.5 block layout (cross-attention
in down blocks 0-2 and up blocks 1-3) is read from which `attentions.*` tensors exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from ..errors import ModelFileError
from ..loading.stored_config import StoredConfig

PREFIXES = ("reference_unet.", "denoising_unet.", "face_locator.", "imageproj.", "audioproj.")

# GroupNorm eps: ResNets and conv_norm_out use the SD config's norm_eps, the transformer and motion wrappers 1e-6.
RESNET_EPS = 1e-5
TRANSFORMER_GROUPNORM_EPS = 1e-6
LAYER_NORM_EPS = 1e-5


@dataclass
class HalloUNetConfig(StoredConfig):
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    down_attention: tuple[bool, ...] = (True, True, True, False)  # CrossAttnDownBlock vs DownBlock
    up_attention: tuple[bool, ...] = (False, True, True, True)
    in_channels: int = 4
    out_channels: int = 4
    time_embed_dim: int = 1280
    cross_attention_dim: int = 768  # face (image-projection) token width
    audio_token_dim: int = 768  # audio-projection token width (audio_attention_dim)
    attention_heads: int = 8
    norm_num_groups: int = 32
    motion_heads: int = 8
    motion_max_frames: int = 32  # rows of the motion modules' position table
    face_locator_in_channels: int = 3
    face_locator_channels: tuple[int, ...] = (16, 32, 64, 128)
    face_embed_dim: int = 512
    face_tokens: int = 4
    audio_input_dim: int = 5 * 12 * 768  # window x wav2vec layers x wav2vec width
    audio_intermediate_dim: int = 512
    audio_context_tokens: int = 32

    def __post_init__(self):
        self.block_out_channels = tuple(self.block_out_channels)
        self.down_attention = tuple(self.down_attention)
        self.up_attention = tuple(self.up_attention)
        self.face_locator_channels = tuple(self.face_locator_channels)

    @property
    def levels(self) -> int:
        return len(self.block_out_channels)

    def down_channels(self, index: int) -> tuple[int, int]:
        """(input, output) channels of down block `index`."""
        channels = self.block_out_channels
        return (channels[index - 1] if index > 0 else channels[0]), channels[index]

    def up_channels(self, index: int) -> tuple[int, int, int]:
        """(input, previous output, output) channels of up block `index` (input = the skip width of its last layer)."""
        reverse = self.block_out_channels[::-1]
        return reverse[min(index + 1, self.levels - 1)], reverse[max(index - 1, 0)], reverse[index]

    def audio_width(self, block: str, index: int, layer: int) -> int:
        """Inner width of an audio module: heads x (channels // heads) of the block's INPUT channels (official
        construction: down blocks use the block input for layer 0 and the block output after it, up blocks the
        block input for every layer). GroupNorm and proj_in still see the block width."""
        if block == "down":
            source = self.down_channels(index)[0] if layer == 0 else self.block_out_channels[index]
        elif block == "up":
            source = self.up_channels(index)[0]
        else:
            source = self.block_out_channels[-1]
        return self.attention_heads * (source // self.attention_heads)

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, tuple[int, ...]]) -> "HalloUNetConfig":
        """The configuration of an official-named state dict (all five prefixes) from its tensor shapes."""

        def shape(key: str) -> tuple[int, ...]:
            if key not in shapes:
                raise ModelFileError(f"not a Hallo UNet checkpoint: tensor '{key}' is missing (expected the official "
                                     "net.pth of hallo or hallo2, or a file written by convert)")
            return tuple(shapes[key])

        def indices(pattern: str) -> list[int]:
            regex = re.compile(pattern)
            return sorted({int(m.group(1)) for k in shapes for m in [regex.match(k)] if m})

        den = "denoising_unet."
        levels = indices(rf"{re.escape(den)}down_blocks\.(\d+)\.")
        if not levels:
            shape(den + "down_blocks.0.resnets.0.conv1.weight")
        block_out = tuple(shape(f"{den}down_blocks.{i}.resnets.0.conv1.weight")[0] for i in levels)
        layers = len(indices(rf"{re.escape(den)}down_blocks\.0\.resnets\.(\d+)\."))
        face_blocks = indices(r"face_locator\.blocks\.(\d+)\.weight")
        token_dim = shape("imageproj.norm.weight")[0]
        audio_dim = shape("audioproj.norm.weight")[0]
        pe = [k for k in shapes if k.startswith(den) and k.endswith(".pos_encoder.pe")]
        if not pe:
            raise ModelFileError("not a Hallo UNet checkpoint: no motion-module position tables (pos_encoder.pe)")
        audio_key = next((k for k in shapes if k.startswith(den) and k.endswith("attn2_0.to_k.weight")), None)
        if audio_key is None:
            raise ModelFileError("not a Hallo UNet checkpoint: no audio modules (attn2_0) in denoising_unet")
        return cls(
            block_out_channels=block_out,
            layers_per_block=layers,
            down_attention=tuple(_has_prefix(shapes, f"{den}down_blocks.{i}.attentions.") for i in levels),
            up_attention=tuple(_has_prefix(shapes, f"{den}up_blocks.{i}.attentions.") for i in levels),
            in_channels=shape(den + "conv_in.weight")[1],
            out_channels=shape(den + "conv_out.weight")[0],
            time_embed_dim=shape(den + "time_embedding.linear_1.weight")[0],
            cross_attention_dim=token_dim,
            audio_token_dim=shape(audio_key)[1],
            motion_max_frames=shape(pe[0])[1],
            face_locator_in_channels=shape("face_locator.conv_in.weight")[1],
            face_locator_channels=(shape("face_locator.conv_in.weight")[0],)
            + tuple(shape(f"face_locator.blocks.{i}.weight")[0] for i in face_blocks[1::2]),
            face_embed_dim=shape("imageproj.proj.weight")[1],
            face_tokens=shape("imageproj.proj.weight")[0] // token_dim,
            audio_input_dim=shape("audioproj.proj1.weight")[1],
            audio_intermediate_dim=shape("audioproj.proj1.weight")[0],
            audio_context_tokens=shape("audioproj.proj3.weight")[0] // audio_dim,
        )


def _has_prefix(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> bool:
    return any(name.startswith(prefix) for name in shapes)
