"""`convert`: the official checkpoints of every backbone in a models folder -> safetensors files for ComfyUI.

Hallo3: `hallo3_transformer_<dtype>.safetensors`, `hallo3_reference_<dtype>.safetensors` and the CogVideoX VAE
(hallo3/convert.py); Hallo / Hallo2: `<version>_unet_<dtype>.safetensors` and the SD VAE (hallo_unet/convert.py).
`src` may be a `pretrained_models/` folder holding one or several backbones, or one backbone's checkpoint. Without a
dtype each backbone keeps its official storage: bf16 for Hallo3, fp16 for Hallo and Hallo2.
"""

from __future__ import annotations

import os

from .backbones import BACKBONES, backbones_in
from .errors import ModelFileError

OFFICIAL_STORAGE = {"hallo3": "bf16", "hallo": "fp16", "hallo2": "fp16"}


def convert(src: str, dst: str, dtype_name: str | None = None, backbone: str | None = None) -> list[str]:
    """Convert every backbone found in `src` (or only `backbone`); returns the written paths."""
    from .hallo3.convert import convert_transformers
    from .hallo_unet.convert import convert_unet

    if not os.path.exists(src):
        raise ModelFileError(f"nothing to convert at {src}: give a pretrained_models/ folder or a checkpoint file")
    if backbone is not None and backbone not in BACKBONES:
        raise ModelFileError(f"unknown backbone '{backbone}'; choose one of {', '.join(BACKBONES)}")
    found = [backbone] if backbone else (backbones_in(src) if os.path.isdir(src) else [])
    if not found:  # one backbone's own folder or checkpoint file
        found = ["hallo3" if _is_hallo3(src) else None]
    written = []
    for name in found:
        dtype = dtype_name or OFFICIAL_STORAGE.get(name, "fp16")
        if name == "hallo3":
            written += convert_transformers(src, dst, dtype)
        else:
            written += convert_unet(src, dst, dtype, name)
    return written


def _is_hallo3(src: str) -> bool:
    if os.path.isdir(src):
        return os.path.isfile(os.path.join(src, "latest"))
    return os.path.basename(src) == "mp_rank_00_model_states.pt" or os.path.basename(src).startswith("hallo3")
