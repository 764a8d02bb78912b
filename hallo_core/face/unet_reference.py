"""Identity front-end of the SD1.5-UNet backbones (Hallo, Hallo2): reference pixels, face embedding, hierarchical masks
and the face locator's input, in the official order (hallo `ImageProcessor.preprocess`).

    image = load_image("portrait.png")                  # or a ComfyUI IMAGE tensor
    analyzer = load_face_analyzer("pretrained_models/face_analysis")
    ref = prepare_unet_reference(image, analyzer, frame_size=512)
    ref.pixels              # (1, 3, 512, 512) in [-1, 1]: VAE -> reference net, and clip 0's motion frames
    ref.face_embedding      # (1, 512) raw glintr100 embedding -> imageproj
    ref.masks.face_region   # (1, 3, 512, 512) in [0, 1] -> face locator
    ref.masks.full / .face / .lip   # 4 levels of (1, s*s) -> audio attention; `.repeated(16)` as the loop passes them

The embedding comes from the original image (official). A non-square image is cut to a face-centred square (default)
or stretched (`non_square="stretch"`, official); the masks are made from the same image as the reference pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from .face_mask import MediaPipeSilhouette, find_mediapipe_task
from .hierarchical_masks import FACE_EXPAND_RATIO, FRAME_SIZE, HierarchicalMasks, build_hierarchical_masks
from .identity import FaceAnalyzer, Identity
from .square_reference import SquareImage, make_square, unet_reference_pixels


@dataclass
class UnetReference:
    """Everything a Hallo / Hallo2 render needs from the reference image."""

    source: np.ndarray  # (h, w, 3) uint8 RGB, the original
    square: SquareImage  # what the video shows (its `image` made the masks and the pixels)
    identity: Identity
    masks: HierarchicalMasks
    pixels: torch.Tensor  # (1, 3, frame, frame) float32 in [-1, 1]

    @property
    def face_embedding(self) -> torch.Tensor:
        return self.identity.embedding

    @property
    def face_region(self) -> torch.Tensor:
        return self.masks.face_region

    @property
    def notes(self) -> list[str]:
        return self.identity.notes + self.square.notes + self.masks.notes


def prepare_unet_reference(image_rgb: np.ndarray, analyzer: FaceAnalyzer, *, frame_size: int = FRAME_SIZE,
                           non_square: str = "crop", allow_no_face: bool = False, mask_method: str = "auto",
                           mediapipe_task: str | os.PathLike | None = None,
                           mediapipe: MediaPipeSilhouette | None = None,
                           face_expand_ratio: float = FACE_EXPAND_RATIO, clamp_boxes: bool = False) -> UnetReference:
    """Identity (original image), square image, hierarchical masks and reference pixels.

    `mediapipe_task` defaults to the official `.task` file if it lies beside the InsightFace models. `allow_no_face`
    renders a reference without a detectable face (zero embedding, whole-image face box) instead of refusing.
    """
    identity = analyzer.identity(image_rgb, allow_no_face=allow_no_face)
    face = identity.face
    square = make_square(image_rgb, non_square=non_square, face_bbox=None if face is None else face.bbox)
    if mediapipe_task is None and mediapipe is None and mask_method != "insightface":
        mediapipe_task = find_mediapipe_task(analyzer.model_dir, os.path.dirname(analyzer.model_dir))
    landmarks = None
    if face is not None and face.landmarks_68 is not None:
        landmarks = np.asarray(face.landmarks_68, dtype=np.float64) - np.array(square.offset, dtype=np.float64)
    masks = build_hierarchical_masks(square.image, landmarks_68=landmarks, method=mask_method,
                                     mediapipe_task=mediapipe_task, mediapipe=mediapipe, frame_size=frame_size,
                                     face_expand_ratio=face_expand_ratio, clamp_boxes=clamp_boxes,
                                     allow_no_face=allow_no_face)
    return UnetReference(image_rgb, square, identity, masks, unet_reference_pixels(square.image, frame_size))
