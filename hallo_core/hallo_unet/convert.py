"""`convert` for Hallo / Hallo2: the official net.pth -> one safetensors file for ComfyUI's model folders.

Writes `<version>_unet_<dtype>.safetensors` (e.g. `hallo2_unet_fp16.safetensors`): the official tensor names
unchanged, the configuration and format in the metadata (`hallo_unet.format`, `hallo_unet.config`,
`hallo_unet.version`). With `fp8_e4m3fn` only the UNets' linear matrices are fp8 (the loader upcasts them per
layer), everything else fp16, the official storage dtype. When the source is a `pretrained_models/` folder with
`sd-vae-ft-mse/`, the VAE is written too, as `sd_vae_ft_mse_<fp16|fp32|bf16>.safetensors` (diffusers names, config in
the metadata; for models/vae). Tensors are streamed one at a time.
"""

from __future__ import annotations

import functools
import os

import torch

from ..errors import InputError
from ..loading.safetensors_writer import to_storage, write_safetensors
from ..runtime.options import DTYPES
from .checkpoint import CONFIG_KEY, FORMAT, FORMAT_KEY, VERSION_KEY, UNetWeights, fp8_storage
from .config import PREFIXES


def _produce(weights: UNetWeights, name: str, dtype: torch.dtype) -> torch.Tensor:
    return to_storage(weights.state[name], dtype)


def convert_unet(src: str | os.PathLike, dst: str | os.PathLike, dtype_name: str = "fp16",
                 version: str | None = None) -> list[str]:
    """Convert `src` (pretrained_models/, hallo2/, a net.pth or a converted file) into `dst`; returns the paths."""
    if dtype_name not in DTYPES:
        raise InputError(f"unknown --dtype {dtype_name}; choose one of {', '.join(DTYPES)}")
    dtype = DTYPES[dtype_name]
    weights = UNetWeights(src, version)
    config = weights.config()
    policy = fp8_storage(torch.float16) if dtype == torch.float8_e4m3fn else (lambda name, shape: dtype)
    entries = []
    for name in weights.state:
        if not name.startswith(PREFIXES):
            continue  # a carried VAE is written as its own file below
        shape = weights.state.shape(name)
        target = policy(name, shape)
        entries.append((name, shape, target, functools.partial(_produce, weights, name, target)))
    os.makedirs(dst, exist_ok=True)
    stem = weights.version if weights.version != "unknown" else "hallo_unet"
    path = os.path.join(os.fspath(dst), f"{stem}_unet_{dtype_name}.safetensors")
    write_safetensors(path, entries, {FORMAT_KEY: FORMAT, CONFIG_KEY: config.to_json(), VERSION_KEY: weights.version,
                                      "hallo_unet.source": os.path.basename(weights.source)})
    written = [path]
    vae = _official_vae(os.fspath(src))
    if vae is not None:  # 16/32-bit only: fp8 would cost the VAE too much quality
        from .vae import load_vae, write_vae_safetensors

        vae_dtype = dtype if dtype in (torch.float16, torch.float32, torch.bfloat16) else torch.float16
        name = {torch.float16: "fp16", torch.float32: "fp32", torch.bfloat16: "bf16"}[vae_dtype]
        vae_path = os.path.join(os.fspath(dst), f"sd_vae_ft_mse_{name}.safetensors")
        written.append(write_vae_safetensors(load_vae(vae, dtype=torch.float32), vae_path, vae_dtype))
    return written


def _official_vae(src: str) -> str | None:
    """`sd-vae-ft-mse/` in a pretrained_models/ source (or beside a hallo/, hallo2/ folder or net.pth)."""
    candidates = [src, os.path.dirname(os.path.normpath(src)), os.path.dirname(os.path.dirname(os.path.normpath(src)))]
    for root in candidates if os.path.isdir(src) or src.endswith("net.pth") else []:
        folder = os.path.join(root, "sd-vae-ft-mse")
        if os.path.isfile(os.path.join(folder, "config.json")):
            return folder
    return None
