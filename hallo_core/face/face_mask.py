"""The face mask of the reference image: a filled rectangle around the face (hallo3 `sgm/utils/util.py:335-558`).

Official recipe (`get_mask(image, cache, 1.2)`): MediaPipe FaceLandmarker (`face_landmarker_v2_with_blendshapes.task`,
IMAGE mode, one face) gives 478 landmarks in pixels; the bounding box of the 36 face-silhouette landmarks is rounded,
expanded 1.2x about its centre with the official integer arithmetic (`expand_region`: floor-halved sizes, box shifted
back inside the image) and filled with 255 in an otherwise zero uint8 image.

Two ways to get the silhouette box:

* `"mediapipe"`: the official one, used when the `mediapipe` package and the `.task` file are present;
* `"insightface"`: an estimate from InsightFace's 68-point landmarks (`1k3d68.onnx`, part of antelopev2) for installs
  without MediaPipe: the jaw and brow points give the sides and the chin; the forehead edge of MediaPipe's silhouette
  lies above the brows by `FOREHEAD_RATIO` times the brow-to-chin height. See docs/face_mask.md for how this was
  calibrated and how close the two masks are.

`"auto"` takes MediaPipe when it can and says so in the returned `FaceMask.method`.

One deliberate difference: when the expanded box is wider (or taller) than the image, the official code ends up with
a negative start index and numpy slicing fills only a strip at the far edge; here the box is clamped to the image.
(The Hallo / Hallo2 hierarchical masks in `hierarchical_masks.py` reproduce that quirk instead: `landmark_region`
gives the unclamped box, `box_mask` draws it with numpy's slicing.)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError, ModelFileError

logger = logging.getLogger(__name__)

EXPAND_RATIO = 1.2
MEDIAPIPE_TASK_FILE = "face_landmarker_v2_with_blendshapes.task"
# MediaPipe face-mesh indices of the face silhouette (the official `silhouette_ids`, the mesh's face oval)
SILHOUETTE_IDS = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148,
                  176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
# forehead edge = brow top - FOREHEAD_RATIO * (chin - brow top); calibrated on MediaPipe meshes (docs/face_mask.md)
FOREHEAD_RATIO = 0.19
# MediaPipe face-mesh indices of the outer lip contour (the official Hallo `lip_ids`)
LIP_IDS = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 146, 91, 181, 84, 17, 314, 405, 321, 375)
_JAW, _BROWS, _OUTER_LIP = slice(0, 17), slice(17, 27), slice(48, 60)


@dataclass
class FaceMask:
    """`mask` is (h, w) uint8, 255 inside the face rectangle; `box` is (x0, x1, y0, y1), end-exclusive pixels."""

    mask: np.ndarray
    box: tuple[int, int, int, int]
    method: str  # "mediapipe", "insightface" or "whole-image"
    notes: list[str] = field(default_factory=list)


def expand_region(region, image_w: int, image_h: int, expand_ratio: float = 1.0) -> tuple[int, int, int, int]:
    """The official box expansion, same float operations in the same order: (min_x, max_x, min_y, max_y) -> ints."""
    min_x, max_x, min_y, max_y = (float(v) for v in region)
    mid_x = (max_x + min_x) // 2
    side_len_x = (max_x - min_x) * expand_ratio
    mid_y = (max_y + min_y) // 2
    side_len_y = (max_y - min_y) * expand_ratio
    min_x = mid_x - side_len_x // 2
    max_x = mid_x + side_len_x // 2
    min_y = mid_y - side_len_y // 2
    max_y = mid_y + side_len_y // 2
    min_x, max_x = _slide_inside(min_x, max_x, image_w)
    min_y, max_y = _slide_inside(min_y, max_y, image_h)
    return round(min_x), round(max_x), round(min_y), round(max_y)


def _slide_inside(low: float, high: float, limit: int) -> tuple[float, float]:
    """Shift [low, high] to start at 0 if it starts below, then to end at `limit` if it ends past it (official
    order: a span longer than the image ends at `limit` and starts below 0)."""
    if low < 0:
        high -= low
        low = 0
    if high > limit:
        low -= high - limit
        high = limit
    return low, high


def landmark_region(points: np.ndarray, width: int, height: int,
                    expand_ratio: float = EXPAND_RATIO) -> tuple[int, int, int, int]:
    """The official box of a point set, unclamped: `np.round` of the min and max, then `expand_region`.

    (x0, x1, y0, y1); x0 or y0 is negative when the expanded box is wider or taller than the image."""
    pts = np.asarray(points, dtype=np.float64)
    lo, hi = np.round(pts.min(0)), np.round(pts.max(0))
    return expand_region([lo[0], hi[0], lo[1], hi[1]], width, height, expand_ratio)


def mask_box(points: np.ndarray, width: int, height: int,
             expand_ratio: float = EXPAND_RATIO) -> tuple[int, int, int, int]:
    """Official `get_face_mask` box of a point set (silhouette landmarks), clamped to the image."""
    x0, x1, y0, y1 = landmark_region(points, width, height, expand_ratio)
    return max(x0, 0), min(x1, width), max(y0, 0), min(y1, height)


def box_mask(box: tuple[int, int, int, int], height: int, width: int) -> np.ndarray:
    """uint8 (height, width), 255 in `mask[y0:y1, x0:x1]` with numpy's slicing (a negative start counts from the end,
    as in the official code), 0 elsewhere."""
    x0, x1, y0, y1 = box
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 255
    return mask


def silhouette_from_landmarks_68(landmarks_68: np.ndarray) -> np.ndarray:
    """Four points spanning the estimated MediaPipe silhouette box, from iBUG-68 landmarks (x, y)."""
    lmk = np.asarray(landmarks_68, dtype=np.float64)[:, :2]
    outline = np.concatenate([lmk[_JAW], lmk[_BROWS]])
    x0, x1 = outline[:, 0].min(), outline[:, 0].max()
    chin = lmk[_JAW, 1].max()
    brow_top = lmk[_BROWS, 1].min()
    top = brow_top - FOREHEAD_RATIO * (chin - brow_top)
    return np.array([[x0, top], [x1, top], [x0, chin], [x1, chin]])


def lip_from_landmarks_68(landmarks_68: np.ndarray) -> np.ndarray:
    """The 12 outer-lip points (iBUG 48-59) of 68 landmarks (x, y): the same contour as MediaPipe's `LIP_IDS`."""
    return np.asarray(landmarks_68, dtype=np.float64)[_OUTER_LIP, :2]


