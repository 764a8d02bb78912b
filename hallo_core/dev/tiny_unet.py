"""Tiny random Hallo / Hallo2 UNet models in the official `pretrained_models/` layout, for smoke tests.

Writes `hallo2/net.pth` (or `hallo/net.pth`): a `torch.save`d OrderedDict of fp16 tensors under the official names
of the five networks, as the official file; and `sd-vae-ft-mse/` (config.json + diffusion_pytorch_model.safetensors),
a tiny diffusers AutoencoderKL. The official layout's `stable-diffusion-v1-5/unet` and `motion_module/` files are not
written: the official code only builds the network from them and then overwrites every weight with net.pth, and our
loader needs net.pth alone (the configuration comes from its shapes).

The tiny network keeps every structural feature of the real one (ReferenceNet, 16 reference-reading blocks, audio
modules with narrower inner widths, motion modules at every level incl. the never-run ones, face locator) at widths
32/64, one layer per level, and renders 64x64 frames (8x8 latents); the sizes of the face embedding and of the
wav2vec windows follow the tiny front-end models (`tiny_frontends`).
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict

import torch

from ..hallo_unet.checkpoint import NETWORKS
from ..hallo_unet.config import HalloUNetConfig
from ..hallo_unet.motion import position_table

TINY_FRAME_SIZE = 64
TINY_VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [8, 8, 8, 8], "layers_per_block": 1,
    "act_fn": "silu", "latent_channels": 4, "norm_num_groups": 4, "sample_size": TINY_FRAME_SIZE,
    "scaling_factor": 0.18215,
}


def tiny_config(face_embed_dim: int = 512, audio_input_dim: int = 5 * 12 * 32) -> HalloUNetConfig:
    """Widths 32/32/64/64, one layer per level; `audio_input_dim` = window 5 x wav2vec layers x wav2vec width."""
    return HalloUNetConfig(block_out_channels=(32, 32, 64, 64), layers_per_block=1, time_embed_dim=64,
                           cross_attention_dim=32, audio_token_dim=32, face_embed_dim=face_embed_dim,
                           audio_input_dim=audio_input_dim, audio_intermediate_dim=32, audio_context_tokens=4,
                           face_locator_channels=(16, 32, 64, 64))


def random_net_state(config: HalloUNetConfig, seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """Random official-named weights (fp16, as net.pth): norms near identity, matrices scaled by fan-in, and the
    official motion position tables; the zero-initialised layers of the official model get weights too, so every
    path contributes."""
    generator = torch.Generator().manual_seed(seed)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for prefix, factory in NETWORKS.items():
        with torch.device("meta"):
            model = factory(config)
        for name, tensor in model.state_dict().items():
            shape = tuple(tensor.shape)
            if name.endswith("pos_encoder.pe"):
                value = position_table(shape[2], shape[1])
            elif len(shape) >= 2:
                value = torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape[1:]))
            elif name.endswith(".weight") and ("norm" in name.rsplit(".", 2)[-2]):
                value = 1.0 + 0.1 * torch.randn(shape, generator=generator)
            else:
                value = 0.05 * torch.randn(shape, generator=generator)
            state[prefix + name] = value.to(torch.float16)
    return state


def write_tiny_vae(folder: str | os.PathLike, seed: int = 0) -> str:
    """A tiny `sd-vae-ft-mse`-style diffusers folder (config.json + diffusion_pytorch_model.safetensors)."""
    from diffusers import AutoencoderKL

    generator = torch.Generator().manual_seed(seed)
    vae = AutoencoderKL.from_config(TINY_VAE_CONFIG)
    with torch.no_grad():
        for parameter in vae.parameters():
            if parameter.ndim >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator)
                                / math.sqrt(math.prod(parameter.shape[1:])))
    vae.save_pretrained(os.fspath(folder), safe_serialization=True)
    return os.fspath(folder)


def write_tiny_hallo_unet(root: str | os.PathLike, version: str = "hallo2", seed: int = 0,
                          face_embed_dim: int = 512, audio_input_dim: int = 5 * 12 * 32) -> dict[str, str]:
    """Write `root/<version>/net.pth` and `root/sd-vae-ft-mse/`; returns {"unet": path, "vae": folder}."""
    if version not in ("hallo", "hallo2"):
        raise ValueError(f"version must be hallo or hallo2, got {version!r}")
    root = os.fspath(root)
    net = os.path.join(root, version, "net.pth")
    os.makedirs(os.path.dirname(net), exist_ok=True)
    torch.save(random_net_state(tiny_config(face_embed_dim, audio_input_dim), seed), net)
    vae = write_tiny_vae(os.path.join(root, "sd-vae-ft-mse"), seed=seed)
    return {"unet": net, "vae": vae}
