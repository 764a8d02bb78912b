"""The reference image of the SD1.5-UNet backbones (Hallo, Hallo2): square, frame x frame (512 x 512 official).

Official (hallo `datasets/image_processor.py:56-62, 118-121`): `Image.open(path).convert("RGB")`, torchvision
`Resize((512, 512))` on the PIL image (PIL bilinear, antialiased), `ToTensor`, `Normalize(0.5, 0.5)`. There is no
crop: the official README asks for a square input, and a non-square one is stretched. The masks and the face region
are computed on the same (unresized) image, so they stay aligned with the stretched reference.

Product behaviour for a non-square image (`non_square`):

* `"crop"` (default): cut the largest square that fits, centred on the detected face (on the image centre without a
  face) and shifted to stay inside the image; the masks, the face region and the reference all come from that square,
  and a note says so. The face keeps its proportions.
* `"stretch"`: the official behaviour; the whole image is squeezed to a square (faces look wider or narrower), and a
  note says by how much.

A square image is used as it is in both modes. The identity embedding is always taken from the original image (as
official); the crop only changes what the video shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError
from .hierarchical_masks import FRAME_SIZE, pil_resize, to_unit

NON_SQUARE_MODES = ("crop", "stretch")


@dataclass
class SquareImage:
    """The image the UNet reference, masks and face region are made from.

    `image`: (h, w, 3) uint8 RGB; square unless `non_square="stretch"` kept a non-square original (the resize to the
    frame then stretches it). `crop`: (x0, y0, side) of the square in the original image, or None when nothing was
    cut. `notes`: user-facing remarks.
    """

    image: np.ndarray
    crop: tuple[int, int, int] | None
    stretched: bool
    notes: list[str] = field(default_factory=list)

    @property
    def offset(self) -> tuple[int, int]:
        """(x, y) to subtract from original-image coordinates (landmarks, boxes) to get this image's."""
        return (0, 0) if self.crop is None else (self.crop[0], self.crop[1])


def square_crop_box(width: int, height: int, face_bbox=None) -> tuple[int, int, int]:
    """(x0, y0, side): the largest square inside a width x height image, centred on `face_bbox` (x0, y0, x1, y1)
    when given, else on the image, shifted to stay inside."""
    side = min(width, height)
    if face_bbox is None:
        cx, cy = width / 2.0, height / 2.0
    else:
        cx, cy = (float(face_bbox[0]) + float(face_bbox[2])) / 2.0, (float(face_bbox[1]) + float(face_bbox[3])) / 2.0
    x0 = min(max(round(cx - side / 2.0), 0), width - side)
    y0 = min(max(round(cy - side / 2.0), 0), height - side)
    return x0, y0, side


def make_square(image_rgb: np.ndarray, *, non_square: str = "crop", face_bbox=None) -> SquareImage:
    """The square the UNet works on: the image itself if square, else a face-centred crop or the official stretch."""
    if non_square not in NON_SQUARE_MODES:
        raise InputError(f"unknown non-square handling {non_square!r}; use one of {', '.join(NON_SQUARE_MODES)}")
    height, width = image_rgb.shape[:2]
    if height == width:
        return SquareImage(image_rgb, None, False)
    if non_square == "stretch":
        note = (f"the reference is {width}x{height}, not square: it is stretched to a square as in the official code, so "
                f"faces look {max(width, height) / min(width, height):.2f}x {'narrower' if width > height else 'wider'}; "
                "use non_square='crop' or a square photo to keep proportions")
        return SquareImage(image_rgb, None, True, [note])
    x0, y0, side = square_crop_box(width, height, face_bbox)
    where = "the face" if face_bbox is not None else "the image centre (no face found)"
    note = (f"the reference is {width}x{height}, not square: the video shows the {side}x{side} square at x {x0}, y {y0} "
            f"around {where} (non_square='stretch' squeezes the whole image instead, as the official code)")
    notes = [note]
    if face_bbox is not None:
        fx0, fy0, fx1, fy1 = (float(v) for v in face_bbox[:4])
        if fx0 < x0 or fy0 < y0 or fx1 > x0 + side or fy1 > y0 + side:
            notes.append(f"the face ({fx1 - fx0:.0f}x{fy1 - fy0:.0f} px) does not fit entirely in the {side}-px square; "
                         "use a photo with more margin around the face")
    return SquareImage(np.ascontiguousarray(image_rgb[y0:y0 + side, x0:x0 + side]), (x0, y0, side), False, notes)


def unet_reference_pixels(image_rgb: np.ndarray, frame_size: int = FRAME_SIZE) -> torch.Tensor:
    """(1, 3, frame, frame) float32 in [-1, 1]: official PIL bilinear resize (stretching a non-square image),
    `ToTensor`, `(x - 0.5) / 0.5`."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"expected an (h, w, 3) uint8 RGB image, got {image_rgb.shape} {image_rgb.dtype}")
    x = to_unit(pil_resize(image_rgb, frame_size, frame_size)).permute(2, 0, 1)
    return x.sub(0.5).div(0.5)[None].contiguous()
