"""Per-frame face detection (5 landmarks), the FFHQ 512 x 512 similarity alignment and its inverse.

Official (hallo2 `facelib`, `FaceRestoreHelper`): RetinaFace-ResNet50 (`detection_Resnet50_Final.pth`) on the frame
upscaled so its short side is at least 640, score >= 0.8, NMS 0.4; faces whose eyes are closer than 5 px are dropped;
the 4-DoF similarity from the 5 landmarks to the FFHQ-512 template is `cv2.estimateAffinePartial2D(..., LMEDS)`; the
crop is `cv2.warpAffine` (bilinear, grey border (135, 133, 132) BGR) to 512 x 512; the paste-back uses
`invertAffineTransform(M) * s` with 0.5 * s added to the translation.

What differs here, and why:

* Detector. facexlib/facelib's RetinaFace needs torchvision (ResNet-50 body, `torchvision.ops.nms`), which the pack
  must not depend on and which does not import on CPU-torch machines. InsightFace's SCRFD (`scrfd_10g_bnkps.onnx`, the
  detector Hallo3 itself uses, already in `pretrained_models/face_analysis/models/`) gives the same 5 points in the
  same order (left eye, right eye, nose, left and right mouth corners) through onnxruntime. It runs on a 640 x 640
  letterbox of the frame, score >= 0.5 (SCRFD's own default; its scores are calibrated differently from RetinaFace's),
  NMS 0.4. A different detector puts the landmarks a pixel or so elsewhere, so crops (and the restored faces) are not
  bit-identical to the official ones; the alignment maths after the landmarks is identical.
* Which face. The official code keeps the *last* detection, which is the lowest-scoring face; we keep the largest
  (box clipped to the frame, as facelib's `get_largest_face`), the highest score breaking ties.
* Missing faces. A frame without a detection reuses the last landmarks of the stream (official: the last of the
  current chunk, and a crash when a chunk starts without one); frames before the first detection have no face and
  pass through as background only.
* The crop is warped on the frames' device with `image_ops.warp_affine` and rounded to 8-bit levels, as
  `cv2.warpAffine` of a uint8 frame is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol, Sequence

import cv2
import numpy as np
import torch

from ..errors import ModelFileError
from .image_ops import warp_affine

FACE_SIZE = 512
# facelib FaceRestoreHelper: standard 5 landmarks for FFHQ faces at 512 x 512.
FFHQ_TEMPLATE_512 = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                              [201.26117, 371.41043], [313.08905, 371.15118]], dtype=np.float64)
CROP_BORDER_RGB = (132.0, 133.0, 135.0)  # official borderValue (135, 133, 132) is BGR
MIN_EYE_DISTANCE = 5.0
DETECTOR_HINT = ("use scrfd_10g_bnkps.onnx from the Hallo3 download (pretrained_models/face_analysis/models/) or "
                 "InsightFace's buffalo_l det_10g.onnx")


@dataclass
class DetectedFace:
    box: np.ndarray  # (4,) x1, y1, x2, y2 in frame pixels
    score: float
    landmarks: np.ndarray  # (5, 2): left eye, right eye, nose, left mouth corner, right mouth corner


class FaceDetector(Protocol):
    def detect(self, frame_rgb: np.ndarray) -> list[DetectedFace]:
        """All faces in an (H, W, 3) uint8 RGB frame."""


class ScrfdFaceDetector:
    """InsightFace's SCRFD detector with 5 keypoints, on onnxruntime with explicit providers."""

    def __init__(self, model_path: str | os.PathLike, providers: Sequence[str] | None = None,
                 input_size: tuple[int, int] = (640, 640), score_threshold: float = 0.5,
                 nms_threshold: float = 0.4):
        model_path = os.fspath(model_path)
        if not os.path.isfile(model_path):
            raise ModelFileError(f"face detector not found: {model_path}; {DETECTOR_HINT}")
        try:
            import onnxruntime
            from insightface.model_zoo.scrfd import SCRFD
        except ImportError as exc:
            raise ModelFileError(f"cannot load the face detector: {exc}; install insightface>=0.7.3,<0.8 and one "
                                 "of onnxruntime-gpu or onnxruntime") from None
        if providers is None:
            available = onnxruntime.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            session = onnxruntime.InferenceSession(model_path, providers=list(providers))
            self._scrfd = SCRFD(model_file=model_path, session=session)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ModelFileError(f"{model_path}: not a usable SCRFD ONNX model ({exc}); {DETECTOR_HINT}") from None
        if not self._scrfd.use_kps:
            raise ModelFileError(f"{model_path}: this SCRFD model has no keypoints (need a *_kps/bnkps model); "
                                 f"{DETECTOR_HINT}")
        self._scrfd.det_thresh = score_threshold
        self._scrfd.nms_thresh = nms_threshold
        self.input_size = tuple(input_size)

    def detect(self, frame_rgb: np.ndarray) -> list[DetectedFace]:
        # SCRFD.detect takes BGR (it swaps to RGB inside) and returns boxes+scores (N, 5) and keypoints (N, 5, 2)
        boxes, keypoints = self._scrfd.detect(np.ascontiguousarray(frame_rgb[..., ::-1]), input_size=self.input_size)
        return [DetectedFace(box=b[:4].astype(np.float64), score=float(b[4]), landmarks=k.astype(np.float64))
                for b, k in zip(boxes, keypoints)]


