"""Which backbone a models folder holds, and building it with its models under the memory preset (outside ComfyUI).

The official downloads each have their own `pretrained_models/` layout: Hallo3 `hallo3/latest`, Hallo `hallo/net.pth`,
Hallo2 `hallo2/net.pth`. `detect_backbone` reads the folder; a folder holding the weights of two backbones is refused
unless `--backbone` picks one. `load_backbone` gives a ready `Backbone` whose models load lazily, each when its phase
first needs it.
"""

from __future__ import annotations

import os

from .errors import ModelFileError
from .render.backbone import Backbone
from .runtime.options import EngineOptions

BACKBONES = ("hallo3", "hallo", "hallo2")
MARKERS = {"hallo3": "hallo3/latest", "hallo": "hallo/net.pth", "hallo2": "hallo2/net.pth"}
DOWNLOADS = {
    "hallo3": "hf download fudan-generative-ai/hallo3 --local-dir pretrained_models",
    "hallo": "hf download fudan-generative-ai/hallo --local-dir pretrained_models",
    "hallo2": "hf download fudan-generative-ai/hallo2 --local-dir pretrained_models",
}


def backbones_in(models_dir: str | os.PathLike) -> list[str]:
    root = os.fspath(models_dir)
    return [name for name in BACKBONES if os.path.isfile(os.path.join(root, MARKERS[name]))]


def detect_backbone(models_dir: str | os.PathLike, requested: str | None = None) -> str:
    """The backbone to render with from this models folder (`requested` picks one when several are present)."""
    root = os.fspath(models_dir)
    if not os.path.isdir(root):
        raise ModelFileError(f"models folder not found: {root} (download with: {DOWNLOADS['hallo3']})")
    found = backbones_in(root)
    if requested is not None:
        if requested not in BACKBONES:
            raise ModelFileError(f"unknown backbone '{requested}'; choose one of {', '.join(BACKBONES)}")
        if requested not in found:
            raise ModelFileError(f"{root} has no {requested} weights ({MARKERS[requested]}); download them with: "
                                 f"{DOWNLOADS[requested]}")
        return requested
    if not found:
        raise ModelFileError(f"{root} holds no Hallo weights (expected {', '.join(MARKERS.values())}); download "
                             f"them, e.g. {DOWNLOADS['hallo3']}")
    if len(found) > 1:
        raise ModelFileError(f"{root} holds the weights of {' and '.join(found)}; pick one with --backbone "
                             f"{'|'.join(found)}")
    return found[0]


def load_backbone(models_dir: str | os.PathLike, options: EngineOptions, backbone: str | None = None,
                  require_vocal_separator: bool = False, frame_size: int | None = None) -> Backbone:
    """The backbone of an official models folder, its models loaded lazily under `options`' memory preset.

    `frame_size` is the square side Hallo / Hallo2 render at (default: the official 512); Hallo3's frame size is its
    weights'."""
    name = detect_backbone(models_dir, backbone)
    if name == "hallo3":
        if frame_size is not None:
            raise ModelFileError("Hallo3 renders at the frame size of its weights (480x720); --size is a Hallo and "
                                 "Hallo2 option")
        from .hallo3.loaders import local_hallo3_backbone

        return local_hallo3_backbone(models_dir, options, require_vocal_separator)
    from .hallo_unet.loaders import local_unet_backbone

    return local_unet_backbone(models_dir, name, options, require_vocal_separator, frame_size)
