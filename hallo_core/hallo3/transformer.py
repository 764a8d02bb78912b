"""The Hallo3 main transformer: CogVideoX-5B-I2V with face and audio cross-attention and identity reference tokens.

A diffusers `CogVideoXBlock` extended in two places:

* the self-attention also attends to the reference network's tokens of the same layer (keys and values only);
* between the self-attention residual and the feed-forward, two ungated per-frame cross-attentions, to 4 face tokens
  and then to 32 audio tokens, sharing the self-attention's qk-LayerNorms.

Parameter names follow diffusers' `CogVideoXTransformer3DModel` plus `norm_face`/`attn_face`, `norm_audio`/
`attn_audio`, `audio_proj` and `face_proj` (the key layout of `convert`, documented in docs/checkpoints.md).
"""

from __future__ import annotations

import contextlib

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.normalization import AdaLayerNorm
from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock
from torch import nn

from .attention import FrameCrossAttnProcessor, ReferenceJointAttnProcessor, reference_key_value
from .config import Hallo3Config
from .embeddings import VideoPatchEmbedding, video_rotary_table
from .projections import AudioProjection, FaceProjection

ReferenceKV = list[tuple[torch.Tensor, torch.Tensor]]


def _cross_attention(config: Hallo3Config, context_dim: int) -> Attention:
    return Attention(
        query_dim=config.hidden_size,
        cross_attention_dim=context_dim,
        heads=config.num_attention_heads,
        dim_head=config.attention_head_dim,
        bias=True,
        out_bias=True,
        processor=FrameCrossAttnProcessor(),
    )


def cogvideox_block_kwargs(config: Hallo3Config) -> dict:
    """diffusers `CogVideoXBlock` arguments of the CogVideoX-5B-I2V block at the given size."""
    return dict(
        dim=config.hidden_size,
        num_attention_heads=config.num_attention_heads,
        attention_head_dim=config.attention_head_dim,
        time_embed_dim=config.time_embed_dim,
        activation_fn="gelu-approximate",
        attention_bias=True,
        norm_elementwise_affine=True,
        norm_eps=config.norm_eps,
        ff_inner_dim=config.mlp_dim,
    )


class Hallo3Block(CogVideoXBlock):
    """CogVideoX block + reference tokens in self-attention + face and audio cross-attention."""

    def __init__(self, config: Hallo3Config):
        super().__init__(**cogvideox_block_kwargs(config))
        self.attn1.set_processor(ReferenceJointAttnProcessor())
        self.norm_face = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.attn_face = _cross_attention(config, config.face_token_dim)
        self.norm_audio = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.attn_audio = _cross_attention(config, config.audio_token_dim)

    def reference_key_value(self, reference_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return reference_key_value(self.attn1, reference_tokens)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor],
        frame_rotary_emb: tuple[torch.Tensor, torch.Tensor],
        reference_kv: tuple[torch.Tensor, torch.Tensor] | None,
        face_tokens: torch.Tensor,
        audio_tokens: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        frames = audio_tokens.shape[0] // hidden_states.shape[0]
        cross = dict(frames=frames, norm_q=self.attn1.norm_q, norm_k=self.attn1.norm_k,
                     frame_rotary_emb=frame_rotary_emb)

        # norm and modulate
        norm_hidden, norm_text, gate_msa, text_gate_msa = self.norm1(hidden_states, encoder_hidden_states, temb)
        # attention with reference
        attn_hidden, attn_text = self.attn1(norm_hidden, encoder_hidden_states=norm_text,
                                            image_rotary_emb=image_rotary_emb, reference_kv=reference_kv)
        # gated residual
        hidden_states = hidden_states + gate_msa * attn_hidden
        encoder_hidden_states = encoder_hidden_states + text_gate_msa * attn_text
        # face cross-attention, ungated
        hidden_states = hidden_states + self.attn_face(self.norm_face(hidden_states), face_tokens, **cross)
        # audio cross-attention, ungated
        hidden_states = hidden_states + self.attn_audio(self.norm_audio(hidden_states), audio_tokens, **cross)
        # norm and modulate
        norm_hidden, norm_text, gate_ff, text_gate_ff = self.norm2(hidden_states, encoder_hidden_states, temb)
        # feed-forward
        ff_output = self.ff(torch.cat([norm_text, norm_hidden], dim=1))
        # gated residual
        text_length = encoder_hidden_states.shape[1]
        hidden_states = hidden_states + gate_ff * ff_output[:, text_length:]
        encoder_hidden_states = encoder_hidden_states + text_gate_ff * ff_output[:, :text_length]
        return hidden_states, encoder_hidden_states


