"""Face identity: InsightFace antelopev2 analysis of the reference image (hallo3 `sgm/utils/image_processor.py:54-98`).

The official code runs `insightface.app.FaceAnalysis` (det_size 640x640, det_thresh 0.5) on the original image (RGB ->
BGR), keeps the face with the largest box area and uses its raw, un-normalised 512-d `glintr100` embedding. It silently
uses a zero embedding when no face is found; here that is refused unless the caller allows it.

The models are insightface's own classes, loaded by explicit file name (`scrfd_10g_bnkps.onnx`, `glintr100.onnx`, and
`1k3d68.onnx` for the landmark-based face mask) with explicit ONNX Runtime providers, from either folder layout:

* official: `pretrained_models/face_analysis/` (the files are in its `models/` folder);
* ComfyUI: `models/insightface/` (the files are in `models/antelopev2/`);
* or the folder that holds the .onnx files itself.

Only the largest face is passed through the recogniser and landmark models; insightface's `FaceAnalysis.get` runs them
on every face, and the numbers for the kept face are the same.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError, ModelFileError

logger = logging.getLogger(__name__)

DETECTOR_FILE = "scrfd_10g_bnkps.onnx"
RECOGNIZER_FILE = "glintr100.onnx"
LANDMARK_FILE = "1k3d68.onnx"
EMBEDDING_DIM = 512
DEFAULT_MIN_FACE_SIZE = 32  # px; a smaller face gives no usable identity
_WHERE = ("download the antelopev2 models (scrfd_10g_bnkps.onnx, glintr100.onnx, 1k3d68.onnx) into "
          "pretrained_models/face_analysis/models/ or ComfyUI's models/insightface/models/antelopev2/")


@dataclass
class Face:
    """One detected face in original-image pixels."""

    bbox: np.ndarray  # (4,) x0, y0, x1, y1
    score: float
    kps: np.ndarray  # (5, 2) eyes, nose, mouth corners
    embedding: np.ndarray | None = None  # (512,) raw glintr100 output
    landmarks_68: np.ndarray | None = None  # (68, 2) iBUG layout from 1k3d68 (x, y)

    @property
    def area(self) -> float:
        return float((self.bbox[2] - self.bbox[0]) * (self.bbox[3] - self.bbox[1]))


@dataclass
class Identity:
    """What the transformer's face projection needs, and how it was found.

    `embedding` is (1, 512) float32, raw (not L2-normalised), zeros only when no face was found and that was allowed.
    `face` is the largest face (None if none); `num_faces` counts all detections; `notes` are user-facing warnings.
    """

    embedding: torch.Tensor
    face: Face | None
    num_faces: int
    notes: list[str] = field(default_factory=list)


def find_face_model_dir(path: str | os.PathLike) -> str:
    """The folder that holds the antelopev2 .onnx files, from any of the accepted layouts."""
    path = os.fspath(path)
    for candidate in (path, os.path.join(path, "models"), os.path.join(path, "models", "antelopev2"),
                      os.path.join(path, "antelopev2")):
        if os.path.isfile(os.path.join(candidate, DETECTOR_FILE)) or os.path.isfile(
                os.path.join(candidate, RECOGNIZER_FILE)):
            return candidate
    if not os.path.isdir(path):
        raise ModelFileError(f"face model folder not found: {path}; {_WHERE}")
    raise ModelFileError(f"{DETECTOR_FILE} not found in {path} (nor in its models/ or models/antelopev2/); {_WHERE}")


def default_providers(device: str | torch.device | None = None) -> list[str]:
    """ONNX Runtime providers: CUDA then CPU when the device is a GPU and onnxruntime-gpu is installed, else CPU."""
    ort = require_onnxruntime()
    wants_gpu = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    if wants_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class FaceAnalyzer:
    """insightface's SCRFD detector, glintr100 recogniser and (optionally) the 1k3d68 landmark model."""

    def __init__(self, model_dir: str | os.PathLike, *, providers: list[str] | None = None,
                 device: str | torch.device | None = None, det_size: tuple[int, int] = (640, 640),
                 det_thresh: float = 0.5, landmarks: bool = True):
        folder = find_face_model_dir(model_dir)
        providers = providers or default_providers(device)
        self.model_dir = folder
        self.detector = _load(folder, DETECTOR_FILE, "detection", providers)
        self.recognizer = _load(folder, RECOGNIZER_FILE, "recognition", providers)
        self.landmarker = _load(folder, LANDMARK_FILE, "landmark_3d_68", providers) if landmarks else None
        with _quiet():
            self.detector.prepare(0, input_size=det_size, det_thresh=det_thresh)
            self.recognizer.prepare(0)
            if self.landmarker is not None:
                self.landmarker.prepare(0)

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        """All faces, largest box first (the official sort: by area, descending, stable)."""
        bgr = np.ascontiguousarray(image_rgb[..., ::-1])
        bboxes, kpss = self.detector.detect(bgr, max_num=0, metric="default")
        faces = [Face(bbox=bboxes[i, :4].astype(np.float32), score=float(bboxes[i, 4]),
                      kps=kpss[i].astype(np.float32) if kpss is not None else None) for i in range(bboxes.shape[0])]
        return sorted(faces, key=lambda f: f.area, reverse=True)

    def describe(self, image_rgb: np.ndarray, face: Face) -> Face:
        """Fill in the raw embedding and the 68 landmarks of `face` (insightface's own model code)."""
        from insightface.app.common import Face as InsightFace

        bgr = np.ascontiguousarray(image_rgb[..., ::-1])
        record = InsightFace(bbox=face.bbox, kps=face.kps, det_score=face.score)
        with warnings.catch_warnings():  # scikit-image deprecates the SimilarityTransform call insightface makes
            warnings.simplefilter("ignore", FutureWarning)
            face.embedding = np.asarray(self.recognizer.get(bgr, record), dtype=np.float32).reshape(-1)
            if self.landmarker is not None:
                face.landmarks_68 = np.asarray(self.landmarker.get(bgr, record), dtype=np.float32)[:, :2]
        return face

    def identity(self, image_rgb: np.ndarray, *, allow_no_face: bool = False,
                 min_face_size: int = DEFAULT_MIN_FACE_SIZE) -> Identity:
        """The largest face's raw embedding; refuses a missing or too-small face unless `allow_no_face`."""
        faces = self.detect(image_rgb)
        notes: list[str] = []
        if not faces:
            if not allow_no_face:
                raise InputError("no face found in the reference image; use a photo with one clearly visible, "
                                 "frontal face (or allow a missing face to render with a zero identity, as the "
                                 "official code silently does)")
            notes.append("no face found in the reference image: using a zero identity embedding (allowed by the "
                         "caller); the likeness will not be preserved")
            logger.warning(notes[-1])
            return Identity(torch.zeros(1, EMBEDDING_DIM), None, 0, notes)
        face = faces[0]
        width, height = face.bbox[2] - face.bbox[0], face.bbox[3] - face.bbox[1]
        if min(width, height) < min_face_size:
            raise InputError(f"the face in the reference image is only {width:.0f}x{height:.0f} px; use an image in "
                             f"which the face is at least {min_face_size} px wide and high")
        if len(faces) > 1:
            x0, y0, x1, y1 = (int(round(v)) for v in face.bbox)
            notes.append(f"{len(faces)} faces found in the reference image; using the largest one at x {x0}-{x1}, "
                         f"y {y0}-{y1}")
            logger.warning(notes[-1])
        self.describe(image_rgb, face)
        return Identity(torch.from_numpy(face.embedding.copy()).reshape(1, EMBEDDING_DIM), face, len(faces), notes)


