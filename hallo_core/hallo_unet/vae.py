"""The SD VAE (sd-vae-ft-mse) as Hallo uses it: loading, and the official encode / decode.

Sources `load_vae` reads, all into diffusers' `AutoencoderKL`, strictly (every weight used, none missing):

* the official diffusers folder `pretrained_models/sd-vae-ft-mse/` (config.json + diffusion_pytorch_model.safetensors),
  or `pretrained_models/` itself;
* a single `.safetensors` file as ComfyUI users keep in `models/vae`: original LDM names (`encoder.down.0.block.0...`,
  as `vae-ft-mse-840000-ema-pruned.safetensors`), possibly under a `first_stage_model.` or `vae.` prefix, converted by
  diffusers' own `convert_ldm_vae_checkpoint`; or diffusers names (what `convert` writes, config in its metadata).

A single file carries no configuration: it is inferred from the shapes, with the SD VAE's constants for what the
shapes cannot tell (32 GroupNorm groups). Pickled VAE files are refused: convert them to safetensors.

Official use (hallo `hallo/animate/face_animate.py`): encode -> `latent_dist.mean` (not a sample) x 0.18215 (hard-coded,
not the config's scaling factor); decode each frame separately at (1 / 0.18215) x latents, then (x / 2 + 0.5)
clamped to [0, 1].
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import torch
from diffusers import AutoencoderKL

from ..errors import ModelFileError
from ..loading.state_dict import LazyStateDict, build_on_meta, materialize, read_json_metadata

LATENT_SCALE = 0.18215
OFFICIAL_FOLDER = "sd-vae-ft-mse"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
VAE_CONFIG_KEY = "hallo_unet.vae_config"
CARRIED_PREFIXES = ("first_stage_model.", "vae.")
# Training-only entries some LDM files keep (discriminator, EMA bookkeeping): not part of the autoencoder.
IGNORED_PREFIXES = ("loss.", "model_ema.")
SD_VAE_DEFAULTS = {"norm_num_groups": 32, "act_fn": "silu", "scaling_factor": LATENT_SCALE, "sample_size": 512}


def _find_weights(path: str) -> tuple[str, dict | None]:
    """(safetensors file, config.json content or None) for a folder, a pretrained_models root or a file."""
    if os.path.isfile(path):
        if not path.endswith(".safetensors"):
            raise ModelFileError(f"{path}: VAE files are read as .safetensors only; convert it to safetensors "
                                 "(or use the official sd-vae-ft-mse folder)")
        return path, None
    for folder in (path, os.path.join(path, OFFICIAL_FOLDER)):
        config = os.path.join(folder, "config.json")
        if os.path.isfile(config):
            weights = os.path.join(folder, DIFFUSERS_WEIGHTS)
            if not os.path.isfile(weights):
                raise ModelFileError(f"{folder} has no {DIFFUSERS_WEIGHTS}; download sd-vae-ft-mse again "
                                     "(hf download stabilityai/sd-vae-ft-mse)")
            with open(config) as f:
                try:
                    return weights, json.load(f)
                except json.JSONDecodeError:
                    raise ModelFileError(f"{config} is not valid JSON; download sd-vae-ft-mse again") from None
    raise ModelFileError(f"no VAE at {path}: expected the sd-vae-ft-mse folder (config.json + {DIFFUSERS_WEIGHTS}) "
                         "or a VAE .safetensors file")


def _strip_prefix(names: list[str]) -> str:
    for prefix in CARRIED_PREFIXES:
        if any(n.startswith(prefix) for n in names):
            return prefix
    return ""


def vae_state_dict(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The VAE tensors of a file in diffusers names, whatever layout it has; refuses tensors it cannot place."""
    prefix = _strip_prefix(list(state))
    tensors = {n[len(prefix):]: state[n] for n in state
               if n.startswith(prefix) and not n[len(prefix):].startswith(IGNORED_PREFIXES)}
    if any(n.startswith("encoder.down.") for n in tensors):  # original LDM names
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        levels = 1 + max(int(n.split(".")[2]) for n in tensors if n.startswith("encoder.down."))
        converted = convert_ldm_vae_checkpoint(tensors, {"down_block_types": [None] * levels,
                                                         "up_block_types": [None] * levels})
        if len(converted) != len(tensors):  # each LDM tensor has exactly one diffusers name
            raise ModelFileError(f"{source}: {len(tensors) - len(converted)} VAE tensors have no diffusers name; "
                                 "is this an SD (AutoencoderKL) VAE?")
        return converted
    if not any(n.startswith("encoder.down_blocks.") for n in tensors):
        raise ModelFileError(f"{source}: no VAE encoder weights found; pick an SD VAE file (e.g. "
                             "vae-ft-mse-840000-ema-pruned.safetensors) or the sd-vae-ft-mse folder")
    return tensors


