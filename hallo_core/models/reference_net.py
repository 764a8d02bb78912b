"""The identity reference network (hallo3_spec.md section 2.5).

A second, complete CogVideoX-5B-I2V transformer made of plain diffusers `CogVideoXBlock`s. It encodes the face-masked
reference latent (one latent frame, concatenated with itself on channels) at timestep 0 with a zero text embedding.
Its product is not its output but, for every layer, the modulated LayerNorm input of the video tokens to the
self-attention; the main transformer attends to those tokens in the same layer.

Its input never changes during a video, so the pipeline runs it once per video (the official code runs it per clip).
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.normalization import AdaLayerNorm
from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock
from torch import nn

from .config import Hallo3Config
from .embeddings import VideoPatchEmbedding, video_rotary_table
from .transformer import cogvideox_block_kwargs


class IdentityReferenceNet(nn.Module):
    def __init__(self, config: Hallo3Config):
        super().__init__()
        self.config = config
        dim = config.hidden_size
        self.patch_embed = VideoPatchEmbedding(config)
        self.time_proj = Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(dim, config.time_embed_dim, act_fn="silu")
        self.transformer_blocks = nn.ModuleList(
            [CogVideoXBlock(**cogvideox_block_kwargs(config)) for _ in range(config.num_layers)]
        )
        # The layers below only shape the (discarded) output; they are kept so official checkpoints load strictly.
        self.norm_final = nn.LayerNorm(dim, eps=config.norm_eps)
        self.norm_out = AdaLayerNorm(config.time_embed_dim, output_dim=2 * dim, norm_elementwise_affine=True,
                                     norm_eps=config.final_norm_eps, chunk_dim=1)
        self.proj_out = nn.Linear(dim, config.patch_size**2 * config.out_channels)

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_out.weight.dtype

    def forward(
        self, reference_latent: torch.Tensor, return_output: bool = False
    ) -> list[torch.Tensor] | tuple[list[torch.Tensor], torch.Tensor]:
        """reference_latent (b, 1, 16, h, w) -> per-layer captured tokens, each (b, h*w/4, hidden).

        With `return_output` also the network's own (unused) v prediction, for parity checks.
        """
        dtype = self.dtype
        batch, frames, _, height, width = reference_latent.shape
        latents = torch.cat([reference_latent, reference_latent], dim=2).to(dtype)
        timestep = torch.zeros(batch, device=latents.device)
        text_states = torch.zeros(batch, self.config.text_length, self.config.text_embed_dim,
                                  device=latents.device, dtype=dtype)

        temb = self.time_embedding(self.time_proj(timestep).to(dtype))
        states = self.patch_embed(text_states, latents)
        text, hidden = states[:, : self.config.text_length], states[:, self.config.text_length:]
        cos, sin = video_rotary_table(self.config, frames, device=latents.device)
        rotary = (cos.to(dtype), sin.to(dtype))

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

        patch = self.config.patch_size
        out = self.proj_out(self.norm_out(self.norm_final(hidden), temb=temb))
        out = out.reshape(batch, frames, height // patch, width // patch, -1, patch, patch)
        return captured, out.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)
