"""The reference image: decoding, and the official resize to the video size (hallo3 `sample_video.py:131-186, 276-307`).

Official steps, for an image of h x w and a video of H x W (480 x 720):

1. `Image.open(path).convert("RGB")`, `ToTensor` -> (1, 3, h, w) in [0, 1]; the face-masked copy is `image * mask`
   (the 0/255 mask as 0/1), both at the original size.
2. Square input (h == w): `Resize([H, H])` (bilinear, antialias), zero-pad the width to W (left = (W - H) // 2), clamp
   to [0, 1]. The finished frames are cropped back to H x H at the end.
   Otherwise: cover-resize keeping the aspect ratio (bicubic, antialias; the side that would overshoot gets
   `int(side * scale)`), centre crop to H x W (top = dh // 2, left = dw // 2), no clamp.
3. `x * 2 - 1`: the full reference (VAE conditioning and motion frames) and the masked reference (identity network).

torchvision is not used (it does not import on CPU torch here); its tensor resize is `F.interpolate` with
`align_corners=False, antialias=True`, which is what is called below.

Decoding converts what the official `convert("RGB")` gets wrong or refuses: 16-bit images are scaled to 8 bit (PIL
would clip them), grayscale is replicated to RGB, palette/CMYK images are converted, an alpha channel is dropped (as
official), and EXIF orientation is applied (as ComfyUI's LoadImage does).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError

VIDEO_SIZE = (480, 720)  # (H, W), hard-coded in the official sample_video.py
MIN_IMAGE_SIDE = 64


@dataclass
class ReferenceImages:
    """The two references at the video size, (1, 3, H, W) float32 in [-1, 1] (bicubic may overshoot slightly).

    `output_crop` is (x0, width) of the square region to keep in every finished frame when the input was square and
    padded (the official `is_padding` crop), else None.
    """

    full: torch.Tensor
    masked: torch.Tensor
    output_crop: tuple[int, int] | None

    @property
    def is_padded_square(self) -> bool:
        return self.output_crop is not None


def load_image(source: Any, *, name: str | None = None, min_side: int = MIN_IMAGE_SIDE) -> np.ndarray:
    """Decode `source` to (h, w, 3) uint8 RGB.

    `source` is an image file path, a PIL image, a (h, w[, c]) numpy array (uint8, uint16 or float in [0, 1]), or a
    ComfyUI IMAGE tensor [1, h, w, c] / [h, w, c] float in [0, 1].
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    label = name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "reference image")
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise InputError(f"image file not found: {path}")
        try:
            with Image.open(path) as img:
                img.load()
                rgb = _pil_to_rgb(ImageOps.exif_transpose(img))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise InputError(f"{path} is not an image that can be read ({' '.join(str(exc).split())[:120]}); use a "
                             "png, jpg or webp file") from None
    elif isinstance(source, Image.Image):
        rgb = _pil_to_rgb(source)
    else:
        rgb = _array_to_rgb(source, label)
    h, w = rgb.shape[:2]
    if min(h, w) < min_side:
        raise InputError(f"{label} is {w}x{h} px, too small for a face crop; use an image at least {min_side} px on "
                         "each side (the video is 720x480)")
    return rgb