def select_face(faces: Sequence[DetectedFace], frame_height: int, frame_width: int,
                min_eye_distance: float = MIN_EYE_DISTANCE) -> DetectedFace | None:
    """The largest face (box clipped to the frame), ties to the higher score; faces with eyes closer than
    `min_eye_distance` px are ignored (official eye_dist_threshold=5)."""
    best, best_key = None, None
    for face in faces:
        eyes = face.landmarks[0] - face.landmarks[1]
        if float(np.hypot(*eyes)) < min_eye_distance:
            continue
        x1, x2 = np.clip(face.box[[0, 2]], 0, frame_width)
        y1, y2 = np.clip(face.box[[1, 3]], 0, frame_height)
        key = ((x2 - x1) * (y2 - y1), face.score)
        if best_key is None or key > best_key:
            best, best_key = face, key
    return best


def alignment_matrix(landmarks: np.ndarray) -> np.ndarray | None:
    """(2, 3) similarity taking frame pixels to the 512 x 512 FFHQ crop (official: estimateAffinePartial2D, LMEDS);
    None for degenerate landmarks."""
    matrix, _ = cv2.estimateAffinePartial2D(np.asarray(landmarks, dtype=np.float64), FFHQ_TEMPLATE_512,
                                            method=cv2.LMEDS)
    return matrix


def inverse_alignment(matrix: np.ndarray, scale: float, upsampled_face: bool = False) -> np.ndarray:
    """(2, 3) map from face pixels to output pixels at `scale` x the frame.

    For the 512 crop: official get_inverse_affine, plus the 0.5 * scale translation facelib adds "for more precise
    back alignment" when scale > 1. For a face upsampled to 512 s (`upsampled_face`): facelib divides that matrix by
    s and multiplies its translation back, i.e. the crop's own inverse with the translation scaled, and no offset.
    """
    inverse = cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))
    if upsampled_face:
        inverse[:, 2] *= scale
        return inverse
    inverse *= scale
    if scale > 1:
        inverse[:, 2] += 0.5 * scale
    return inverse


def align_faces(frames: torch.Tensor, matrices: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Aligned 512 x 512 crops of frames (N, 3, H, W), RGB levels 0..255 -> (N, 3, 512, 512), rounded levels."""
    border = torch.tensor(CROP_BORDER_RGB, dtype=frames.dtype, device=frames.device)
    return warp_affine(frames, matrices, (FACE_SIZE, FACE_SIZE), border).round_().clamp_(0, 255)


class FaceTrack:
    """Landmarks per frame of one stream: detect, choose the face, else reuse the last one; None before any face."""

    def __init__(self, detector: FaceDetector):
        self.detector = detector
        self.last_landmarks: np.ndarray | None = None
        self.detected_frames = 0
        self.reused_frames = 0

    def __call__(self, frame_rgb: np.ndarray) -> np.ndarray | None:
        face = select_face(self.detector.detect(frame_rgb), frame_rgb.shape[0], frame_rgb.shape[1])
        if face is not None:
            self.last_landmarks = face.landmarks
            self.detected_frames += 1
        elif self.last_landmarks is not None:
            self.reused_frames += 1
        return self.last_landmarks
