"""Loading and writing CogVideoX VAE checkpoints.

Sources `load_vae` reads, all into diffusers' `AutoencoderKLCogVideoX`:

* the official SAT file `cogvideox-5b-i2v-sat/vae/3d-vae.pt` (`{"state_dict": {"encoder.down.0.block.0...": ...}}`),
  read only through the restricted unpickler (loading/state_dict.py); a `module` dict and the Hallo3 container, whose VAE keys
  carry a `first_stage_model.` prefix, are accepted too;
* a diffusers folder (`vae/config.json` + `diffusion_pytorch_model.safetensors`);
* a single `.safetensors` file with diffusers key names (what ComfyUI users keep in `models/vae`, and what
  `write_vae_safetensors` writes, with the config in its metadata), or with SAT key names.

The configuration is inferred from the weights' shapes (block channels, layers per block, latent channels, number
of levels), so the tiny test VAE and the full one take the same path. What leaves no trace in the weights (temporal
compression 4, 32 GroupNorm groups, eps 1e-6: constants in the official code) comes from the config when there is
one. Loading is strict: every weight is used and none is missing, except the official `loss.*` entries (training
discriminator, dropped by the official loader's `ignore_keys`).

The SAT -> diffusers renaming is the one of diffusers' `scripts/convert_cogvideox_to_diffusers.py`, written here as
an invertible function because `convert` and the tiny-model writer need both directions.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Mapping

import torch
from diffusers import AutoencoderKLCogVideoX

from ..errors import InputError, ModelFileError
from ..loading.state_dict import LazyStateDict, open_diffusers_weights
from .vae import LATENT_SCALE, CogVideoXVAE

OFFICIAL_VAE_PATH = "cogvideox-5b-i2v-sat/vae/3d-vae.pt"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
# Prefixes under which VAE weights arrive inside bigger checkpoints (the SAT engine, a pipeline-style file).
CONTAINER_PREFIXES = ("first_stage_model.", "vae.")
# The official loader drops these (`ignore_keys: ['loss']` in cogvideox_5b_i2v_s2.yaml).
IGNORED_PREFIXES = ("loss.",)
# Configuration the weights cannot tell: the official constants (cp_enc_dec.py: temporal_compress_times=4,
# GroupNorm(32, eps=1e-6)) and the tiling defaults of the 480x720 model.
TRACELESS_DEFAULTS = {
    "temporal_compression_ratio": 4,
    "norm_num_groups": 32,
    "norm_eps": 1e-6,
    "act_fn": "silu",
    "sample_height": 480,
    "sample_width": 720,
}
TINY_BLOCK_OUT_CHANNELS = (8, 8, 8, 16)  # 4 levels give 8x spatially; narrow levels keep CPU smoke renders fast
TINY_LAYERS_PER_BLOCK = 1


# --------------------------------------------------------------------------------------------------------------------
# SAT <-> diffusers key names

_SAT_RULES = (
    # (SAT pattern, diffusers template); {i} is the level index, {r} the decoder's reversed level index
    (re.compile(r"^(encoder|decoder)\.mid\.block_([12])\.(.+)$"), "mid"),
    (re.compile(r"^encoder\.down\.(\d+)\.block\.(\d+)\.(.+)$"), "down_resnet"),
    (re.compile(r"^encoder\.down\.(\d+)\.downsample\.(.+)$"), "down_sampler"),
    (re.compile(r"^decoder\.up\.(\d+)\.block\.(\d+)\.(.+)$"), "up_resnet"),
    (re.compile(r"^decoder\.up\.(\d+)\.upsample\.(.+)$"), "up_sampler"),
)
_DIFFUSERS_RULES = (
    (re.compile(r"^(encoder|decoder)\.mid_block\.resnets\.([01])\.(.+)$"), "mid"),
    (re.compile(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$"), "down_resnet"),
    (re.compile(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)$"), "down_sampler"),
    (re.compile(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$"), "up_resnet"),
    (re.compile(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)$"), "up_sampler"),
)


def sat_to_diffusers_key(key: str, num_levels: int) -> str:
    """Diffusers name of an official (SAT) VAE weight; the decoder's levels are numbered the other way round."""
    for pattern, kind in _SAT_RULES:
        m = pattern.match(key)
        if not m:
            continue
        if kind == "mid":
            return f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}.{_resnet_tail(m[3], to_sat=False)}"
        if kind == "down_resnet":
            return f"encoder.down_blocks.{m[1]}.resnets.{m[2]}.{_resnet_tail(m[3], to_sat=False)}"
        if kind == "down_sampler":
            return f"encoder.down_blocks.{m[1]}.downsamplers.0.{m[2]}"
        level = num_levels - 1 - int(m[1])
        if kind == "up_resnet":
            return f"decoder.up_blocks.{level}.resnets.{m[2]}.{_resnet_tail(m[3], to_sat=False)}"
        return f"decoder.up_blocks.{level}.upsamplers.0.{m[2]}"
    return key


