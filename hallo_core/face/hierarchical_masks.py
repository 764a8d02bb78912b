"""Hallo / Hallo2 hierarchical masks: where the audio attention may act (official hallo `utils/util.py:497-662`,
`datasets/image_processor.py:140-180`).

The SD1.5-UNet backbones weight three audio-attention branches with three soft masks at each of four latent
resolutions: `full` (pose; the background, i.e. everything but the face), `face` (expression; the face without the
lips) and `lip`. The face locator also receives the hard face box as an image. The official recipe, reproduced here
operation for operation:

1. MediaPipe FaceLandmarker (478 points, pixels) on the reference image. The lip box is the bounding box of the 20
   outer-lip points (`LIP_IDS`), `np.round`ed and expanded 2.0x by `expand_region`; the face box is that of the 36
   silhouette points, expanded by `face_expand_ratio` (1.2).
2. Each box becomes a uint8 image of the reference's size, 255 in `mask[y0:y1, x0:x1]`, 0 elsewhere. When the expanded
   box is wider (or taller) than the image, `expand_region` returns a negative start, and numpy's slicing then counts
   it from the far end: a face box spanning x 4..508 of a 512-px image becomes x -92..512, i.e. only the last 92
   columns. This quirk is kept for parity (a note says when it bites); `clamp_boxes=True` clamps instead.
3. `blur_mask`: `cv2.resize` to 64x64 (INTER_LINEAR), `cv2.GaussianBlur` with kernel 51 (face; sigma 0 means
   0.3 * (51 / 2 - 1) + 0.8 = 8) or 31 (lip; sigma 5), then `cv2.normalize` MINMAX to 0..255 (a constant image,
   e.g. an empty lip box or a box covering the whole image, becomes all 0).
4. `sep_background = ((1.0 - face_blur / 255.0) * 255).astype(uint8)` in float64: the cast truncates, so 50 of the
   256 values give 254 - v instead of 255 - v. `sep_face = cv2.subtract(face_blur, sep_lip)` (saturating).
5. Each 64x64 map is resized with PIL bilinear to the latent side s = frame/8, /16, /32, /64 (64, 32, 16, 8 at 512;
   64 -> 64 is a copy), scaled to [0, 1] (`ToTensor`) and flattened to (1, s*s): `full` <- sep_background,
   `face` <- sep_face, `lip` <- sep_lip.
6. The face locator's input is the full-size face box image resized to frame x frame with PIL bilinear, 3 equal
   channels in [0, 1] (soft edges only when the reference is not already frame-sized).

Without MediaPipe the boxes come from InsightFace's 68 landmarks (`1k3d68.onnx`): the silhouette estimate of
`face_mask.silhouette_from_landmarks_68` and the outer lip contour (iBUG 48-59, the same contour as `LIP_IDS`); see
docs/face_mask.md for how close that is. With no landmarks at all the official code crashes; here that is refused
unless the caller allows a missing face, which then marks the whole image as the face box (no lip box).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError, ModelFileError
from .face_mask import (
    LIP_IDS,
    MEDIAPIPE_TASK_FILE,
    SILHOUETTE_IDS,
    MediaPipeSilhouette,
    box_mask,
    landmark_region,
    lip_from_landmarks_68,
    mediapipe_available,
    silhouette_from_landmarks_68,
)

logger = logging.getLogger(__name__)

FACE_EXPAND_RATIO = 1.2  # config `face_expand_ratio`
LIP_EXPAND_RATIO = 2.0  # `get_lip_mask` default; `get_mask` passes none
BLUR_SIDE = 64  # `blur_mask` resize_dim, independent of the frame size
FACE_BLUR_KERNEL = 51
LIP_BLUR_KERNEL = 31
LEVELS = 4
FRAME_SIZE = 512  # official source_image width = height


@dataclass
class HierarchicalMasks:
    """The masks of one reference image, as the UNet pipeline takes them.

    `full`, `face`, `lip`: per level 0..3 a (1, s*s) float32 tensor in [0, 1], s = frame/8 >> level (the pipeline
    repeats each row once per frame: `repeated`). `face_region`: (1, 3, frame, frame) float32 in [0, 1], the face
    locator's input. `face_box` / `lip_box`: the rectangles actually drawn, (x0, x1, y0, y1) end-exclusive pixels of
    the image the masks were made from (None when empty); `face_region_request` / `lip_region_request` are the
    `expand_region` results before numpy's slicing (a negative start shows the quirk). `maps`: the official cached
    images as uint8 arrays (`lip_mask`, `face_mask` at image size; `face_mask_blur`, `sep_lip`, `sep_background`,
    `sep_face` at 64x64). `method`: "mediapipe", "insightface" or "whole-image".
    """

    full: list[torch.Tensor]
    face: list[torch.Tensor]
    lip: list[torch.Tensor]
    face_region: torch.Tensor
    face_box: tuple[int, int, int, int] | None
    lip_box: tuple[int, int, int, int] | None
    face_region_request: tuple[int, int, int, int]
    lip_region_request: tuple[int, int, int, int] | None
    maps: dict[str, np.ndarray]
    method: str
    notes: list[str] = field(default_factory=list)

    @property
    def frame_size(self) -> int:
        return int(self.face_region.shape[-1])

    def repeated(self, frames: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """(full, face, lip) with each level repeated to (frames, s*s), as the official loop passes them."""
        return tuple([m.repeat(frames, 1) for m in masks] for masks in (self.full, self.face, self.lip))


def pyramid_sides(frame_size: int = FRAME_SIZE) -> list[int]:
    """Latent side of each mask level: frame/8, /16, /32, /64."""
    if frame_size <= 0 or frame_size % 64:
        raise ValueError(f"the UNet frame size must be a positive multiple of 64, got {frame_size}")
    return [frame_size // (8 << level) for level in range(LEVELS)]


def drawn_box(region, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The rectangle `mask[y0:y1, x0:x1]` really covers with numpy's slicing rules, or None if it is empty."""
    x0, x1, _ = slice(int(region[0]), int(region[1])).indices(width)
    y0, y1, _ = slice(int(region[2]), int(region[3])).indices(height)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, x1, y0, y1