def _pil_to_rgb(img) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        gray = np.clip(np.rint(arr / peak * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode == "F":
        gray = np.clip(np.rint(np.asarray(img, dtype=np.float64) * (255.0 if np.asarray(img).max() <= 1 else 1.0)),
                       0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def _array_to_rgb(source: Any, label: str) -> np.ndarray:
    arr = source.detach().cpu().numpy() if isinstance(source, torch.Tensor) else np.asarray(source)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise InputError(f"{label} is a batch of {arr.shape[0]} images; pass one image")
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise InputError(f"{label}: array of shape {tuple(np.shape(source))} is not an image [h, w, channels]")
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.uint16:
        arr = np.rint(arr.astype(np.float64) / 65535.0 * 255.0).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InputError(f"{label} contains NaN or infinite pixels")
        arr = np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)  # ComfyUI IMAGE: uint8 / 255
    else:
        raise InputError(f"{label}: pixel type {arr.dtype} is not supported; use 8-bit, 16-bit or float images")
    channels = arr.shape[2]
    if channels in (1, 2):  # gray (+ alpha)
        arr = np.repeat(arr[..., :1], 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def to_unit_tensor(image_rgb: np.ndarray) -> torch.Tensor:
    """`ToTensor`: (h, w, 3) uint8 -> (1, 3, h, w) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image_rgb)).permute(2, 0, 1)[None].float().div(255)


def resize_square_padded(x: torch.Tensor, size: tuple[int, int] = VIDEO_SIZE) -> tuple[torch.Tensor, int]:
    """Official `resize_for_square_padding` + clamp: (1, 3, s, s) -> (1, 3, H, W); returns the left padding too."""
    height, width = size
    if width < height:
        raise ValueError(f"square padding needs a video at least as wide as high, got {size}")
    x = F.interpolate(x, size=(height, height), mode="bilinear", align_corners=False, antialias=True)
    pad_left = (width - height) // 2
    x = F.pad(x, (pad_left, width - height - pad_left, 0, 0), mode="constant", value=0)
    return x.clamp(0, 1), pad_left


def resize_cover_crop(x: torch.Tensor, size: tuple[int, int] = VIDEO_SIZE) -> torch.Tensor:
    """Official `resize_for_rectangle_crop(..., "center")`: cover-resize (bicubic, antialias), centre crop, no clamp."""
    height, width = size
    h, w = x.shape[2], x.shape[3]
    if w / h > width / height:
        new_size = (height, int(w * height / h))
    else:
        new_size = (int(h * width / w), width)
    x = F.interpolate(x, size=new_size, mode="bicubic", align_corners=False, antialias=True)
    top, left = (new_size[0] - height) // 2, (new_size[1] - width) // 2
    return x[:, :, top:top + height, left:left + width]


def reference_images(image_rgb: np.ndarray, face_mask: np.ndarray,
                     size: tuple[int, int] = VIDEO_SIZE) -> ReferenceImages:
    """The full and the face-masked reference at `size` (H, W), in [-1, 1], from an RGB image and its 0/255 mask."""
    image = to_unit_tensor(image_rgb)
    if face_mask.shape != image_rgb.shape[:2]:
        raise ValueError(f"mask {face_mask.shape} does not match the image {image_rgb.shape[:2]}")
    mask = torch.from_numpy(np.ascontiguousarray(face_mask))[None, None].float().div(255)
    masked = image * mask
    h, w = image_rgb.shape[:2]
    if h == w:
        full, pad_left = resize_square_padded(image, size)
        masked, _ = resize_square_padded(masked, size)
        crop = (pad_left, size[0])
    else:
        full, masked, crop = resize_cover_crop(image, size), resize_cover_crop(masked, size), None
    return ReferenceImages(full * 2.0 - 1.0, masked * 2.0 - 1.0, crop)


def crop_output_frames(frames: torch.Tensor, output_crop: tuple[int, int] | None, *,
                       channels_last: bool = False) -> torch.Tensor:
    """Undo the square padding on finished frames (official: keep the centre min(H, W) columns).

    Frames are [..., H, W], or [..., H, W, C] with `channels_last` (ComfyUI IMAGE).
    """
    if output_crop is None:
        return frames
    x0, width = output_crop
    return frames[..., x0:x0 + width, :] if channels_last else frames[..., x0:x0 + width]


def uncrop_frames(frames: torch.Tensor, output_crop: tuple[int, int] | None,
                  frame_size: tuple[int, int]) -> torch.Tensor:
    """Frames (n, 3, h, w) cropped back to a square put back into the padded frame (black outside); frames already at
    `frame_size` pass through. The inverse of `crop_output_frames` where the padding was black."""
    height, width = frame_size
    if frames.shape[-1] != width and output_crop is not None and frames.shape[-1] == output_crop[1]:
        padded = frames.new_zeros(frames.shape[0], frames.shape[1], height, width)
        padded[..., output_crop[0]:output_crop[0] + output_crop[1]] = frames
        return padded
    return frames