def config_from_shapes(shapes: Mapping[str, tuple[int, ...]], source: str = "VAE file") -> dict:
    """AutoencoderKL configuration of a diffusers-named state dict, SD VAE constants for the rest."""
    for key in ("encoder.conv_in.weight", "decoder.conv_out.weight", "decoder.conv_in.weight",
                "encoder.down_blocks.0.resnets.0.conv2.weight"):
        if key not in shapes:
            raise ModelFileError(f"{source}: VAE tensor '{key}' is missing; the file is incomplete or not an SD VAE")
    levels = sorted({int(n.split(".")[2]) for n in shapes if n.startswith("encoder.down_blocks.")})
    channels = [shapes[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"][0] for i in levels]
    layers = len({n.split(".")[4] for n in shapes if n.startswith("encoder.down_blocks.0.resnets.")})
    return {
        **SD_VAE_DEFAULTS,
        "in_channels": shapes["encoder.conv_in.weight"][1],
        "out_channels": shapes["decoder.conv_out.weight"][0],
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "block_out_channels": channels,
        "layers_per_block": layers,
        "latent_channels": shapes["decoder.conv_in.weight"][1],
        "use_quant_conv": "quant_conv.weight" in shapes,
        "use_post_quant_conv": "post_quant_conv.weight" in shapes,
        "mid_block_add_attention": "encoder.mid_block.attentions.0.to_q.weight" in shapes,
    }


def load_vae(path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
             config: dict | None = None) -> AutoencoderKL:
    """The SD VAE from a diffusers folder, a pretrained_models root or a single safetensors file (module docstring)."""
    weights, folder_config = _find_weights(os.fspath(path))
    state = LazyStateDict(weights)
    tensors = vae_state_dict(state, weights)
    config = config or folder_config or read_json_metadata(state, VAE_CONFIG_KEY)
    if config is None:
        config = config_from_shapes({n: tuple(t.shape) for n, t in tensors.items()}, weights)
    try:
        model = build_on_meta(lambda: AutoencoderKL.from_config(config))
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelFileError(f"{weights}: unusable VAE configuration ({exc}); download sd-vae-ft-mse again") from None
    return materialize(model, tensors.items(), dtype, device, source=weights).eval()


@torch.no_grad()
def encode_frames(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """Frames (n, 3, H, W) in [-1, 1] -> latents (n, 4, H/8, W/8): posterior mean x 0.18215.

    The official `VaeImageProcessor.preprocess` maps [0, 1] to [-1, 1] only when no value of the whole batch is
    negative; a batch already in [-1, 1] with a negative value is left as is. Reproduced (on the whole batch, as
    official): a batch of frames with no negative value is treated as [0, 1] input.
    """
    parameter = next(vae.parameters())
    pixels = pixels.to(device=parameter.device, dtype=parameter.dtype)
    if pixels.min() >= 0:
        pixels = 2.0 * pixels - 1.0
    return vae.encode(pixels).latent_dist.mean * LATENT_SCALE


@torch.no_grad()
def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Latents (b, 4, frames, h, w) -> frames (b, 3, frames, H, W) in [0, 1], float32, decoded one frame at a time."""
    parameter = next(vae.parameters())
    batches, _, frames = latents.shape[:3]
    z = (1 / LATENT_SCALE) * latents.to(device=parameter.device, dtype=parameter.dtype)
    z = z.transpose(1, 2).flatten(0, 1)
    video = torch.cat([vae.decode(z[i:i + 1]).sample for i in range(z.shape[0])])
    video = video.unflatten(0, (batches, frames)).transpose(1, 2)
    return (video / 2 + 0.5).clamp(0, 1).float()


def write_vae_safetensors(vae: AutoencoderKL, path: str | os.PathLike, dtype: torch.dtype = torch.float16) -> str:
    """Save a VAE as one diffusers-named safetensors file with its configuration in the metadata (for models/vae)."""
    from ..loading.safetensors_writer import write_safetensors

    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    entries = [(name, tuple(t.shape), dtype, (lambda t=t: t.detach().to(dtype)))
               for name, t in vae.state_dict().items()]
    write_safetensors(path, entries, {VAE_CONFIG_KEY: json.dumps(config, default=list)})
    return os.fspath(path)
