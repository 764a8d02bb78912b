"""Attention processors for diffusers' `Attention` modules in the Hallo3 main transformer.

Two behaviours that diffusers' CogVideoX processor does not have:

* `ReferenceJointAttnProcessor`: joint [text; video] self-attention whose keys and values are extended with the
  identity reference tokens of the same layer. The official code pushes the reference tokens through the layer's QKV
  and discards their outputs; only their keys and values matter, so they are computed once per video
  (`reference_key_value`) and appended here. Identical numbers, 1350 fewer queries per step.
* `FrameCrossAttnProcessor`: per-latent-frame cross-attention to face or audio tokens. It borrows the self-attention's
  qk-LayerNorms and rotates the queries (only) with the frame-0 RoPE table, as the official SAT hook chain does.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import apply_rotary_emb

from ..runtime.attention import KernelProcessor, merge_heads, split_heads


def reference_key_value(attn: Attention, reference_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys (after the k-LayerNorm, never rotated) and values of the reference tokens for one layer."""
    key = attn.norm_k(split_heads(attn.to_k(reference_tokens), attn.heads))
    value = split_heads(attn.to_v(reference_tokens), attn.heads)
    return key, value


class ReferenceJointAttnProcessor(KernelProcessor):
    """[text; video] self-attention, RoPE on the video part only, keys/values extended by the reference tokens."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        reference_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text_length = encoder_hidden_states.shape[1]
        states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        query = attn.norm_q(split_heads(attn.to_q(states), attn.heads))
        key = attn.norm_k(split_heads(attn.to_k(states), attn.heads))
        value = split_heads(attn.to_v(states), attn.heads)
        if image_rotary_emb is not None:
            query[:, :, text_length:] = apply_rotary_emb(query[:, :, text_length:], image_rotary_emb)
            key[:, :, text_length:] = apply_rotary_emb(key[:, :, text_length:], image_rotary_emb)
        if reference_kv is not None:
            ref_key, ref_value = (t.expand(query.shape[0], -1, -1, -1) for t in reference_kv)
            key = torch.cat([key, ref_key], dim=2)
            value = torch.cat([value, ref_value], dim=2)
        out = attn.to_out[0](merge_heads(self.kernel(query, key, value)))
        return out[:, text_length:], out[:, :text_length]


class FrameCrossAttnProcessor(KernelProcessor):
    """Each latent frame's video tokens attend to that frame's context tokens (audio) or shared ones (face)."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        frames: int = 1,
        norm_q: torch.nn.Module | None = None,
        norm_k: torch.nn.Module | None = None,
        frame_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        batch, length, dim = hidden_states.shape
        per_frame = hidden_states.reshape(batch * frames, length // frames, dim)
        context = encoder_hidden_states
        if context.shape[0] == batch and frames > 1:  # one set of tokens for all frames (face)
            context = context.repeat_interleave(frames, dim=0)
        query = norm_q(split_heads(attn.to_q(per_frame), attn.heads))
        key = norm_k(split_heads(attn.to_k(context), attn.heads))
        value = split_heads(attn.to_v(context), attn.heads)
        if frame_rotary_emb is not None:
            query = apply_rotary_emb(query, frame_rotary_emb)
        out = merge_heads(self.kernel(query, key, value))
        return attn.to_out[0](out).reshape(batch, length, dim)
