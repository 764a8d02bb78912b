"""The identity reference network.

A second, complete CogVideoX-5B-I2V transformer made of plain diffusers `CogVideoXBlock`s. It encodes the face-masked
reference latent (one latent frame, concatenated with itself on channels) at timestep 0 with a zero text embedding.
Its product is not its output but, for every layer, the modulated LayerNorm input of the video tokens to the
self-attention; the main transformer attends to those tokens in the same layer.

Its input never changes during a video, so the pipeline runs it once per video (the official code runs it per clip).
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock
from torch import nn

from .config import Hallo3Config
from .transformer import CogVideoXBackbone, cogvideox_block_kwargs


class IdentityReferenceNet(CogVideoXBackbone):
    def __init__(self, config: Hallo3Config):
        super().__init__(config)
        # Its last attention and MLP and its output layers only shape the (discarded) output; they are kept so
        # official checkpoints load strictly and parity can check the output.
        self.transformer_blocks = nn.ModuleList(
            [CogVideoXBlock(**cogvideox_block_kwargs(config)) for _ in range(config.num_layers)]
        )

    def forward(
        self, reference_latent: torch.Tensor, return_output: bool = False
    ) -> list[torch.Tensor] | tuple[list[torch.Tensor], torch.Tensor]:
        """reference_latent (b, 1, 16, h, w) -> per-layer captured tokens, each (b, h*w/4, hidden).

        With `return_output` also the network's own (unused) v prediction, for parity checks.
        """
        batch = reference_latent.shape[0]
        latents = torch.cat([reference_latent, reference_latent], dim=2)  # the image is its own condition
        text_states = torch.zeros(batch, self.config.text_length, self.config.text_embed_dim,
                                  device=latents.device, dtype=self.dtype)  # zero text, as official
        timestep = torch.zeros(batch, device=latents.device)
        text, hidden, temb, rotary = self.embed(text_states, latents, timestep)

        captured = []
        last = len(self.transformer_blocks) - 1
        for index, block in enumerate(self.transformer_blocks):
            # The tokens the main network attends to: this layer's modulated input to self-attention.
            captured.append(block.norm1(hidden, text, temb)[0])
            if index == last and not return_output:
                break
            hidden, text = block(hidden, text, temb, image_rotary_emb=rotary)
        if not return_output:
            return captured
        return captured, self.unpatchify(hidden, temb, latents.shape)