def load_face_analyzer(model_dir: str | os.PathLike, *, providers: list[str] | None = None,
                       device: str | torch.device | None = None, landmarks: bool = True) -> FaceAnalyzer:
    return FaceAnalyzer(model_dir, providers=providers, device=device, landmarks=landmarks)


def _load(folder: str, file: str, task: str, providers: list[str]):
    path = os.path.join(folder, file)
    if not os.path.isfile(path):
        raise ModelFileError(f"{file} not found in {folder}; {_WHERE}")
    require_onnxruntime()
    try:
        from insightface.model_zoo import model_zoo
    except ImportError as exc:
        raise ModelFileError(f"insightface cannot be imported ({exc}); install insightface==0.7.3") from None
    try:
        with _quiet():
            model = model_zoo.get_model(path, providers=providers)
    except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
        raise ModelFileError(f"{path} is not a readable ONNX model ({' '.join(str(exc).split())[:160]}); "
                             f"download it again ({_WHERE})") from None
    if model is None or model.taskname != task:
        found = "an unrecognised model" if model is None else f"a {model.taskname} model"
        raise ModelFileError(f"{path} is {found}, not the antelopev2 {task} model; {_WHERE}")
    return model


def require_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ModelFileError("onnxruntime is not installed: install onnxruntime-gpu (CUDA 13: >=1.27, CUDA 12: "
                             "<1.27) or onnxruntime (CPU), never both") from None
    return onnxruntime


@contextlib.contextmanager
def _quiet():
    """insightface prints every model it loads; keep the console for our own messages."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield
