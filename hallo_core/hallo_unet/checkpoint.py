"""Hallo / Hallo2 checkpoints: the official `net.pth` and our safetensors layout, loaded strictly.

Official: `pretrained_models/hallo/net.pth` (Hallo) and `pretrained_models/hallo2/net.pth` (Hallo2), a pickled
`OrderedDict` of fp16 tensors (HalfStorage) holding five networks: `reference_unet.` (ReferenceNet), `denoising_unet.`
(UNet3D incl. motion and audio modules, and the motion modules' position tables), `face_locator.`, `imageproj.`,
`audioproj.` (2656 tensors at full size). The official loader is strict, and so is this one: every tensor must be
used with the right shape and none may be missing. The pickle is read by the restricted unpickler
(`loading.safe_pickle`): a file that would run code is refused and nothing in it is executed.

Ours (written by `convert_unet`, for ComfyUI's `models/diffusion_models/`): one safetensors file with the same
official names, the configuration and format in its metadata (`hallo_unet.format`, `hallo_unet.config`).

A `vae.` prefix (a diffusers AutoencoderKL carried in the same file, as in the golden test files) is allowed and
left to `vae.load_vae`.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from diffusers import AutoencoderKL
from torch import nn

from ..errors import ModelFileError
from ..loading.state_dict import LazyStateDict, build_on_meta, materialize, read_json_metadata
from ..memory.weight_casting import enable_weight_casting
from .config import PREFIXES, HalloUNetConfig
from .denoiser import HalloDenoiser
from .projections import AudioProjection, FaceLocator, ImageProjection
from .reference_net import ReferenceNet

FORMAT_KEY = "hallo_unet.format"
CONFIG_KEY = "hallo_unet.config"
VERSION_KEY = "hallo_unet.version"
FORMAT = "hallo-unet-net"
VERSIONS = ("hallo2", "hallo")
CARRIED_PREFIXES = ("vae.",)
DOWNLOAD_HINT = ("hf download fudan-generative-ai/hallo2 --local-dir pretrained_models (or fudan-generative-ai/hallo "
                 "for Hallo)")

NETWORKS: dict[str, Callable[[HalloUNetConfig], nn.Module]] = {
    "reference_unet.": ReferenceNet,
    "denoising_unet.": HalloDenoiser,
    "face_locator.": FaceLocator,
    "imageproj.": ImageProjection,
    "audioproj.": AudioProjection,
}


def find_net_file(path: str | os.PathLike, version: str | None = None) -> str:
    """A net.pth / converted file, a `hallo2/` or `hallo/` folder, or `pretrained_models/` -> the weights file."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    if os.path.isfile(os.path.join(path, "net.pth")):
        return os.path.join(path, "net.pth")
    if version is not None and version not in VERSIONS:
        raise ModelFileError(f"unknown Hallo version '{version}'; choose hallo or hallo2")
    found = [v for v in VERSIONS if os.path.isfile(os.path.join(path, v, "net.pth"))]
    if version is not None:
        if version not in found:
            raise ModelFileError(f"no {version}/net.pth in {path}; {DOWNLOAD_HINT}")
        found = [version]
    if len(found) == 1:
        return os.path.join(path, found[0], "net.pth")
    if found:
        raise ModelFileError(f"{path} holds both hallo/net.pth and hallo2/net.pth; say which one to use")
    raise ModelFileError(f"no Hallo UNet weights at {path}: expected net.pth, hallo2/net.pth or hallo/net.pth; "
                         f"{DOWNLOAD_HINT}")


def _version_of(file: str) -> str:
    parent = os.path.basename(os.path.dirname(os.path.abspath(file)))
    return parent if parent in VERSIONS else "unknown"