class CogVideoXBackbone(nn.Module):
    """What the main transformer and the reference network share around their blocks: the patch/text/position
    embedding and the timestep embedding on the way in, the final norms and the un-patchify on the way out."""

    def __init__(self, config: Hallo3Config):
        super().__init__()
        self.config = config
        dim = config.hidden_size
        self.patch_embed = VideoPatchEmbedding(config)
        self.time_proj = Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(dim, config.time_embed_dim, act_fn="silu")
        self.norm_final = nn.LayerNorm(dim, eps=config.norm_eps)
        self.norm_out = AdaLayerNorm(config.time_embed_dim, output_dim=2 * dim, norm_elementwise_affine=True,
                                     norm_eps=config.final_norm_eps, chunk_dim=1)
        self.proj_out = nn.Linear(dim, config.patch_size**2 * config.out_channels)

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_out.weight.dtype

    def embed(self, text_states: torch.Tensor, latents: torch.Tensor, timestep: torch.Tensor):
        """-> text tokens, video tokens, timestep embedding, RoPE (cos, sin) of the video tokens."""
        dtype = self.dtype
        temb = self.time_embedding(self.time_proj(timestep).to(dtype))
        states = self.patch_embed(text_states.to(dtype), latents.to(dtype))
        text_length = text_states.shape[1]
        return states[:, :text_length], states[:, text_length:], temb, self.rotary(latents.shape[1], latents.device)

    def rotary(self, frames: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The RoPE table of `frames` latent frames, made once per (frames, device, dtype) instead of every step."""
        cache = self.__dict__.setdefault("_rotary_cache", {})
        key = (frames, str(device), self.dtype)
        if key not in cache:
            cos, sin = video_rotary_table(self.config, frames, device=device)
            cache.clear()  # one entry: a model moved to another device or dtype drops the old table
            cache[key] = (cos.to(self.dtype), sin.to(self.dtype))
        return cache[key]

    def unpatchify(self, hidden: torch.Tensor, temb: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Final norms and projection, then tokens -> (b, t, out_channels, h, w)."""
        batch, frames, _, height, width = shape
        patch = self.config.patch_size
        hidden = self.proj_out(self.norm_out(self.norm_final(hidden), temb=temb))
        hidden = hidden.reshape(batch, frames, height // patch, width // patch, -1, patch, patch)
        return hidden.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)


class Hallo3Transformer(CogVideoXBackbone):
    """Predicts v for a 49-frame clip from noisy + condition latents, text, audio, face and reference tokens."""

    def __init__(self, config: Hallo3Config):
        super().__init__(config)
        self.transformer_blocks = nn.ModuleList([Hallo3Block(config) for _ in range(config.num_layers)])
        self.audio_proj = AudioProjection(config)
        self.face_proj = FaceProjection(config)

    def compile_blocks(self, **options) -> None:
        """Regional torch.compile: each block compiled on its own (one graph, reused 42 times; same maths within
        rounding), static shapes, persistent caches (runtime/compile.py). The block's forward is compiled, not the
        module call, so forward hooks (block streaming's weight moves) stay outside the graph."""
        from ..runtime.compile import compile_forwards

        compile_forwards(self.transformer_blocks, **options)

    def reference_key_values(self, reference_tokens: list[torch.Tensor]) -> ReferenceKV:
        """Per-layer keys and values of the reference network's captured tokens; computed once per video."""
        values = []
        for index, (block, tokens) in enumerate(zip(self.transformer_blocks, reference_tokens)):
            streamer = getattr(self, "block_streamer", None)  # blocks streamed from host memory (low preset)
            with streamer.resident(index) if streamer is not None else contextlib.nullcontext():
                values.append(block.reference_key_value(tokens))
        return values

    def encode_audio(self, audio_windows: torch.Tensor) -> torch.Tensor:
        """(b, 49, 5, layers, width) wav2vec windows -> (b, 13, 32, 768) audio tokens; once per clip."""
        return self.audio_proj(audio_windows.to(self.dtype))

    def encode_face(self, face_embedding: torch.Tensor) -> torch.Tensor:
        """(b, 512) raw ArcFace embedding -> (b, 4, 1024) face tokens; once per video."""
        return self.face_proj(face_embedding.to(self.dtype))

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text_states: torch.Tensor,
        audio_tokens: torch.Tensor,
        face_tokens: torch.Tensor,
        reference_kv: ReferenceKV | None,
    ) -> torch.Tensor:
        """latents (b, t, 32, h, w) = [noisy; condition] channels -> v prediction (b, t, 16, h, w)."""
        text, hidden, temb, rotary = self.embed(text_states, latents, timestep)
        tokens_per_frame = hidden.shape[1] // latents.shape[1]
        frame_rotary = (rotary[0][:tokens_per_frame], rotary[1][:tokens_per_frame])  # frame 0's positions
        audio_tokens = audio_tokens.to(self.dtype).flatten(0, 1)  # (b t, m, c)
        face_tokens = face_tokens.to(self.dtype)
        hidden, text = self.run_blocks(hidden, text, temb, rotary, frame_rotary, reference_kv, face_tokens,
                                       audio_tokens)
        return self.unpatchify(hidden, temb, latents.shape)

    def run_blocks(self, hidden, text, temb, rotary, frame_rotary, reference_kv, face_tokens, audio_tokens):
        """The blocks, in order: (video, text) states in and out. A step cache (step_cache.py) wraps this method on
        the instance while it is attached, so skipping steps is no branch of the computation itself."""
        for index, block in enumerate(self.transformer_blocks):
            hidden, text = block(hidden, text, temb, rotary, frame_rotary,
                                 reference_kv[index] if reference_kv is not None else None,
                                 face_tokens, audio_tokens)
        return hidden, text