def blur_mask(mask: np.ndarray, kernel: int) -> np.ndarray:
    """Official `blur_mask`: 64x64 INTER_LINEAR, Gaussian (kernel, sigma from the kernel), MINMAX to 0..255 (uint8)."""
    import cv2

    resized = cv2.resize(np.ascontiguousarray(mask, dtype=np.uint8), (BLUR_SIDE, BLUR_SIDE))
    blurred = cv2.GaussianBlur(resized, (kernel, kernel), 0)
    return cv2.normalize(blurred, None, 0, 255, cv2.NORM_MINMAX)


def background_mask(face_blur: np.ndarray) -> np.ndarray:
    """Official `get_background_mask`: the float64 inversion, truncated to uint8 (not 255 - v)."""
    return ((1.0 - np.asarray(face_blur) / 255.0) * 255).astype(np.uint8)


def pil_resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """PIL bilinear resize of a uint8 image (what torchvision's `Resize` does to a PIL image); same size: a copy."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((width, height), Image.BILINEAR))


def to_unit(image: np.ndarray) -> torch.Tensor:
    """`ToTensor` of a uint8 array: float32 in [0, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).float().div(255)


def mask_pyramid(map64: np.ndarray, frame_size: int = FRAME_SIZE) -> list[torch.Tensor]:
    """A 64x64 uint8 map -> per level a (1, s*s) float32 tensor (PIL bilinear resize, ToTensor, flatten)."""
    return [to_unit(pil_resize(map64, side, side)).view(1, -1) for side in pyramid_sides(frame_size)]


def face_region_image(face_mask: np.ndarray, frame_size: int = FRAME_SIZE) -> torch.Tensor:
    """The face locator's input: the full-size 0/255 face box image -> (1, 3, frame, frame) float32 in [0, 1].

    Official: the image as RGB through PIL bilinear `Resize`; PIL resamples every band alike, so the gray image is
    resized once and repeated."""
    gray = to_unit(pil_resize(face_mask, frame_size, frame_size))
    return gray[None, None].expand(1, 3, frame_size, frame_size).contiguous()