class UNetWeights:
    """The five networks' tensors of one file, under the official names, with the configuration."""

    def __init__(self, path: str | os.PathLike, version: str | None = None):
        self.source = find_net_file(path, version)
        self.state = LazyStateDict(self.source)
        fmt = self.state.metadata.get(FORMAT_KEY)
        if fmt is not None and fmt != FORMAT:
            raise ModelFileError(f"{self.source} holds a {fmt} file, not Hallo UNet weights; pick the hallo_unet file")
        self.version = self.state.metadata.get(VERSION_KEY) or _version_of(self.source)
        if not any(name.startswith(PREFIXES) for name in self.state):
            raise ModelFileError(self._not_a_net_message())
        for name in self.state:
            if not name.startswith(PREFIXES + CARRIED_PREFIXES):
                raise ModelFileError(f"{self.source}: unexpected weight '{name}'; not the official hallo/hallo2 "
                                     f"net.pth (or a file converted from it); {DOWNLOAD_HINT}")

    def _not_a_net_message(self) -> str:
        if self.source.endswith((".pt", ".pth", ".ckpt")):
            from ..loading.safe_pickle import load_torch_checkpoint

            content = load_torch_checkpoint(self.source)
            module = content.get("module") if isinstance(content, dict) else None
            if isinstance(module, dict) and any(str(k).startswith("model.diffusion_model.") for k in module):
                return (f"{self.source} is a Hallo3 checkpoint, not the Hallo/Hallo2 net.pth; load it as Hallo3, or "
                        f"point at pretrained_models/hallo2/net.pth")
        return (f"{self.source}: no reference_unet/denoising_unet weights; not the official hallo/hallo2 net.pth; "
                f"{DOWNLOAD_HINT}")

    @functools.cache
    def config(self) -> HalloUNetConfig:
        stored = read_json_metadata(self.state, CONFIG_KEY)
        if isinstance(stored, dict):
            return HalloUNetConfig.from_json(json.dumps(stored))
        return HalloUNetConfig.from_shapes({name: self.state.shape(name) for name in self.state})

    def items(self, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.state:
            if name.startswith(prefix):
                yield name[len(prefix):], self.state[name]

    def carries(self, prefix: str) -> bool:
        return any(name.startswith(prefix) for name in self.state)


def fp8_storage(compute_dtype: torch.dtype) -> Callable[[str, tuple[int, ...]], torch.dtype]:
    """Storage policy with fp8: the linear layers' matrices of the two UNets in float8_e4m3fn (upcast per layer at
    compute time), everything else (convolutions, norms, biases, position tables, projections) in `compute_dtype`."""

    def dtype_for(name: str, shape: tuple[int, ...]) -> torch.dtype:
        is_matrix = name.endswith(".weight") and len(shape) == 2
        return torch.float8_e4m3fn if is_matrix and name.startswith(PREFIXES[:2]) else compute_dtype

    return dtype_for


@dataclass
class UNetNetworks:
    """The five networks of net.pth, loaded, in eval mode (the denoiser's train-mode path is its only path)."""

    config: HalloUNetConfig
    reference_net: ReferenceNet
    denoiser: HalloDenoiser
    face_locator: FaceLocator
    image_proj: ImageProjection
    audio_proj: AudioProjection
    version: str
    source: str
    carries_vae: bool  # the file also holds a `vae.` AutoencoderKL


def load_network(weights: UNetWeights, prefix: str, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", fp8: bool = False, casting: bool = True) -> nn.Module:
    """One of the five networks (`prefix`, e.g. "denoising_unet."), strictly, cast to `dtype` on `device`; with
    `fp8` its linear matrices are stored in float8_e4m3fn and upcast per layer by our casting layers (`casting`;
    ComfyUI casts with its own)."""
    config = weights.config()
    policy = fp8_storage(dtype) if fp8 else None
    model = build_on_meta(lambda: NETWORKS[prefix](config))
    dtype_for = (lambda name, shape: policy(prefix + name, shape)) if policy else None
    materialize(model, weights.items(prefix), dtype, device, source=f"{weights.source} [{prefix[:-1]}]",
                dtype_for=dtype_for)
    if fp8 and casting:
        enable_weight_casting(model)
    return model.eval()


def load_networks(path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                  version: str | None = None, fp8: bool = False) -> UNetNetworks:
    """Load every network of an official net.pth or a converted file (strict), cast to `dtype` on `device`."""
    weights = UNetWeights(path, version)
    loaded = {prefix: load_network(weights, prefix, dtype, device, fp8) for prefix in NETWORKS}
    return UNetNetworks(config=weights.config(), reference_net=loaded["reference_unet."],
                        denoiser=loaded["denoising_unet."], face_locator=loaded["face_locator."],
                        image_proj=loaded["imageproj."], audio_proj=loaded["audioproj."], version=weights.version,
                        source=weights.source, carries_vae=weights.carries("vae."))


@dataclass
class UNetModels:
    """Everything one Hallo / Hallo2 clip needs: the five networks and the VAE."""

    networks: UNetNetworks
    vae: AutoencoderKL

    @property
    def dtype(self) -> torch.dtype:
        return self.networks.denoiser.dtype

    @property
    def device(self) -> torch.device:
        return self.networks.denoiser.conv_in.weight.device


def load_unet_models(unet: str | os.PathLike, vae: str | os.PathLike | None = None,
                     dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                     version: str | None = None, fp8: bool = False) -> UNetModels:
    """The networks from `unet` (pretrained_models/, hallo2/, net.pth or a converted file) and the VAE from `vae`
    (default: `sd-vae-ft-mse` beside the official folder, or a `vae.` set carried in the same file)."""
    from .vae import load_vae

    networks = load_networks(unet, dtype, device, version, fp8)
    if vae is None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(networks.source)))
        if networks.carries_vae:
            vae = networks.source
        elif os.path.isdir(os.path.join(root, "sd-vae-ft-mse")):
            vae = os.path.join(root, "sd-vae-ft-mse")
        else:
            raise ModelFileError(f"no VAE found beside {networks.source}; pass the sd-vae-ft-mse folder or a VAE "
                                 "safetensors file (e.g. vae-ft-mse-840000-ema-pruned.safetensors)")
    return UNetModels(networks=networks, vae=load_vae(vae, dtype=dtype, device=device))
