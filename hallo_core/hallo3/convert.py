"""`convert`: official Hallo3 checkpoints -> safetensors files for ComfyUI's model folders.

Writes `hallo3_transformer_<dtype>.safetensors` and `hallo3_reference_<dtype>.safetensors` (our key layout with the
configuration in the metadata; docs/checkpoints.md), and, when the source is a `pretrained_models/` folder, the VAE as
`cogvideox_5b_i2v_vae_<dtype>.safetensors` (diffusers names; for ComfyUI's models/vae). Tensors are streamed: memory stays at about one tensor.
With fp8 storage only the large matrices of the blocks and projections are stored in fp8; norms, biases, embeddings
and the output layer stay in bf16, and the loader upcasts fp8 weights to the compute dtype.
"""

from __future__ import annotations

import os

import torch

from ..errors import InputError
from ..loading.safetensors_writer import to_storage, write_safetensors
from .checkpoint import CONFIG_KEY, FORMAT_KEY, FORMATS, TransformerWeights, fp8_storage

STORAGE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
                  "fp8_e4m3fn": torch.float8_e4m3fn}


def storage_dtype(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.dtype:
    return fp8_storage(torch.bfloat16)(name, shape) if dtype == torch.float8_e4m3fn else dtype


def _cast(produce, dtype):
    def run():
        return to_storage(produce(), dtype)

    return run


def convert_transformers(src: str, dst: str, dtype_name: str = "bf16") -> list[str]:
    if dtype_name not in STORAGE_DTYPES:
        raise InputError(f"unknown --dtype {dtype_name}; choose one of {', '.join(STORAGE_DTYPES)}")
    dtype = STORAGE_DTYPES[dtype_name]
    os.makedirs(dst, exist_ok=True)
    written = []
    for role, stem in (("main", "hallo3_transformer"), ("reference", "hallo3_reference")):
        weights = TransformerWeights(src, role)
        config = weights.config()
        if role == "reference":
            config = config.reference_config()
        entries = []
        for name, shape, produce in weights.lazy_entries():
            target = storage_dtype(name, shape, dtype)
            entries.append((name, shape, target, _cast(produce, target)))
        path = os.path.join(dst, f"{stem}_{dtype_name}.safetensors")
        metadata = {FORMAT_KEY: FORMATS[role], CONFIG_KEY: config.to_json(),
                    "hallo3.source": os.path.basename(weights.source)}
        write_safetensors(path, entries, metadata)
        written.append(path)
    vae = _official_vae(src)
    if vae is not None:  # the VAE stays bf16 (or the requested 16/32-bit dtype): fp8 would cost too much quality
        from .vae_checkpoint import load_vae_model, write_vae_safetensors

        vae_dtype = dtype if dtype in (torch.float16, torch.float32) else torch.bfloat16
        name = {torch.float16: "fp16", torch.float32: "fp32"}.get(vae_dtype, "bf16")
        path = os.path.join(dst, f"cogvideox_5b_i2v_vae_{name}.safetensors")
        write_vae_safetensors(load_vae_model(vae, dtype=torch.float32), path, vae_dtype)
        written.append(path)
    return written


def _official_vae(src: str) -> str | None:
    for root in (src, os.path.dirname(os.path.normpath(src))):
        candidate = os.path.join(root, "cogvideox-5b-i2v-sat", "vae", "3d-vae.pt")
        if os.path.isdir(root) and os.path.isfile(candidate):
            return candidate
    return None
