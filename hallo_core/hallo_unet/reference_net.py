"""Hallo's ReferenceNet: the SD1.5 2-D UNet that writes the reference bank, once per clip.

Official behaviour (hallo `hallo/animate/face_animate.py` and `hallo/models/mutual_self_attention.py`, write mode):

* input: the VAE latents of [reference, motion frame 1, motion frame 2], repeated twice (6 rows, "copy A" then
  "copy B"), at timestep 0 (not the step's timestep);
* cross-attention context: the image-projection tokens [uncond, cond] repeated three times, so the rows see
  [u, c, u, c, u, c]: reference A uncond, m1 A cond, m2 A uncond, reference B cond, m1 B uncond, m2 B cond;
* the bank entry of each of the 16 transformer blocks is its norm1 (LayerNorm) output, (6, h*w, C); the denoiser
  block of the same name reads it (`read_bank` in the denoiser);
* the official reader stores the bank as float16 whatever the compute dtype (`update(..., dtype=torch.float16)`),
  so the bank is fp16-rounded even in fp32 (`round_bank`).

The network has no conv_norm_out / conv_out: its output is never used, and the forward ends after the last bank
write. It runs in eval mode as official (no train-mode difference exists in the 2-D blocks).
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import add_trunk
from .config import HalloUNetConfig

# Bank entries by official block path, e.g. "down_blocks.0.attentions.1.transformer_blocks.0".
ReferenceBank = dict[str, torch.Tensor]
BANK_DTYPE = torch.float16


def bank_key(block_name: str, layer: int) -> str:
    return f"{block_name}.attentions.{layer}.transformer_blocks.0"


def round_bank(bank: ReferenceBank, dtype: torch.dtype) -> ReferenceBank:
    """The bank as the official denoiser reads it: rounded to float16, then computed with in `dtype` (in bf16 the
    official concatenation would promote to fp32; the fp16 values are cast to bf16 instead)."""
    return {name: entry.to(BANK_DTYPE).to(dtype) for name, entry in bank.items()}


def reference_context(image_tokens: torch.Tensor) -> torch.Tensor:
    """[uncond, cond] image tokens (2, 4, d) -> the 6-row context [u, c, u, c, u, c] of the official write pass."""
    return image_tokens.repeat(3, 1, 1)


class ReferenceNet(nn.Module):
    def __init__(self, config: HalloUNetConfig):
        super().__init__()
        self.config = config
        add_trunk(self, config, temporal=False)  # no output convolution: only the attention inputs are read

    def forward(self, latents: torch.Tensor, context: torch.Tensor) -> ReferenceBank:
        """latents (6, 4, h, w) = [ref, m1, m2] x 2 copies, context (6, 4, d) -> bank {block path: (6, h*w, C)}.

        The timestep is 0, as official.
        """
        dtype = self.conv_in.weight.dtype
        latents = latents.to(dtype)
        context = context.to(dtype)
        timesteps = torch.zeros(latents.shape[0], dtype=torch.long, device=latents.device)
        temb = self.time_embedding(self.time_proj(timesteps).to(dtype))
        bank: ReferenceBank = {}

        x = self.conv_in(latents)
        skips = [x]
        for block in self.down_blocks:
            for k, resnet in enumerate(block.resnets):
                x = resnet(x, temb)
                if block.attentions is not None:
                    x, bank[bank_key(block.name, k)] = block.attentions[k](x, context)
                skips.append(x)
            if block.downsamplers is not None:
                x = block.downsamplers[0](x)
                skips.append(x)

        x = self.mid_block.resnets[0](x, temb)
        x, bank[bank_key("mid_block", 0)] = self.mid_block.attentions[0](x, context)
        x = self.mid_block.resnets[1](x, temb)

        for block in self.up_blocks:
            for k, resnet in enumerate(block.resnets):
                x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
                if block.attentions is not None:
                    x, bank[bank_key(block.name, k)] = block.attentions[k](x, context)
            if block.upsamplers is not None:
                x = block.upsamplers[0](x, output_size=skips[-1].shape[-2:])
        return bank
