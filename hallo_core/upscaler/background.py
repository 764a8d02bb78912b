"""Background upsampling of whole frames: a super-resolution model tiled as the official `RealESRGANer`, then Lanczos.

Official (`video_sr.py` + basicsr `RealESRGANer.enhance`): RealESRGAN x2plus on the
RGB frame in [0, 1] (fp16 on CUDA), reflect-padded to even size, in 400 px tiles each read with 40 px of context and
written back without blending; clamp, round to 8 bits; if the requested scale is not the model's, `cv2.resize`
Lanczos-4 to (int(w * s), int(h * s)).

The model is any callable `upscale_fn(tiles) -> tiles` on (N, 3, h, w) float32 in [0, 1] returning (N, 3, k h, k w):
inside ComfyUI the core UPSCALE_MODEL (a spandrel descriptor) plugs in through `from_spandrel`; outside it,
`load_background_model` reads RealESRGAN_x2plus.pth with spandrel (the library ComfyUI itself uses). spandrel imports
torchvision at import time (its LaMa and RestoreFormer architectures), so where torchvision is missing (CPU-only torch
machines) it cannot load and the error names the fix: install spandrel with torchvision, or use Lanczos only.

Tiles at the same position of all frames of a batch go through the model together, one call per tile position.
`BackgroundUpscaler.lanczos()` upsamples with Lanczos alone (no model): an explicit, cheaper, softer choice.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Mapping

import torch
import torch.nn.functional as F

from ..errors import ModelFileError
from ..loading.safe_pickle import load_torch_checkpoint
from ..loading.state_dict import LazyStateDict
from .image_ops import resize_lanczos4

UpscaleFn = Callable[[torch.Tensor], torch.Tensor]
BACKGROUND_HINT = ("use RealESRGAN_x2plus.pth (official path pretrained_models/realesrgan/; ComfyUI: "
                   "models/upscale_models/)")


class BackgroundUpscaler:
    """frames (N, 3, H, W), RGB levels 0..255 -> (N, 3, h, w) at the requested size, rounded levels."""

    def __init__(self, upscale_fn: UpscaleFn | None, model_scale: int = 2, tile: int = 400, tile_pad: int = 40):
        self.upscale_fn = upscale_fn
        self.model_scale = int(model_scale)
        self.tile = int(tile)
        self.tile_pad = int(tile_pad)

    @classmethod
    def lanczos(cls) -> "BackgroundUpscaler":
        """No model: Lanczos-4 from the frame straight to the output size."""
        return cls(None)

    @classmethod
    def from_spandrel(cls, descriptor, tile: int = 400, tile_pad: int = 40) -> "BackgroundUpscaler":
        """A spandrel ImageModelDescriptor (ComfyUI's UPSCALE_MODEL), already on the frames' device."""
        parameter = next(descriptor.model.parameters())

        def upscale(tiles: torch.Tensor) -> torch.Tensor:
            return descriptor(tiles.to(parameter.dtype)).float()

        return cls(upscale, int(descriptor.scale), tile, tile_pad)

    @property
    def uses_model(self) -> bool:
        return self.upscale_fn is not None

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.upscale_fn is None:
            return resize_lanczos4(frames.float(), size).round().clamp(0, 255)
        upscaled = self._model_upscale(frames.float() / 255.0)
        upscaled = (upscaled.float().clamp(0, 1) * 255.0).round()
        if tuple(upscaled.shape[-2:]) != tuple(size):
            upscaled = resize_lanczos4(upscaled, size).round().clamp(0, 255)
        return upscaled

    def _model_upscale(self, images: torch.Tensor) -> torch.Tensor:
        # RealESRGANer.pre_process: reflect-pad to a multiple of 2 (x2 models) or 4 (x1 models)
        k = self.model_scale
        mod = {2: 2, 1: 4}.get(k)
        h, w = images.shape[-2:]
        pad_h = (mod - h % mod) % mod if mod else 0
        pad_w = (mod - w % mod) % mod if mod else 0
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h), mode="reflect")
        if self.tile <= 0:
            out = self.upscale_fn(images)
        else:
            out = self._tiled(images)
        return out[..., : h * k, : w * k]

    def _tiled(self, images: torch.Tensor) -> torch.Tensor:
        # RealESRGANer.tile_process: tiles of `tile` px read with `tile_pad` px of context, no blending
        n, c, height, width = images.shape
        k, tile, pad = self.model_scale, self.tile, self.tile_pad
        out = images.new_zeros(n, c, height * k, width * k)
        for y in range(math.ceil(height / tile)):
            for x in range(math.ceil(width / tile)):
                x0, y0 = x * tile, y * tile
                x1, y1 = min(x0 + tile, width), min(y0 + tile, height)
                px0, py0 = max(x0 - pad, 0), max(y0 - pad, 0)
                px1, py1 = min(x1 + pad, width), min(y1 + pad, height)
                result = self.upscale_fn(images[:, :, py0:py1, px0:px1])
                oy, ox = (y0 - py0) * k, (x0 - px0) * k
                out[:, :, y0 * k:y1 * k, x0 * k:x1 * k] = \
                    result[:, :, oy:oy + (y1 - y0) * k, ox:ox + (x1 - x0) * k]
        return out


def _state_dict(path: str) -> Mapping[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        state = LazyStateDict(path)
        return {name: state[name] for name in state}
    content = load_torch_checkpoint(path)
    for key in ("params_ema", "params"):  # RealESRGANer prefers params_ema
        if isinstance(content, Mapping) and isinstance(content.get(key), Mapping):
            return content[key]
    if not isinstance(content, Mapping):
        raise ModelFileError(f"{path}: the checkpoint holds no state dict; {BACKGROUND_HINT}")
    return content


def load_background_model(path: str | os.PathLike, device: torch.device | str = "cpu",
                          dtype: torch.dtype | None = None, tile: int = 400, tile_pad: int = 40) -> BackgroundUpscaler:
    """RealESRGAN (or any spandrel-supported single-image SR model) from a file, read by the safe unpickler.

    dtype None: float16 on CUDA (as official), float32 elsewhere.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"background upscaler not found: {path}; {BACKGROUND_HINT}")
    try:
        import spandrel
    except Exception as exc:  # ImportError, or torchvision's own errors on CPU-only torch
        raise ModelFileError(
            f"cannot load {path}: spandrel does not import here ({type(exc).__name__}: {exc}); install spandrel "
            "with a torchvision matching your torch, or use the Lanczos-only background") from None
    state = _state_dict(path)
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(dict(state))
    except Exception as exc:  # spandrel raises UnsupportedModelError and friends
        raise ModelFileError(f"{path}: not a super-resolution model spandrel knows ({exc}); {BACKGROUND_HINT}") \
            from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise ModelFileError(f"{path}: not a single-image super-resolution model; {BACKGROUND_HINT}")
    if dtype is None:
        dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    descriptor.to(device)
    descriptor.eval()
    descriptor.model.to(dtype)
    return BackgroundUpscaler.from_spandrel(descriptor, tile, tile_pad)
