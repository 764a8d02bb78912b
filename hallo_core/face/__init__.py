"""Identity front-end: reference image -> InsightFace identity -> face mask -> full and masked references.

    image = load_image("portrait.png")                       # or a ComfyUI IMAGE tensor
    analyzer = load_face_analyzer("pretrained_models/face_analysis")
    ref = prepare_reference(image, analyzer, size=(480, 720))
    ref.identity.embedding   # (1, 512) raw glintr100 embedding -> face_proj
    ref.images.full          # (1, 3, 480, 720) in [-1, 1] -> VAE (reference + motion frames)
    ref.images.masked        # (1, 3, 480, 720) in [-1, 1] -> VAE -> identity reference network
    crop_output_frames(frames, ref.images.output_crop)       # square inputs: back to square at the end

Hallo / Hallo2 (SD1.5 UNet, square frames): `prepare_unet_reference(image, analyzer, frame_size=512)` gives the
reference pixels, the embedding, the hierarchical masks and the face locator's input (see `unet_reference`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .face_mask import (
    EXPAND_RATIO,
    LIP_IDS,
    MEDIAPIPE_TASK_FILE,
    SILHOUETTE_IDS,
    FaceMask,
    MediaPipeSilhouette,
    build_face_mask,
    expand_region,
    find_mediapipe_task,
    landmark_region,
    mask_box,
    mediapipe_available,
)
from .hierarchical_masks import HierarchicalMasks, build_hierarchical_masks, masks_from_landmarks
from .identity import (
    DETECTOR_FILE,
    EMBEDDING_DIM,
    LANDMARK_FILE,
    RECOGNIZER_FILE,
    Face,
    FaceAnalyzer,
    Identity,
    default_providers,
    find_face_model_dir,
    load_face_analyzer,
)
from .reference_image import (
    VIDEO_SIZE,
    ReferenceImages,
    crop_output_frames,
    load_image,
    reference_images,
    resize_cover_crop,
    resize_square_padded,
)
from .square_reference import NON_SQUARE_MODES, SquareImage, make_square, unet_reference_pixels
from .unet_reference import UnetReference, prepare_unet_reference


@dataclass
class Reference:
    """Everything the model needs from the reference image."""

    image: np.ndarray  # (h, w, 3) uint8 RGB, original size
    identity: Identity
    mask: FaceMask
    images: ReferenceImages

    @property
    def notes(self) -> list[str]:
        return self.identity.notes + self.mask.notes


def prepare_reference(image_rgb: np.ndarray, analyzer: FaceAnalyzer, *, size: tuple[int, int] = VIDEO_SIZE,
                      allow_no_face: bool = False, mask_method: str = "auto",
                      mediapipe_task: str | os.PathLike | None = None) -> Reference:
    """Identity, face mask and the two resized references, in the official order (all on the original image).

    `mediapipe_task` defaults to the official `.task` file if it lies beside the InsightFace models.
    """
    identity = analyzer.identity(image_rgb, allow_no_face=allow_no_face)
    if mediapipe_task is None and mask_method != "insightface":
        mediapipe_task = find_mediapipe_task(analyzer.model_dir, os.path.dirname(analyzer.model_dir))
    landmarks = identity.face.landmarks_68 if identity.face is not None else None
    mask = build_face_mask(image_rgb, landmarks_68=landmarks, method=mask_method, mediapipe_task=mediapipe_task,
                           allow_whole_image=identity.face is None)
    return Reference(image_rgb, identity, mask, reference_images(image_rgb, mask.mask, size))


__all__ = [
    "DETECTOR_FILE", "EMBEDDING_DIM", "EXPAND_RATIO", "Face", "FaceAnalyzer", "FaceMask", "HierarchicalMasks",
    "Identity", "LANDMARK_FILE", "LIP_IDS", "MEDIAPIPE_TASK_FILE", "MediaPipeSilhouette", "NON_SQUARE_MODES",
    "RECOGNIZER_FILE", "Reference", "ReferenceImages", "SILHOUETTE_IDS", "SquareImage", "UnetReference", "VIDEO_SIZE",
    "build_face_mask", "build_hierarchical_masks", "crop_output_frames", "default_providers", "expand_region",
    "find_face_model_dir", "find_mediapipe_task", "landmark_region", "load_face_analyzer", "load_image", "make_square",
    "mask_box", "masks_from_landmarks", "mediapipe_available", "prepare_reference", "prepare_unet_reference",
    "reference_images", "resize_cover_crop", "resize_square_padded", "unet_reference_pixels",
]