def masks_from_regions(face_region, lip_region, width: int, height: int, *, frame_size: int = FRAME_SIZE,
                       method: str, notes: list[str] | None = None, clamp_boxes: bool = False) -> HierarchicalMasks:
    """Steps 2-6 of the recipe from the two `expand_region` boxes (x0, x1, y0, y1); `lip_region` None: no lip box."""
    import cv2

    notes = list(notes or [])
    pyramid_sides(frame_size)  # validates the size before any work
    regions = {"face": tuple(int(v) for v in face_region),
               "lip": None if lip_region is None else tuple(int(v) for v in lip_region)}
    full_size, boxes = {}, {}
    for name, region in regions.items():
        if region is None:
            full_size[name], boxes[name] = np.zeros((height, width), np.uint8), None
            continue
        if region[0] < 0 or region[2] < 0:
            if clamp_boxes:
                clamped = (max(region[0], 0), region[1], max(region[2], 0), region[3])
                notes.append(f"the expanded {name} box {region} is larger than the {width}x{height} image; clamped "
                             f"to {clamped} (clamp_boxes)")
                region = clamped
            else:
                drawn = drawn_box(region, width, height)
                notes.append(f"the expanded {name} box {region} is larger than the {width}x{height} image; as in "
                             f"the official code only the far-edge part {drawn} is marked (use a photo with more "
                             "margin around the face, or clamp_boxes)")
        full_size[name] = box_mask(region, height, width)
        boxes[name] = drawn_box(region, width, height)
        if boxes[name] is None and name == "face":
            raise InputError("the face box is empty (the face landmarks have no width or height); use a photo with one "
                             "clearly visible face")
        if boxes[name] is None:
            notes.append("the lip box is empty (the lip landmarks have no width or height): the lip mask is zero")
    face_blur = blur_mask(full_size["face"], FACE_BLUR_KERNEL)
    sep_lip = blur_mask(full_size["lip"], LIP_BLUR_KERNEL)
    sep_background = background_mask(face_blur)
    sep_face = cv2.subtract(face_blur, sep_lip)
    if not face_blur.any():
        notes.append("the face box covers the whole image, so its blurred mask is constant and normalises to zero: the "
                     "expression mask is empty and the pose mask is everywhere (as in the official code)")
    for note in notes:
        logger.warning(note)
    maps = {"lip_mask": full_size["lip"], "face_mask": full_size["face"], "face_mask_blur": face_blur,
            "sep_lip": sep_lip, "sep_background": sep_background, "sep_face": sep_face}
    return HierarchicalMasks(
        full=mask_pyramid(sep_background, frame_size), face=mask_pyramid(sep_face, frame_size),
        lip=mask_pyramid(sep_lip, frame_size), face_region=face_region_image(full_size["face"], frame_size),
        face_box=boxes["face"], lip_box=boxes["lip"], face_region_request=regions["face"],
        lip_region_request=regions["lip"], maps=maps, method=method, notes=notes)


def masks_from_landmarks(landmarks: np.ndarray, width: int, height: int, *, frame_size: int = FRAME_SIZE,
                         face_expand_ratio: float = FACE_EXPAND_RATIO, lip_expand_ratio: float = LIP_EXPAND_RATIO,
                         clamp_boxes: bool = False, notes: list[str] | None = None) -> HierarchicalMasks:
    """The official masks from MediaPipe's 478 landmarks (x, y pixels) of a `width` x `height` image."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.ndim != 2 or points.shape[0] <= max(max(LIP_IDS), max(SILHOUETTE_IDS)) or points.shape[1] < 2:
        raise ValueError(f"expected MediaPipe's 478 face-mesh landmarks (x, y), got shape {points.shape}")
    face = landmark_region(points[list(SILHOUETTE_IDS), :2], width, height, face_expand_ratio)
    lip = landmark_region(points[list(LIP_IDS), :2], width, height, lip_expand_ratio)
    return masks_from_regions(face, lip, width, height, frame_size=frame_size, method="mediapipe", notes=notes,
                              clamp_boxes=clamp_boxes)


def masks_from_landmarks_68(landmarks_68: np.ndarray, width: int, height: int, *, frame_size: int = FRAME_SIZE,
                            face_expand_ratio: float = FACE_EXPAND_RATIO, lip_expand_ratio: float = LIP_EXPAND_RATIO,
                            clamp_boxes: bool = False, notes: list[str] | None = None) -> HierarchicalMasks:
    """The masks from InsightFace's 68 landmarks: estimated silhouette box and the outer lip contour (iBUG 48-59)."""
    face = landmark_region(silhouette_from_landmarks_68(landmarks_68), width, height, face_expand_ratio)
    lip = landmark_region(lip_from_landmarks_68(landmarks_68), width, height, lip_expand_ratio)
    return masks_from_regions(face, lip, width, height, frame_size=frame_size, method="insightface", notes=notes,
                              clamp_boxes=clamp_boxes)