class MediaPipeSilhouette:
    """MediaPipe FaceLandmarker in IMAGE mode, as the official `get_landmark`; needs the `mediapipe` package.

    Calling it gives the 36 silhouette points; `landmarks` gives all 478 mesh points (the Hallo masks need the lips).
    """

    def __init__(self, task_path: str | os.PathLike):
        import mediapipe as mp

        task_path = os.fspath(task_path)
        if not os.path.isfile(task_path):
            raise ModelFileError(f"{task_path} not found; put {MEDIAPIPE_TASK_FILE} (hallo3 "
                                 "pretrained_models/face_analysis/models/) there, or use the insightface mask")
        options = mp.tasks.vision.FaceLandmarkerOptions(
            base_options=mp.tasks.BaseOptions(model_asset_path=task_path),
            running_mode=mp.tasks.vision.RunningMode.IMAGE)
        self._mp = mp
        self._landmarker = mp.tasks.vision.FaceLandmarker.create_from_options(options)

    def landmarks(self, image_rgb: np.ndarray) -> np.ndarray | None:
        """(478, 2) mesh landmarks in pixels (x * width, y * height), or None unless exactly one face is found (as
        official)."""
        height, width = image_rgb.shape[:2]
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(image_rgb))
        result = self._landmarker.detect(image)
        if len(result.face_landmarks) != 1:
            return None
        return np.array([[p.x * width, p.y * height] for p in result.face_landmarks[0]], dtype=np.float64)

    def __call__(self, image_rgb: np.ndarray) -> np.ndarray | None:
        """(36, 2) silhouette landmarks in pixels, or None unless exactly one face is found (as official)."""
        points = self.landmarks(image_rgb)
        return None if points is None else points[list(SILHOUETTE_IDS)]

    def close(self) -> None:
        self._landmarker.close()


