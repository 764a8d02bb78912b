"""Pasting a restored face back into the upscaled frame, as facelib's `paste_faces_to_input_image` does.

Per frame, with s the output scale and `inverse` the face -> output map (`face_alignment.inverse_alignment`). The face
is the 512 x 512 restored crop, or with face upsampling that crop upsampled to int(512 s) square (the square mask then
has the face's size, as official):

1. the face is warped into the output (bilinear, black border) and rounded to 8-bit levels;
2. a square mask (ones over the crop) is warped the same way and eroded with a (2s x 2s) box: `eroded`;
3. soft edge: w_edge = int(sqrt(sum(eroded))) // 20; `eroded` is eroded again by (2 w_edge)^2 and Gaussian-blurred
   with a (2 w_edge + 1) kernel: `soft`;
4. with a face-parsing mask (face_parsing.py), it is warped the same way and `soft = min(parsing, soft)`;
5. out = soft * (eroded * face) + (1 - soft) * background, truncated to 8-bit levels (numpy's astype(uint8), as
   official; `round_blend=True` rounds instead, removing the -0.5 level bias, an explicit option).

Every mask is zero outside the warped square, so all of this is computed on the square's bounding box plus a margin
(a few hundred pixels square at 4K instead of the whole frame), which gives the same values as the whole-frame
computation: the erosions and blurs only ever reach zeros beyond the square, and at the frame's edges the box meets
the same image border OpenCV uses.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .face_alignment import FACE_SIZE
from .image_ops import erode, gaussian_blur, warp_affine

_ROI_MARGIN = 4  # pixels of zeros kept around the warped square


def face_box(inverse: np.ndarray, height: int, width: int,
             face_size: int = FACE_SIZE) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of the output region the warped face can touch, clipped to the frame; None if outside."""
    n = float(face_size)
    corners = np.array([[-1.0, -1.0], [n, -1.0], [-1.0, n], [n, n]])
    mapped = corners @ inverse[:, :2].T + inverse[:, 2]
    x0 = max(math.floor(mapped[:, 0].min()) - _ROI_MARGIN, 0)
    x1 = min(math.ceil(mapped[:, 0].max()) + _ROI_MARGIN + 1, width)
    y0 = max(math.floor(mapped[:, 1].min()) - _ROI_MARGIN, 0)
    y1 = min(math.ceil(mapped[:, 1].max()) + _ROI_MARGIN + 1, height)
    if x0 >= x1 or y0 >= y1:
        return None
    return y0, y1, x0, x1


def paste_face(background: torch.Tensor, face: torch.Tensor, inverse: np.ndarray, scale: float,
               parse_mask: torch.Tensor | None = None, round_blend: bool = False) -> torch.Tensor:
    """Blend a restored face into an upscaled frame.

    background (3, H, W) and face (3, n, n) (n = 512, or int(512 s) when upsampled): RGB levels 0..255, float, same
    device; inverse (2, 3) face -> output pixels; parse_mask (1, n, n) in [0, 1] or None (soft square mask only).
    Returns (3, H, W) integral levels.
    """
    height, width = background.shape[-2:]
    face_size = face.shape[-1]
    box = face_box(inverse, height, width, face_size)
    if box is None:
        return background
    y0, y1, x0, x1 = box
    local = np.array(inverse, dtype=np.float64)
    local[:, 2] -= (x0, y0)
    size = (y1 - y0, x1 - x0)
    dtype, device = torch.float32, background.device

    # face, square mask and parsing mask go through one warp (channels are warped independently)
    sources = [face.to(dtype), torch.ones(1, face_size, face_size, dtype=dtype, device=device)]
    if parse_mask is not None:
        sources.append(parse_mask.to(dtype))
    warped = warp_affine(torch.cat(sources)[None], local, size)
    restored = warped[:, :3].round()
    # OpenCV's fixed-point weights sum to exactly 1, so its warped square is exactly 1 inside; float bilinear weights
    # give 1 - 6e-8 at some pixels, which the final truncation would turn into one grey level less
    square = torch.where(warped[:, 3:4] > 1 - 1e-6, 1.0, warped[:, 3:4])
    eroded = erode(square, int(2 * scale))
    pasted = eroded * restored

    w_edge = int(float(eroded.sum()) ** 0.5) // 20
    soft = gaussian_blur(erode(eroded, 2 * w_edge), 2 * w_edge + 1)
    if parse_mask is not None:
        soft = torch.minimum(warped[:, 4:5], soft)

    # numpy's promotion in the official blend: float32 with the square mask alone, float64 once the (float64)
    # parsing mask is in; the precision decides which side of an integer the truncation lands on
    blend_dtype = torch.float64 if parse_mask is not None and background.device.type != "mps" else dtype
    soft, pasted = soft[0].to(blend_dtype), pasted[0].to(blend_dtype)
    region = background[:, y0:y1, x0:x1].to(blend_dtype)
    blended = soft * pasted + (1 - soft) * region
    blended = blended.round_() if round_blend else blended.floor_()
    out = background.clone()
    out[:, y0:y1, x0:x1] = blended.clamp_(0, 255).to(out.dtype)
    return out
