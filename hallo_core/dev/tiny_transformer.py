"""Tiny random Hallo3 transformers in the official SAT/DeepSpeed container, for smoke tests without real weights.

The tiny model keeps every structural feature of the real one (reference network, audio and face projections and
cross-attentions, learned positions for 13 latent frames, RoPE) at a small width, and its learned position table
covers 64x96-pixel frames (8x12 latents) instead of 480x720, so a whole render runs on a laptop CPU. The pipeline
reads the frame size from the weights, so no code path knows it is tiny.
"""

from __future__ import annotations

import argparse
import os

import torch

from ..hallo3.checkpoint import SAT_PREFIXES, ours_to_sat
from ..hallo3.config import Hallo3Config
from ..hallo3.reference_net import IdentityReferenceNet
from ..hallo3.transformer import Hallo3Transformer

TINY_PIXEL_SIZE = (64, 96)


def tiny_config(text_embed_dim: int, audio_input_dim: int) -> Hallo3Config:
    height, width = TINY_PIXEL_SIZE
    return Hallo3Config(
        num_layers=2, num_attention_heads=2, attention_head_dim=16, mlp_dim=128, time_embed_dim=64,
        text_embed_dim=text_embed_dim, latent_height=height // 8, latent_width=width // 8,
        audio_input_dim=audio_input_dim, audio_intermediate_dim=32, audio_context_tokens=4, audio_token_dim=16,
        face_embed_dim=512, face_tokens=4, face_token_dim=32,
    )


def _random_state(model: torch.nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Small random weights: LayerNorms near identity, everything else N(0, 0.02) - finite, non-trivial outputs."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith(".weight") and tensor.ndim == 1:  # norm scales
            value = 1.0 + 0.05 * torch.randn(tensor.shape, generator=generator)
        else:
            value = 0.02 * torch.randn(tensor.shape, generator=generator)
        state[name] = value.to(torch.float32)
    return state


def write_tiny_hallo3(root: str | os.PathLike, config: Hallo3Config, seed: int = 0) -> str:
    """Write `root/hallo3/latest` and `root/hallo3/1/mp_rank_00_model_states.pt` (bf16, like the official file)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        main, reference = Hallo3Transformer(config), IdentityReferenceNet(config.reference_config())
    module = {}
    for role, model in (("main", main), ("reference", reference)):
        state = _random_state(model, generator)
        for name, tensor in ours_to_sat(state).items():
            module[SAT_PREFIXES[role] + name] = tensor.to(torch.bfloat16)
    folder = os.path.join(os.fspath(root), "hallo3")
    os.makedirs(os.path.join(folder, "1"), exist_ok=True)
    path = os.path.join(folder, "1", "mp_rank_00_model_states.pt")
    # DeepSpeed writes its metadata beside the weights; the loader must tolerate it without executing anything.
    torch.save({"module": module, "args": argparse.Namespace(bf16=True, tiny=True), "global_steps": 0,
                "ds_version": "tiny"}, path)
    with open(os.path.join(folder, "latest"), "w") as f:
        f.write("1")
    return path
