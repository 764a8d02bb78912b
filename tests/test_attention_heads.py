"""Multi-head attention in the Hallo3 processors, against head-by-head references (the shipped golden has one head,
which cannot show a head-layout mistake; a multi-head official golden was checked by hand, see docs/benchmarks.md)."""

import math

import torch
from diffusers.models.attention_processor import Attention, CogVideoXAttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb

from hallo_core.hallo3.attention import FrameCrossAttnProcessor, ReferenceJointAttnProcessor, reference_key_value

HEADS, HEAD_DIM = 4, 16
DIM = HEADS * HEAD_DIM


def _attention(processor, cross_dim=None):
    torch.manual_seed(0)
    attn = Attention(query_dim=DIM, cross_attention_dim=cross_dim, heads=HEADS, dim_head=HEAD_DIM, bias=True,
                     out_bias=True, qk_norm=None if cross_dim else "layer_norm", eps=1e-6, processor=processor)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
    return attn.eval()


def _rotary(length):
    angles = torch.rand(length, HEAD_DIM // 2) * 6
    cos = torch.repeat_interleave(angles.cos(), 2, dim=-1)
    sin = torch.repeat_interleave(angles.sin(), 2, dim=-1)
    return cos, sin


def _per_head(query, key, value, heads=HEADS):
    """Plain attention, one head at a time, on (b, len, heads*d) slices."""
    outs = []
    for h in range(heads):
        q, k, v = (t[..., h * HEAD_DIM:(h + 1) * HEAD_DIM] for t in (query, key, value))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(HEAD_DIM), dim=-1)
        outs.append(weights @ v)
    return torch.cat(outs, dim=-1)


def test_joint_attention_without_reference_equals_diffusers():
    ours, theirs = _attention(ReferenceJointAttnProcessor()), _attention(CogVideoXAttnProcessor2_0())
    text, video = torch.randn(2, 5, DIM), torch.randn(2, 12, DIM)
    rotary = _rotary(12)
    with torch.no_grad():
        a = ours(video, encoder_hidden_states=text, image_rotary_emb=rotary)
        b = theirs(video, encoder_hidden_states=text, image_rotary_emb=rotary)
    assert torch.allclose(a[0], b[0], atol=1e-6) and torch.allclose(a[1], b[1], atol=1e-6)


def test_reference_tokens_join_keys_and_values_of_every_head():
    attn = _attention(ReferenceJointAttnProcessor())
    text, video, reference = torch.randn(2, 5, DIM), torch.randn(2, 12, DIM), torch.randn(1, 7, DIM)
    cos, sin = _rotary(12)
    with torch.no_grad():
        kv = reference_key_value(attn, reference)
        ours_video, ours_text = attn(video, encoder_hidden_states=text, image_rotary_emb=(cos, sin),
                                     reference_kv=kv)
        # The official layout: [text; video; reference] through one QKV, per-head qk-LayerNorm, RoPE on the video
        # part only, reference outputs dropped.
        states = torch.cat([text, video, reference.expand(2, -1, -1)], dim=1)
        q, k, v = attn.to_q(states), attn.to_k(states), attn.to_v(states)
        norm = lambda t, ln: torch.cat([ln(t[..., h * HEAD_DIM:(h + 1) * HEAD_DIM]) for h in range(HEADS)], -1)  # noqa: E731
        q, k = norm(q, attn.norm_q), norm(k, attn.norm_k)

        def rope(t):
            parts = [t[..., h * HEAD_DIM:(h + 1) * HEAD_DIM] for h in range(HEADS)]
            rotated = [apply_rotary_emb(p[:, None, 5:17], (cos, sin))[:, 0] for p in parts]
            return torch.cat([torch.cat([p[:, :5], r, p[:, 17:]], dim=1) for p, r in zip(parts, rotated)], -1)

        out = attn.to_out[0](_per_head(rope(q), rope(k), v))
    assert torch.allclose(ours_text, out[:, :5], atol=1e-5)
    assert torch.allclose(ours_video, out[:, 5:17], atol=1e-5)


def test_frame_cross_attention_attends_within_each_frame():
    attn = _attention(FrameCrossAttnProcessor(), cross_dim=24)
    norm_q, norm_k = torch.nn.LayerNorm(HEAD_DIM), torch.nn.LayerNorm(HEAD_DIM)
    frames, per_frame = 3, 6
    video = torch.randn(2, frames * per_frame, DIM)
    audio = torch.randn(2 * frames, 4, 24)  # per-frame context
    cos, sin = _rotary(per_frame)
    with torch.no_grad():
        ours = attn(video, audio, frames=frames, norm_q=norm_q, norm_k=norm_k, frame_rotary_emb=(cos, sin))
        expected = torch.empty_like(ours)
        for b in range(2):
            for f in range(frames):
                x = video[b:b + 1, f * per_frame:(f + 1) * per_frame]
                context = audio[b * frames + f:b * frames + f + 1]
                q, k, v = attn.to_q(x), attn.to_k(context), attn.to_v(context)
                q = torch.cat([apply_rotary_emb(norm_q(q[..., h * HEAD_DIM:(h + 1) * HEAD_DIM])[:, None], (cos, sin))[:, 0]
                               for h in range(HEADS)], -1)
                k = torch.cat([norm_k(k[..., h * HEAD_DIM:(h + 1) * HEAD_DIM]) for h in range(HEADS)], -1)
                expected[b:b + 1, f * per_frame:(f + 1) * per_frame] = attn.to_out[0](_per_head(q, k, v))
    assert torch.allclose(ours, expected, atol=1e-5)
    # Face tokens shared by every frame give the same result as repeating them per frame.
    face = torch.randn(2, 4, 24)
    with torch.no_grad():
        shared = attn(video, face, frames=frames, norm_q=norm_q, norm_k=norm_k, frame_rotary_emb=(cos, sin))
        repeated = attn(video, face.repeat_interleave(frames, 0), frames=frames, norm_q=norm_q, norm_k=norm_k,
                        frame_rotary_emb=(cos, sin))
    assert torch.allclose(shared, repeated, atol=1e-6)