def whole_image_masks(width: int, height: int, *, frame_size: int = FRAME_SIZE,
                      notes: list[str] | None = None) -> HierarchicalMasks:
    """For a reference without a face (when allowed): the whole image as the face box and no lip box."""
    notes = list(notes or []) + ["no face landmarks: the whole image is used as the face box and there is no lip mask"]
    masks = masks_from_regions((0, width, 0, height), None, width, height, frame_size=frame_size,
                               method="whole-image", notes=notes)
    return masks


def build_hierarchical_masks(image_rgb: np.ndarray, *, landmarks_68: np.ndarray | None = None, method: str = "auto",
                             mediapipe_task: str | os.PathLike | None = None,
                             mediapipe: MediaPipeSilhouette | None = None, frame_size: int = FRAME_SIZE,
                             face_expand_ratio: float = FACE_EXPAND_RATIO, clamp_boxes: bool = False,
                             allow_no_face: bool = False) -> HierarchicalMasks:
    """The hierarchical masks of a reference image (h, w, 3) uint8 RGB.

    `method`: "mediapipe" (official), "insightface" (from `landmarks_68`, InsightFace's 68 landmarks of the chosen
    face) or "auto" (MediaPipe when the package and `mediapipe_task` are there, else InsightFace; the result's
    `method` says which). `mediapipe` is a ready landmarker (anything with `landmarks(image) -> (478, 2) | None`).
    `allow_no_face`: without any landmarks, mark the whole image as the face instead of refusing.
    """
    if method not in ("auto", "mediapipe", "insightface"):
        raise ValueError(f"unknown mask method {method!r}")
    height, width = image_rgb.shape[:2]
    common = {"frame_size": frame_size, "face_expand_ratio": face_expand_ratio, "clamp_boxes": clamp_boxes}
    notes: list[str] = []
    if method in ("auto", "mediapipe"):
        detector, owned = mediapipe, False
        if detector is None and (method == "mediapipe" or (mediapipe_task and mediapipe_available())):
            if not mediapipe_available():
                raise ModelFileError("the mediapipe masks need the mediapipe package: pip install mediapipe, or use "
                                     "the insightface masks")
            if mediapipe_task is None:
                raise ModelFileError(f"the mediapipe masks need {MEDIAPIPE_TASK_FILE} (hallo "
                                     "pretrained_models/face_analysis/models/); pass its path")
            detector, owned = MediaPipeSilhouette(mediapipe_task), True
        if detector is not None:
            try:
                landmarks = detector.landmarks(image_rgb)
            finally:
                if owned:
                    detector.close()
            if landmarks is not None:
                return masks_from_landmarks(landmarks, width, height, **common)
            if landmarks_68 is None and not allow_no_face:
                raise InputError("MediaPipe found no single face in the reference image; use a photo with one clearly "
                                 "visible face")
            if landmarks_68 is not None:
                notes.append("MediaPipe found no single face; the masks come from InsightFace's landmarks")
    if landmarks_68 is not None:
        return masks_from_landmarks_68(landmarks_68, width, height, notes=notes, **common)
    if not allow_no_face:
        raise InputError("no face landmarks for the face and lip masks; use a photo with one clearly visible face")
    return whole_image_masks(width, height, frame_size=frame_size, notes=notes)