def find_mediapipe_task(*folders: str | os.PathLike | None) -> str | None:
    """The MediaPipe `.task` file in any of `folders` (or their `models/`), if present."""
    for folder in folders:
        if not folder:
            continue
        for candidate in (folder, os.path.join(folder, "models")):
            path = os.path.join(candidate, MEDIAPIPE_TASK_FILE)
            if os.path.isfile(path):
                return path
    return None


def mediapipe_available() -> bool:
    try:
        import mediapipe  # noqa: F401
    except ImportError:
        return False
    return True


def build_face_mask(image_rgb: np.ndarray, *, landmarks_68: np.ndarray | None = None, method: str = "auto",
                    mediapipe_task: str | os.PathLike | None = None, mediapipe: MediaPipeSilhouette | None = None,
                    expand_ratio: float = EXPAND_RATIO, allow_whole_image: bool = False) -> FaceMask:
    """The reference image's face mask.

    `landmarks_68` are InsightFace's 68 landmarks of the chosen face (`identity.Face.landmarks_68`); `mediapipe_task`
    the official `.task` file (or pass a ready `MediaPipeSilhouette`). `allow_whole_image` (for a reference without a
    face, when the caller allowed that) masks nothing out instead of refusing.
    """
    if method not in ("auto", "mediapipe", "insightface"):
        raise ValueError(f"unknown face mask method {method!r}")
    height, width = image_rgb.shape[:2]
    notes: list[str] = []
    silhouette = None
    used = None
    if method in ("auto", "mediapipe"):
        detector = mediapipe
        if detector is None and (method == "mediapipe" or (mediapipe_task and mediapipe_available())):
            if not mediapipe_available():
                raise ModelFileError("the mediapipe face mask needs the mediapipe package: pip install mediapipe, "
                                     "or use the insightface mask")
            if mediapipe_task is None:
                raise ModelFileError(f"the mediapipe face mask needs {MEDIAPIPE_TASK_FILE} (hallo3 "
                                     "pretrained_models/face_analysis/models/); pass its path")
            detector = MediaPipeSilhouette(mediapipe_task)
            try:
                silhouette = detector(image_rgb)
            finally:
                detector.close()
        elif detector is not None:
            silhouette = detector(image_rgb)
        if detector is not None:
            if silhouette is not None:
                used = "mediapipe"
            elif method == "mediapipe" and landmarks_68 is None:
                raise InputError("MediaPipe found no single face in the reference image; use a photo with one "
                                 "clearly visible face")
            else:
                notes.append("MediaPipe found no single face; the face mask comes from InsightFace's landmarks")
    if silhouette is None and landmarks_68 is not None:
        silhouette = silhouette_from_landmarks_68(landmarks_68)
        used = "insightface"
    if silhouette is None:
        if not allow_whole_image:
            raise InputError("no face landmarks for the face mask; use a photo with one clearly visible face")
        notes.append("no face landmarks: the masked reference keeps the whole image")
        return FaceMask(np.full((height, width), 255, np.uint8), (0, width, 0, height), "whole-image", notes)
    box = mask_box(silhouette, width, height, expand_ratio)
    if box[1] - box[0] < 1 or box[3] - box[2] < 1:
        raise InputError("the face mask is empty (the face lies outside the image); use a photo with the whole face "
                         "inside the frame")
    for note in notes:
        logger.warning(note)
    return FaceMask(box_mask(box, height, width), box, used, notes)
