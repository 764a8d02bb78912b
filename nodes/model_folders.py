"""ComfyUI model folders for the pack, listing files by role, and resolving a workflow's names inside them (never
outside).

Registered keys (added to, never replacing, what ComfyUI or `extra_model_paths.yaml` already set):
  hallo3, hallo2, hallo   official `pretrained_models/` folders of each backbone (models/hallo3/, ...)
  insightface             InsightFace packs: models/insightface/models/antelopev2/
  audio_separator         Kim_Vocal_2.onnx
  hallo_upscaler          Hallo2's face restorer (net_g) and the face parser: a folder of their own, so ComfyUI's core
                          UpscaleModelLoader (models/upscale_models) does not offer files it cannot load
Core keys used as they are: diffusion_models, vae, text_encoders, audio_encoders, upscale_models (RealESRGAN).

Files in diffusion_models are listed by role, read from our safetensors metadata (`convert` writes it): a transformer
list never offers a reference network, and the other way round.
"""

from __future__ import annotations

import functools
import json
import os
import struct

import folder_paths

from ..hallo_core.backbones import MARKERS
from ..hallo_core.errors import ModelFileError

OFFICIAL = "(official pretrained_models)"
NONE = "none"
OFFICIAL_KEYS = ("hallo3", "hallo2", "hallo")

_REGISTERED = {
    **{key: {"", ".pt", ".pth", ".json"} for key in OFFICIAL_KEYS},
    "insightface": {".onnx"},
    "audio_separator": {".onnx"},
    "hallo_upscaler": {".pth", ".pt", ".safetensors"},
}

# Our safetensors formats (metadata written by `convert`) by the role a list offers.
ROLES = {
    "diffusion_model": {"hallo3-transformer", "hallo-unet-net"},
    "reference": {"hallo3-reference"},
}
FORMAT_KEYS = ("hallo3.format", "hallo_unet.format")


def register_folders() -> None:
    for key, extensions in _REGISTERED.items():
        default = os.path.join(folder_paths.models_dir, key)
        if key in folder_paths.folder_names_and_paths:
            paths, known = folder_paths.folder_names_and_paths[key]
            if default not in paths:
                paths.append(default)
            if isinstance(known, set):
                known.update(extensions)
        else:
            folder_paths.add_model_folder_path(key, default)
            folder_paths.folder_names_and_paths[key] = (folder_paths.folder_names_and_paths[key][0], set(extensions))


def _bases(key: str) -> list[str]:
    try:
        return [p for p in folder_paths.get_folder_paths(key) if os.path.isdir(p)]
    except KeyError:
        return []


def backbones_at(root: str) -> list[str]:
    """Backbones whose official weights an official `pretrained_models/` folder holds."""
    return [name for name, marker in MARKERS.items() if os.path.isfile(os.path.join(root, marker))]


def official_roots() -> list[str]:
    """Official `pretrained_models` folders, as "<key>/<name>": registered folders (or their subfolders) that hold
    the weights of a backbone."""
    names = set()
    for key in OFFICIAL_KEYS:
        for base in _bases(key):
            if backbones_at(base):
                names.add(f"{key}/{os.path.basename(os.path.normpath(base))}")
            for entry in sorted(os.listdir(base)):
                if os.path.isdir(os.path.join(base, entry)) and backbones_at(os.path.join(base, entry)):
                    names.add(f"{key}/{entry}")
    return sorted(names)


def resolve_official_root(choice: str) -> str:
    key, _, name = choice.partition("/")
    if key in OFFICIAL_KEYS and _safe_name(name):
        for base in _bases(key):
            if os.path.basename(os.path.normpath(base)) == name and backbones_at(base):
                return base
            candidate = _inside(base, name)
            if candidate and os.path.isdir(candidate) and backbones_at(candidate):
                return candidate
    raise ModelFileError(f"no official pretrained_models folder '{choice}'; put the official download in "
                         "ComfyUI/models/hallo3/ (or hallo2/, hallo/) or list it in extra_model_paths.yaml")


def files(key: str, contains: tuple[str, ...] = (), suffixes: tuple[str, ...] = ()) -> list[str]:
    """Model files under `key`, optionally filtered by name fragments and suffixes."""
    try:
        names = folder_paths.get_filename_list(key)
    except KeyError:
        return []
    return [n for n in names if (not contains or any(c in n.lower() for c in contains))
            and (not suffixes or n.lower().endswith(suffixes))]


def files_for_role(role: str) -> list[str]:
    """Files in diffusion_models whose format (our safetensors metadata) fits `role`."""
    wanted = ROLES[role]
    found = []
    for name in files("diffusion_models", suffixes=(".safetensors",)):
        path = folder_paths.get_full_path("diffusion_models", name)
        if path and safetensors_format(path, os.path.getmtime(path)) in wanted:
            found.append(name)
    return found


@functools.lru_cache(maxsize=4096)
def safetensors_format(path: str, mtime: float) -> str | None:
    """The format a safetensors file's metadata declares (None: not ours, or unreadable); cached per modification."""
    try:
        with open(path, "rb") as f:
            length = struct.unpack("<Q", f.read(8))[0]
            if not 2 <= length <= 100_000_000:
                return None
            metadata = json.loads(f.read(length)).get("__metadata__") or {}
    except (OSError, ValueError, struct.error):
        return None
    return next((metadata[key] for key in FORMAT_KEYS if key in metadata), None)


def folders(key: str, marker: str) -> list[str]:
    """Sub-folders (relative names) under `key` that contain `marker` (e.g. config.json of a Hugging Face model)."""
    found = set()
    for base in _bases(key):
        for root, dirs, names in os.walk(base, followlinks=True):
            if marker in names and root != base:
                found.add(os.path.relpath(root, base).replace(os.sep, "/"))
            if root.count(os.sep) - base.count(os.sep) >= 3:
                dirs[:] = []
    return sorted(found)


def resolve_file(key: str, name: str) -> str:
    path = folder_paths.get_full_path(key, name) if _safe_name(name) else None
    if path is None:
        raise ModelFileError(f"'{name}' is not in ComfyUI's '{key}' model folders; put it in ComfyUI/models/{key}/")
    return path


def resolve_folder(key: str, name: str) -> str:
    if _safe_name(name):
        for base in _bases(key):
            candidate = _inside(base, name)
            if candidate and os.path.isdir(candidate):
                return candidate
    raise ModelFileError(f"no folder '{name}' in ComfyUI's '{key}' model folders; put it in ComfyUI/models/{key}/")


def _safe_name(name: str) -> bool:
    """A relative name without traversal: workflows may only pick from the model folders."""
    if not name or os.path.isabs(name) or "\\" in name or ":" in name:
        return False
    return ".." not in name.replace("\\", "/").split("/")


def _inside(base: str, name: str) -> str | None:
    """`base/name` if it stays inside `base` textually (symlinks the user placed in the folder are followed, as
    ComfyUI itself does)."""
    if not _safe_name(name):
        return None
    base = os.path.normpath(base)
    candidate = os.path.normpath(os.path.join(base, name))
    return candidate if candidate == base or candidate.startswith(base + os.sep) else None
