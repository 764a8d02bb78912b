"""The Hallo / Hallo2 denoising UNet: SD1.5 inflated to video, with reference, audio and motion modules.

Frames travel as batch rows, `(batch frames) c h w`, because every 3-D operation of the official UNet3D (per-frame
GroupNorm, convolutions, ResNets, samplers, spatial and audio attention) is the 2-D one applied to each frame; only
the motion modules look across frames.

This is the official inference path, which is the training-mode branch of the official blocks. The official script
builds the denoiser with `from_config` (never put in eval mode) and enables gradient checkpointing, and every 3-D
block branches on `self.training and self.gradient_checkpointing` (official hallo `hallo/models/unet_3d_blocks.py`).
That branch, the only one this class implements, differs from what a plain `eval()` UNet would compute:

* in each cross-attention layer: ResNet -> spatial transformer reading the reference bank -> audio module with the
  user's pose / expression / lip weights -> motion module over [2 motion frames, 16 frames], the motion frames being
  the reference bank's norm1 features of the previous clip's last frames, dropped after the module;
* in the levels without cross-attention (down block 3, up block 0, at the lowest resolution) only the ResNets run:
  their 5 motion modules are in the weights but never executed;
* the mid block has no branch: ResNet, spatial, audio (weighted), motion over 18 frames, ResNet.

(`eval()` would instead drop the motion frames, sum the audio branches without weights and run the 5 unused
motion modules: a different network, 1.08 max |v| difference on the golden model.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .attention import key_value
from .blocks import UNetLevel, add_trunk
from .config import RESNET_EPS, HalloUNetConfig
from .reference_net import ReferenceBank, bank_key
from .spatial import BlockReference, from_tokens

MOTION_FRAMES = 2  # the reference, then the previous clip's last 2 frames, make the 3 rows of each bank copy


@dataclass
class DenoiserConditioning:
    """A clip's conditioning, constant over its steps, as rows `(batch frames)`: batches [uncond, cond] with CFG,
    [cond] without."""

    frames: int
    uncond_rows: int  # frames with CFG (the first batch), else 0
    image_tokens: torch.Tensor  # (rows, 4, d): imageproj(0) for uncond rows, imageproj(face embedding) for cond
    audio_tokens: torch.Tensor  # (rows, 32, d): zeros for uncond rows (after the projection, as official)
    face_features: torch.Tensor  # (batches, C0, h, w): zeros for uncond, face locator for cond
    masks: tuple[tuple[torch.Tensor, ...], ...]  # per level: (pose, expression, lip), each (1 or rows, h*w)
    motion_scale: tuple[float, float, float]  # (pose, expression, lip) weights
    reference: dict[str, BlockReference]


def reference_copy_rows(frames: int) -> torch.Tensor:
    """Which reference copy (0 = A, 1 = B) each conditional row reads.

    Official read: `rearrange(d, "(b s) l c -> b s l c", b=2)[:, 0]` is 3-D and `.repeat(1, frames, 1, 1)` tiles it,
    so row j of the CFG batch reads copy j % 2; the conditional rows are j = frames .. 2 * frames - 1 (also
    without CFG, where only they run).
    """
    return torch.arange(frames, 2 * frames) % 2


class HalloDenoiser(nn.Module):
    def __init__(self, config: HalloUNetConfig):
        super().__init__()
        self.config = config
        first = config.block_out_channels[0]
        add_trunk(self, config, temporal=True)
        self.conv_norm_out = nn.GroupNorm(config.norm_num_groups, first, eps=RESNET_EPS)
        self.conv_out = nn.Conv2d(first, config.out_channels, kernel_size=3, padding=1)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def spatial_transformers(self) -> dict[str, nn.Module]:
        """The 16 transformer blocks that read the bank, by official path."""
        blocks = {}
        for block in [*self.down_blocks, self.mid_block, *self.up_blocks]:
            if block.attentions is not None:
                for k, transformer in enumerate(block.attentions):
                    blocks[bank_key(block.name, k)] = transformer.transformer_blocks[0]
        return blocks

    def read_bank(self, bank: ReferenceBank, frames: int, cfg: bool) -> dict[str, BlockReference]:
        """Per-clip reads of the (fp16-rounded) bank: each block's keys/values of the two reference copies, computed
        once here instead of at every step, and the motion-frame features of each batch."""
        references = {}
        batches = [0, 1] if cfg else [1]
        for name, block in self.spatial_transformers().items():
            if name not in bank:
                raise KeyError(f"reference bank has no entry for {name}")
            entry = bank[name].to(self.dtype)
            copies = entry.reshape(2, 1 + MOTION_FRAMES, *entry.shape[1:])  # (copy, [ref, m1, m2], h*w, C)
            key, value = key_value(block.attn1, copies[:, 0])
            references[name] = BlockReference(
                key=key, value=value, rows=reference_copy_rows(frames).to(entry.device),
                motion_frames=copies[batches, 1:])
        return references

    def forward(self, sample: torch.Tensor, timestep: int | torch.Tensor, cond: DenoiserConditioning) -> torch.Tensor:
        """sample (batches, 4, frames, h, w) -> v (batches, 4, frames, h, w), v-prediction."""
        batches, channels, frames, h, w = sample.shape
        dtype = self.dtype
        x = sample.to(dtype).transpose(1, 2).reshape(batches * frames, channels, h, w)
        timesteps = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(batches)
        temb = self.time_embedding(self.time_proj(timesteps).to(dtype)).repeat_interleave(frames, dim=0)

        # conv_in, plus the face-locator features
        x = self.conv_in(x)
        x = (x.unflatten(0, (batches, frames)) + cond.face_features[:, None].to(dtype)).flatten(0, 1)
        skips = [x]
        for block in self.down_blocks:
            for k in range(len(block.resnets)):
                x = self._layer(block, k, x, temb, cond)
                skips.append(x)
            if block.downsamplers is not None:
                x = block.downsamplers[0](x)
                skips.append(x)

        x = self.mid_block.resnets[0](x, temb)
        x = self._attend(self.mid_block, 0, x, cond)
        x = self.mid_block.resnets[1](x, temb)

        for block in self.up_blocks:
            for k in range(len(block.resnets)):
                x = self._layer(block, k, torch.cat([x, skips.pop()], dim=1), temb, cond)
            if block.upsamplers is not None:
                x = block.upsamplers[0](x, output_size=skips[-1].shape[-2:])

        x = self.conv_out(F.silu(self.conv_norm_out(x)))
        return x.reshape(batches, frames, -1, h, w).transpose(1, 2)

    def _layer(self, block: UNetLevel, k: int, x: torch.Tensor, temb: torch.Tensor,
               cond: DenoiserConditioning) -> torch.Tensor:
        """One layer of a down or up level; levels without cross-attention run their ResNet only (train-mode path)."""
        x = block.resnets[k](x, temb)
        if block.attentions is None:
            return x
        return self._attend(block, k, x, cond)

    def _attend(self, block: UNetLevel, k: int, x: torch.Tensor, cond: DenoiserConditioning) -> torch.Tensor:
        reference = cond.reference[bank_key(block.name, k)]
        # spatial transformer with reference attention
        x, _ = block.attentions[k](x, cond.image_tokens, reference, cond.uncond_rows)
        # audio module with the region weights
        x = block.audio_modules[k](x, cond.audio_tokens, cond.masks[block.level], cond.motion_scale)
        # motion module over motion frames and frames
        return temporal_with_motion_frames(block.motion_modules[k], x, reference.motion_frames, cond.frames)


def temporal_with_motion_frames(module: nn.Module, x: torch.Tensor, motion_frames: torch.Tensor,
                                frames: int) -> torch.Tensor:
    """x (batches * frames, c, h, w), motion_frames (batches, m, h*w, c): run `module` over [m motion frames,
    frames] per batch and keep the frames."""
    h, w = x.shape[-2:]
    batches, motion = motion_frames.shape[:2]
    features = from_tokens(motion_frames.flatten(0, 1), h, w).to(x.dtype).unflatten(0, (batches, motion))
    clip = torch.cat([features, x.unflatten(0, (batches, frames))], dim=1)
    out = module(clip.flatten(0, 1), motion + frames)
    return out.unflatten(0, (batches, motion + frames))[:, motion:].flatten(0, 1)


def masks_at_levels(masks: Sequence[Sequence[torch.Tensor]], latent_hw: tuple[int, int], levels: int, batches: int,
                    frames: int, dtype: torch.dtype, device: torch.device) -> tuple[tuple[torch.Tensor, ...], ...]:
    """(pose, expression, lip) pyramids of `levels` tensors each, holding the level's h*w values once (any shape) or
    once per frame (e.g. the official (16, h*w)) -> per level (pose, expression, lip), each (1, h*w) or
    (batches * frames, h*w) rows."""
    h, w = latent_hw
    sizes = []
    for _ in range(levels):
        sizes.append(h * w)
        h, w = (h + 1) // 2, (w + 1) // 2  # a 3x3 stride-2 conv with padding 1 halves, rounding up
    out = []
    for level in range(levels):
        kinds = []
        for pyramid in masks:
            mask = torch.as_tensor(pyramid[level])
            rows = mask.numel() // sizes[level]
            if mask.numel() % sizes[level] or rows not in (1, frames):
                raise InputError(f"mask level {level} has {tuple(mask.shape)} values; expected {sizes[level]} "
                                 f"(the latent grid at that level) once or once per frame ({frames})")
            mask = mask.reshape(rows, sizes[level]).to(device=device, dtype=dtype)
            kinds.append(mask if rows == 1 else mask.repeat(batches, 1))
        out.append(tuple(kinds))
    return tuple(out)


def conditioning_batch(cond: DenoiserConditioning, batch: int) -> DenoiserConditioning:
    """One batch of a CFG conditioning (0: uncond, 1: cond) as a conditioning of its own: the same rows, so a batch
    computed alone equals its rows of the batched call (parallel/cfg.py computes one on each process)."""
    batches = 2 if cond.uncond_rows else 1
    if not 0 <= batch < batches:
        raise ValueError(f"batch {batch} of a conditioning with {batches} batches")
    frames = cond.frames
    rows = slice(batch * frames, (batch + 1) * frames)
    uncond = bool(cond.uncond_rows) and batch == 0
    return DenoiserConditioning(
        frames=frames,
        uncond_rows=frames if uncond else 0,
        image_tokens=cond.image_tokens[rows],
        audio_tokens=cond.audio_tokens[rows],
        face_features=cond.face_features[batch:batch + 1],
        masks=tuple(tuple(mask if mask.shape[0] == 1 else mask[rows] for mask in level) for level in cond.masks),
        motion_scale=cond.motion_scale,
        reference={name: BlockReference(ref.key, ref.value, ref.rows, ref.motion_frames[batch:batch + 1])
                   for name, ref in cond.reference.items()},
    )