def diffusers_to_sat_key(key: str, num_levels: int) -> str:
    """Official (SAT) name of a diffusers VAE weight; inverse of `sat_to_diffusers_key`."""
    for pattern, kind in _DIFFUSERS_RULES:
        m = pattern.match(key)
        if not m:
            continue
        if kind == "mid":
            return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_resnet_tail(m[3], to_sat=True)}"
        if kind == "down_resnet":
            return f"encoder.down.{m[1]}.block.{m[2]}.{_resnet_tail(m[3], to_sat=True)}"
        if kind == "down_sampler":
            return f"encoder.down.{m[1]}.downsample.{m[2]}"
        level = num_levels - 1 - int(m[1])
        if kind == "up_resnet":
            return f"decoder.up.{level}.block.{m[2]}.{_resnet_tail(m[3], to_sat=True)}"
        return f"decoder.up.{level}.upsample.{m[2]}"
    return key


def _resnet_tail(tail: str, to_sat: bool) -> str:
    # The 1x1x1 channel-changing shortcut: SAT `nin_shortcut`, diffusers `conv_shortcut`.
    old, new = ("conv_shortcut.", "nin_shortcut.") if to_sat else ("nin_shortcut.", "conv_shortcut.")
    return new + tail[len(old):] if tail.startswith(old) else tail


def _is_sat_naming(keys) -> bool:
    return any(re.match(r"^(encoder\.down\.\d|decoder\.up\.\d|(en|de)coder\.mid\.block_)", k) for k in keys)


def _num_levels(keys, sat: bool) -> int:
    pattern = re.compile(r"^encoder\.down\.(\d+)\." if sat else r"^encoder\.down_blocks\.(\d+)\.")
    levels = {int(m[1]) for k in keys if (m := pattern.match(k))}
    return max(levels) + 1 if levels else 0


# --------------------------------------------------------------------------------------------------------------------
# configuration from shapes

