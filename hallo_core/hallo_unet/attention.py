"""The attention processor of every `Attention` module in the Hallo UNets.

The official code runs diffusers' `AttnProcessor2_0` (SDPA, no mask, scale 1/sqrt(head_dim), no upcast). This
processor computes the same, through the model's own kernel (`runtime.attention`), and can append extra keys and
values after the module's own: the reference-attention bank (keys/values of the reference tokens, computed once per
clip because the bank is constant over the steps of a clip).
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention

from ..runtime.attention import KernelProcessor, merge_heads, split_heads


def key_value(attn: Attention, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of `context` tokens (b, length, dim) in head layout (b, heads, length, d)."""
    return split_heads(attn.to_k(context), attn.heads), split_heads(attn.to_v(context), attn.heads)


class KernelAttnProcessor(KernelProcessor):
    """q from `hidden_states`, k/v from `encoder_hidden_states` (or itself) plus optional extra k/v; as SDPA."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        extra_key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        query = split_heads(attn.to_q(hidden_states), attn.heads)
        key, value = key_value(attn, hidden_states if encoder_hidden_states is None else encoder_hidden_states)
        if extra_key_value is not None:
            # The official code concatenates the reference tokens after the row's own tokens.
            key = torch.cat([key, extra_key_value[0]], dim=2)
            value = torch.cat([value, extra_key_value[1]], dim=2)
        out = merge_heads(self.kernel(query, key, value)).to(query.dtype)
        return attn.to_out[0](out)


def attention(dim: int, heads: int, context_dim: int | None = None) -> Attention:
    """diffusers `Attention` as SD1.5 builds it: no q/k/v bias, output bias, head_dim = dim / heads."""
    return Attention(query_dim=dim, cross_attention_dim=context_dim, heads=heads, dim_head=dim // heads, bias=False,
                     processor=KernelAttnProcessor())
