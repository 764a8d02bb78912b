"""ComfyUI model folders for the pack, and resolving a workflow's file names inside them (never outside).

Registered keys (added to, never replacing, what ComfyUI or `extra_model_paths.yaml` already set):
  hallo3            official `pretrained_models/` folders (default models/hallo3/; add yours in extra_model_paths.yaml)
  insightface       InsightFace packs: models/insightface/models/antelopev2/
  audio_separator   Kim_Vocal_2.onnx
Core keys used as they are: diffusion_models, vae, text_encoders, audio_encoders, upscale_models.
"""

from __future__ import annotations

import os

import folder_paths

from ..hallo_core.errors import ModelFileError

OFFICIAL = "(official pretrained_models)"
NONE = "none"

_REGISTERED = {
    "hallo3": {"", ".pt", ".json"},
    "insightface": {".onnx"},
    "audio_separator": {".onnx"},
}


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


def official_roots() -> list[str]:
    """Names of official `pretrained_models` folders: registered `hallo3` folders (or their subfolders)."""
    names = []
    for base in _bases("hallo3"):
        if os.path.isfile(os.path.join(base, "hallo3", "latest")):
            names.append(os.path.basename(os.path.normpath(base)))
        for entry in sorted(os.listdir(base)):
            if os.path.isfile(os.path.join(base, entry, "hallo3", "latest")):
                names.append(entry)
    return sorted(set(names))


def resolve_official_root(name: str) -> str:
    for base in _bases("hallo3"):
        if os.path.basename(os.path.normpath(base)) == name and os.path.isfile(os.path.join(base, "hallo3", "latest")):
            return base
        candidate = _inside(base, name)
        if candidate and os.path.isfile(os.path.join(candidate, "hallo3", "latest")):
            return candidate
    raise ModelFileError(f"no official pretrained_models folder named '{name}' in the 'hallo3' model folders; "
                         "put the official download in ComfyUI/models/hallo3/ or list it in extra_model_paths.yaml")


def files(key: str, contains: tuple[str, ...] = (), suffixes: tuple[str, ...] = ()) -> list[str]:
    """Model files under `key`, optionally filtered by name fragments and suffixes."""
    try:
        names = folder_paths.get_filename_list(key)
    except KeyError:
        return []
    return [n for n in names if (not contains or any(c in n.lower() for c in contains))
            and (not suffixes or n.lower().endswith(suffixes))]


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