def infer_vae_config(shapes: Mapping[str, tuple], traceless: Mapping | None = None) -> dict:
    """`AutoencoderKLCogVideoX` config for weights with these diffusers names and shapes.

    Raises `KeyError` naming the first weight a CogVideoX VAE must have and these lack.
    """
    def shape(name):
        if name not in shapes:
            raise KeyError(name)
        return tuple(shapes[name])

    conv_in = shape("encoder.conv_in.conv.weight")
    latent = shape("decoder.conv_in.conv.weight")
    conv_out = shape("decoder.conv_out.conv.weight")
    num_levels = _num_levels(shapes, sat=False)
    channels = [shape(f"encoder.down_blocks.{i}.resnets.0.conv1.conv.weight")[0] for i in range(max(num_levels, 1))]
    layers = sum(1 for k in shapes if re.match(r"^encoder\.down_blocks\.0\.resnets\.\d+\.conv1\.conv\.weight$", k))
    config = dict(TRACELESS_DEFAULTS)
    # GroupNorm needs channels divisible by its groups: 32 for the real VAE (128..512 channels); a tiny test VAE with
    # fewer channels uses as many groups as its narrowest level has channels.
    config["norm_num_groups"] = min(config["norm_num_groups"], *(int(c) for c in channels))
    config.update({k: v for k, v in (traceless or {}).items() if k in TRACELESS_DEFAULTS})
    config.update(
        in_channels=conv_in[1],
        out_channels=conv_out[0],
        down_block_types=("CogVideoXDownBlock3D",) * num_levels,
        up_block_types=("CogVideoXUpBlock3D",) * num_levels,
        block_out_channels=tuple(int(c) for c in channels),
        latent_channels=latent[1],
        layers_per_block=layers,
        scaling_factor=LATENT_SCALE,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    return config


# --------------------------------------------------------------------------------------------------------------------
# reading

class _VaeWeights:
    """The VAE weights of one file: diffusers names -> shapes, a reader per tensor, and any stored config."""

    def __init__(self, path: str, shapes: dict, readers: dict, stored_names: dict, traceless: dict, sat: bool,
                 prefix: str):
        self.path, self.shapes, self.readers = path, shapes, readers
        self.stored_names = stored_names  # diffusers name -> the name in the file, for messages
        self.traceless = traceless
        self.sat, self.prefix = sat, prefix  # how the file spells names


def resolve_vae_path(path: str | os.PathLike) -> str:
    """The VAE file or diffusers folder that `path` (a file, a `vae` folder or a folder above it) points at."""
    path = Path(path)
    if path.is_file():
        return str(path)
    if path.is_dir():
        for candidate in (path, path / "vae"):
            if (candidate / "config.json").is_file():
                return str(candidate)
        for candidate in (path / "3d-vae.pt", path / "vae" / "3d-vae.pt", path / OFFICIAL_VAE_PATH):
            if candidate.is_file():
                return str(candidate)
        raise ModelFileError(
            f"{path}: no CogVideoX VAE here; expected {OFFICIAL_VAE_PATH}, a diffusers vae/ folder "
            "or a .safetensors file"
        )
    raise ModelFileError(
        f"VAE not found: {path}; download {OFFICIAL_VAE_PATH} (hf download fudan-generative-ai/hallo3) "
        "or put a CogVideoX VAE .safetensors in models/vae"
    )


def _read_vae_weights(path: str) -> _VaeWeights:
    if os.path.isdir(path):
        return _read_diffusers_folder(path)
    suffix = Path(path).suffix.lower()
    if suffix == ".safetensors":
        state = LazyStateDict(path)
        return _select_vae(path, state, _config_from_metadata(path, state.metadata))
    if suffix in PICKLE_SUFFIXES:
        state = LazyStateDict(path, subtree=("state_dict", "module", "model"))
        if not len(state):
            raise ModelFileError(f"{path}: not a state dict; expected the official {OFFICIAL_VAE_PATH}")
        return _select_vae(path, state, {})
    raise ModelFileError(f"{path}: unsupported VAE file type {suffix!r}; use the official .pt or a .safetensors file")


def _read_diffusers_folder(folder: str) -> _VaeWeights:
    config_path = os.path.join(folder, "config.json")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{config_path}: unreadable VAE config ({exc}); download it again") from None
    class_name = config.get("_class_name", "AutoencoderKLCogVideoX")
    if class_name != "AutoencoderKLCogVideoX":
        raise ModelFileError(f"{folder}: holds a {class_name}, not a CogVideoX VAE (AutoencoderKLCogVideoX)")
    return _select_vae(folder, open_diffusers_weights(folder), config)


def _config_from_metadata(path: str, metadata: Mapping) -> dict:
    if "config" not in metadata:
        return {}
    try:
        return dict(json.loads(metadata["config"]))
    except (ValueError, TypeError):
        raise ModelFileError(f"{path}: damaged config in the safetensors metadata; convert the VAE again") from None


def _select_vae(path: str, tensors: Mapping, traceless: dict) -> _VaeWeights:
    """Pick the VAE weights out of `tensors` (a lazy state dict, or name -> tensor) and name them as diffusers
    does."""
    names = list(tensors)
    for prefix in CONTAINER_PREFIXES:
        inside = [n for n in names if n.startswith(prefix)]
        if inside and any(n[len(prefix):].startswith("encoder.") for n in inside):
            names = inside  # a bigger checkpoint: take its VAE part, ignore the rest
            break
    else:
        prefix = ""
    names = [n for n in names if not n[len(prefix):].startswith(IGNORED_PREFIXES)]
    local = [n[len(prefix):] for n in names]
    if not any(n.startswith("encoder.conv_in.") for n in local):
        raise ModelFileError(
            f"{path}: does not hold a CogVideoX VAE (no encoder.conv_in weights); expected {OFFICIAL_VAE_PATH} "
            "or an AutoencoderKLCogVideoX .safetensors"
        )
    sat = _is_sat_naming(local)
    levels = _num_levels(local, sat=sat)
    shapes, readers, stored = {}, {}, {}
    for name, key in zip(names, local):
        new = sat_to_diffusers_key(key, levels) if sat else key
        if new in stored:
            raise ModelFileError(f"{path}: holds {stored[new]} and {name}, the same VAE weight twice; convert it again")
        shapes[new] = tensors.shape(name) if hasattr(tensors, "shape") else tuple(tensors[name].shape)
        readers[new] = functools.partial(tensors.__getitem__, name)
        stored[new] = name
    return _VaeWeights(path, shapes, readers, stored, traceless, sat, prefix)


# --------------------------------------------------------------------------------------------------------------------
# loading

def load_vae_model(
    path: str | os.PathLike, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu"
) -> AutoencoderKLCogVideoX:
    """The diffusers `AutoencoderKLCogVideoX` in `dtype` on `device`, from any source this module reads.

    The model is built on the meta device and each weight is converted and placed as it is read, so the weights
    exist once. Raises `ModelFileError` (one line, naming the file) for anything wrong with the file.
    """
    path = resolve_vae_path(path)
    weights = _read_vae_weights(path)
    try:
        config = infer_vae_config(weights.shapes, weights.traceless)
    except KeyError as exc:
        missing = _as_stored([exc.args[0]], weights)
        raise ModelFileError(f"{path}: incomplete CogVideoX VAE ({missing} missing); download it again") from None
    with torch.device("meta"):
        model = AutoencoderKLCogVideoX(**config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    _check_complete(path, weights, expected)

    state = {}
    for name in expected:
        try:
            tensor = weights.readers.pop(name)()
        except Exception as exc:  # safetensors / mmap read errors of a damaged file
            raise ModelFileError(
                f"{path}: cannot read {weights.stored_names[name]} ({exc}); download it again"
            ) from None
        # A copy in the target dtype: the model owns its memory, never a view of the mapped file.
        state[name] = tensor.to(device=device, dtype=dtype, copy=True).contiguous()
    model.load_state_dict(state, strict=True, assign=True)
    del state
    model.eval().requires_grad_(False)
    left_on_meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left_on_meta:  # a diffusers change added state the checkpoint cannot fill
        raise RuntimeError(f"AutoencoderKLCogVideoX state not filled by the checkpoint: {left_on_meta[:3]}")
    return model


def load_vae(
    path: str | os.PathLike,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    tiling: bool = False,
) -> CogVideoXVAE:
    """Hallo3's VAE (0.7 latent scale, official encode and chunked decode) from any source this module reads."""
    return CogVideoXVAE(load_vae_model(path, dtype=dtype, device=device), tiling=tiling)


def _check_complete(path: str, weights: _VaeWeights, expected: Mapping[str, tuple]) -> None:
    def stored(names):
        return ", ".join(weights.stored_names.get(n, n) for n in sorted(names)[:3])

    missing = [n for n in expected if n not in weights.shapes]
    unexpected = [n for n in weights.shapes if n not in expected]
    wrong = [n for n in expected if n in weights.shapes and weights.shapes[n] != expected[n]]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} weights missing (e.g. {_as_stored(missing, weights)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unknown weights (e.g. {stored(unexpected)})")
        raise ModelFileError(f"{path}: not a complete CogVideoX VAE: {'; '.join(parts)}; download it again")
    if wrong:
        n = wrong[0]
        raise ModelFileError(
            f"{path}: {weights.stored_names[n]} has shape {list(weights.shapes[n])}, the VAE its other weights "
            f"describe needs {list(expected[n])}; the file is damaged or not a CogVideoX VAE"
        )


def _as_stored(names, weights: _VaeWeights) -> str:
    """Missing names as the file would spell them (SAT names for a SAT file, with its container prefix)."""
    levels = _num_levels(weights.shapes, sat=False)
    shown = [diffusers_to_sat_key(n, levels) if weights.sat else n for n in sorted(names)[:3]]
    return ", ".join(weights.prefix + s for s in shown)


# --------------------------------------------------------------------------------------------------------------------
# writing

_WRITABLE_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def write_vae_safetensors(
    model_or_state: CogVideoXVAE | AutoencoderKLCogVideoX | Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    dtype: torch.dtype = torch.bfloat16,
) -> None:
    """Write the VAE as one safetensors file with diffusers key names and the config in the metadata.

    A state dict may use diffusers or SAT names. The VAE stays in bf16, fp16 or fp32 (fp8 would cost quality for
    no real memory gain: it is 0.2 B parameters).
    """
    from safetensors.torch import save_file

    if dtype not in _WRITABLE_DTYPES:
        raise InputError(f"the VAE is written in bf16, fp16 or fp32, not {dtype}")
    if isinstance(model_or_state, CogVideoXVAE):
        model_or_state = model_or_state.model
    if isinstance(model_or_state, AutoencoderKLCogVideoX):
        state = model_or_state.state_dict()
        config = {k: v for k, v in dict(model_or_state.config).items() if not k.startswith("_")}
    else:
        state = dict(model_or_state)
        if _is_sat_naming(state):
            levels = _num_levels(state, sat=True)
            state = {sat_to_diffusers_key(k, levels): v for k, v in state.items()}
        config = infer_vae_config({k: tuple(v.shape) for k, v in state.items()})
    config["_class_name"] = "AutoencoderKLCogVideoX"
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in state.items()}
    metadata = {"format": "pt", "config": json.dumps(config, sort_keys=True), "dtype": _WRITABLE_DTYPES[dtype]}
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = path + ".partial"
    save_file(tensors, partial, metadata=metadata)
    os.replace(partial, path)


def tiny_sat_vae_state(
    seed: int = 0,
    block_out_channels: tuple = TINY_BLOCK_OUT_CHANNELS,
    layers_per_block: int = TINY_LAYERS_PER_BLOCK,
) -> dict[str, torch.Tensor]:
    """Random weights, with SAT names, for a VAE that compresses 8x spatially and 4x in time into 16 channels.

    Convolutions are scaled by 1/sqrt(fan_in) so activations stay near unit size through the levels; values are
    rounded to float16 so a float16 copy holds them exactly.
    """
    config = dict(TRACELESS_DEFAULTS, norm_num_groups=min(TRACELESS_DEFAULTS["norm_num_groups"], *block_out_channels),
                  block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                  latent_channels=16, down_block_types=("CogVideoXDownBlock3D",) * len(block_out_channels),
                  up_block_types=("CogVideoXUpBlock3D",) * len(block_out_channels))
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in AutoencoderKLCogVideoX(**config).state_dict().items()}
    levels = len(block_out_channels)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name in sorted(shapes):
        shape = shapes[name]
        noise = torch.randn(shape, generator=generator)
        if len(shape) > 1:
            value = noise / (torch.tensor(shape[1:]).prod().float().sqrt())
        elif name.endswith("weight"):  # a norm's scale
            value = 1.0 + 0.1 * noise
        else:
            value = 0.05 * noise
        state[diffusers_to_sat_key(name, levels)] = value.to(torch.float16).to(torch.float32)
    return state


def write_tiny_sat_vae(path: str | os.PathLike, seed: int = 0) -> None:
    """Write a tiny random VAE in the layout of the official `3d-vae.pt`: `torch.save({"state_dict": {...}})`.

    Any 8x-divisible frame size works, e.g. 49 frames of 64x96 pixels encode to 13 latent frames of 8x12.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = path + ".partial"
    torch.save({"state_dict": tiny_sat_vae_state(seed)}, partial)
    os.replace(partial, path)

