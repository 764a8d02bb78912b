"""The levels of the SD1.5 UNet, shared by the ReferenceNet and the denoiser, under the official parameter names.

A level holds its layers' modules in parallel lists (`resnets.K`, `attentions.K`, and in the denoiser
`audio_modules.K`, `motion_modules.K`) plus an optional `downsamplers.0` / `upsamplers.0`; the two UNets' forwards
walk them layer by layer. ResNets, samplers are diffusers' 2-D modules: every 3-D operation of the official denoiser
except the motion modules is the 2-D one applied to each frame, so frames travel as batch rows.
"""

from __future__ import annotations

from diffusers.models.downsampling import Downsample2D
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn

from .audio_module import AudioModule
from .config import RESNET_EPS, HalloUNetConfig
from .motion import MotionModule
from .spatial import SpatialTransformer


class UNetLevel(nn.Module):
    """One down, mid or up level: lists of layer modules; `None` where the level has none of a kind."""

    def __init__(self, name: str, level: int):
        super().__init__()
        self.name = name  # official path: down_blocks.i, mid_block, up_blocks.i
        self.level = level  # the mask-pyramid level its audio modules use: down i -> i, mid -> 3, up i -> 3 - i
        self.resnets = nn.ModuleList()
        self.attentions = None
        self.audio_modules = None
        self.motion_modules = None
        self.downsamplers = None
        self.upsamplers = None


def _resnet(config: HalloUNetConfig, in_channels: int, out_channels: int) -> ResnetBlock2D:
    return ResnetBlock2D(in_channels=in_channels, out_channels=out_channels, temb_channels=config.time_embed_dim,
                         eps=RESNET_EPS, groups=config.norm_num_groups, non_linearity="silu")


def _add_layer_modules(block: UNetLevel, config: HalloUNetConfig, channels: int, audio_widths: list[int] | None,
                       temporal: bool, count: int) -> None:
    heads, groups = config.attention_heads, config.norm_num_groups
    if audio_widths is not None:
        block.attentions = nn.ModuleList(
            [SpatialTransformer(channels, heads, config.cross_attention_dim, groups) for _ in range(count)])
    if not temporal:
        return
    if audio_widths is not None:
        block.audio_modules = nn.ModuleList(
            [AudioModule(channels, width, heads, config.audio_token_dim, groups) for width in audio_widths])
    # Built at every level, as in the official model; the DownBlock/UpBlock ones (no attention) never run.
    block.motion_modules = nn.ModuleList(
        [MotionModule(channels, config.motion_heads, config.motion_max_frames, groups) for _ in range(count)])


def down_block(config: HalloUNetConfig, index: int, temporal: bool) -> UNetLevel:
    block = UNetLevel(f"down_blocks.{index}", level=index)
    in_channels, out_channels = config.down_channels(index)
    layers = config.layers_per_block
    for layer in range(layers):
        block.resnets.append(_resnet(config, in_channels if layer == 0 else out_channels, out_channels))
    widths = [config.audio_width("down", index, k) for k in range(layers)] if config.down_attention[index] else None
    _add_layer_modules(block, config, out_channels, widths, temporal, layers)
    if index < config.levels - 1:
        block.downsamplers = nn.ModuleList(
            [Downsample2D(out_channels, use_conv=True, out_channels=out_channels, padding=1, name="op")])
    return block


def mid_block(config: HalloUNetConfig, temporal: bool) -> UNetLevel:
    block = UNetLevel("mid_block", level=config.levels - 1)
    channels = config.block_out_channels[-1]
    block.resnets.extend([_resnet(config, channels, channels) for _ in range(2)])
    _add_layer_modules(block, config, channels, [config.audio_width("mid", 0, 0)], temporal, 1)
    return block


def up_block(config: HalloUNetConfig, index: int, temporal: bool) -> UNetLevel:
    block = UNetLevel(f"up_blocks.{index}", level=config.levels - 1 - index)
    in_channels, previous, out_channels = config.up_channels(index)
    layers = config.layers_per_block + 1
    for layer in range(layers):
        skip = in_channels if layer == layers - 1 else out_channels
        block.resnets.append(_resnet(config, (previous if layer == 0 else out_channels) + skip, out_channels))
    widths = [config.audio_width("up", index, k) for k in range(layers)] if config.up_attention[index] else None
    _add_layer_modules(block, config, out_channels, widths, temporal, layers)
    if index < config.levels - 1:
        block.upsamplers = nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])
    return block


def add_trunk(unet: nn.Module, config: HalloUNetConfig, temporal: bool) -> None:
    """The input convolution, time embedding and levels both UNets share, as attributes under the official names."""
    first = config.block_out_channels[0]
    unet.conv_in = nn.Conv2d(config.in_channels, first, kernel_size=3, padding=1)
    unet.time_proj = Timesteps(first, flip_sin_to_cos=True, downscale_freq_shift=0)
    unet.time_embedding = TimestepEmbedding(first, config.time_embed_dim)
    unet.down_blocks = nn.ModuleList([down_block(config, i, temporal) for i in range(config.levels)])
    unet.up_blocks = nn.ModuleList([up_block(config, i, temporal) for i in range(config.levels)])
    unet.mid_block = mid_block(config, temporal)
