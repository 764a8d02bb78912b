"""The face mask (hallo_core.face.face_mask) against the official get_face_mask / expand_region.

tests/fixtures/frontends/face_mask_official.json: for MediaPipe face-mesh silhouette landmarks of the 3 portraits and
for synthetic point sets (half pixels, image borders, odd sizes, boxes larger than the image), the box that the
official `expand_region` returns and the extent and pixel count of the mask the official `get_face_mask` draws.
"""

import json
import pathlib

import numpy as np
import pytest

from hallo_core.dev.tiny_frontends import tiny_face_boxes, tiny_landmarks_68, write_tiny_face_models
from hallo_core.errors import InputError, ModelFileError
from hallo_core.face import load_image
from hallo_core.face.face_mask import (
    FOREHEAD_RATIO,
    SILHOUETTE_IDS,
    box_mask,
    build_face_mask,
    expand_region,
    mask_box,
    mediapipe_available,
    silhouette_from_landmarks_68,
)
from hallo_core.face.identity import FaceAnalyzer

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "frontends"
GOLDEN = json.loads((FIXTURES / "face_mask_official.json").read_text())["cases"]
OUTSIDE = {"wider_than_image", "taller_than_image"}  # the official mask degenerates to a strip there


@pytest.mark.parametrize("case", GOLDEN, ids=lambda c: c["name"])
def test_box_and_mask_match_official(case):
    pts, h, w = np.array(case["points"]), case["height"], case["width"]
    lo, hi = np.round(pts.min(0)), np.round(pts.max(0))
    assert list(expand_region([lo[0], hi[0], lo[1], hi[1]], w, h, 1.2)) == case["official_expand_region"]
    box = mask_box(pts, w, h)
    mask = box_mask(box, h, w)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    if case["name"] in OUTSIDE:
        # official: a negative start index makes numpy fill only a strip at the far edge; we clamp to the image
        x0, x1, y0, y1 = case["official_expand_region"]
        assert min(x0, y0) < 0 and box == (max(x0, 0), x1, max(y0, 0), y1)
        assert case["official_mask_pixels"] < (mask > 0).sum()
    else:
        assert list(box) == case["official_mask_box"]
        assert int((mask > 0).sum()) == case["official_mask_pixels"]


def test_silhouette_ids_are_the_official_ones():
    assert len(SILHOUETTE_IDS) == 36 and SILHOUETTE_IDS[0] == 10 and 152 in SILHOUETTE_IDS


def test_estimate_from_68_landmarks():
    lmk = np.zeros((68, 2))
    lmk[0:17] = np.stack([np.linspace(100, 300, 17), 150 + 100 * np.sin(np.linspace(0, np.pi, 17))], 1)  # jaw
    lmk[17:27] = np.stack([np.linspace(120, 280, 10), np.full(10, 120.0)], 1)  # brows
    corners = silhouette_from_landmarks_68(lmk)
    chin, brow = 250.0, 120.0
    np.testing.assert_allclose(corners.min(0), [100, brow - FOREHEAD_RATIO * (chin - brow)])
    np.testing.assert_allclose(corners.max(0), [300, chin])


@pytest.fixture(scope="module")
def analyzer(tmp_path_factory):
    return FaceAnalyzer(write_tiny_face_models(tmp_path_factory.mktemp("face")), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", ["0001", "0003", "0008"])
def test_insightface_mask_on_portraits(analyzer, name):
    image = load_image(SHARED / "portraits" / f"{name}.jpg")
    identity = analyzer.identity(image)
    # the tiny landmark model places its template about the detection box (insightface's crop geometry)
    box = tiny_face_boxes()[0]["bbox"] * 0.75
    centre, scale = (box[:2] + box[2:]) / 2, 0.75 * max(box[2] - box[0], box[3] - box[1])
    landmarks = centre + tiny_landmarks_68()[:, :2] * scale
    np.testing.assert_allclose(identity.face.landmarks_68, landmarks, atol=1e-3)
    mask = build_face_mask(image, landmarks_68=identity.face.landmarks_68, method="insightface")
    assert mask.method == "insightface" and mask.notes == []
    assert mask.box == mask_box(silhouette_from_landmarks_68(landmarks), 480, 480)
    x0, x1, y0, y1 = mask.box
    assert mask.mask[y0:y1, x0:x1].min() == 255 and int(mask.mask.sum()) == 255 * (x1 - x0) * (y1 - y0)
    # the mask contains the detected face and is about 1.2x the silhouette box
    assert x0 <= box[0] + 10 and x1 >= box[2] - 10 and y1 >= box[3] - 30


@pytest.mark.skipif(mediapipe_available(), reason="mediapipe is installed")
def test_auto_falls_back_to_insightface_without_mediapipe(analyzer):
    image = load_image(SHARED / "portraits" / "0003.jpg")
    lmk = analyzer.identity(image).face.landmarks_68
    assert build_face_mask(image, landmarks_68=lmk).method == "insightface"
    assert build_face_mask(image, landmarks_68=lmk, mediapipe_task="/not/used.task").method == "insightface"
    with pytest.raises(ModelFileError, match="needs the mediapipe package: pip install mediapipe"):
        build_face_mask(image, landmarks_68=lmk, method="mediapipe")


def test_mediapipe_without_its_task_file(tmp_path):
    pytest.importorskip("mediapipe")
    with pytest.raises(ModelFileError, match="face_landmarker_v2_with_blendshapes.task"):
        build_face_mask(np.zeros((64, 64, 3), np.uint8), method="mediapipe")


def test_mediapipe_result_is_used_when_given():
    class FakeMediaPipe:  # the official landmarker's silhouette output, without the model
        def __call__(self, image):
            return np.array([[100.2, 90.7], [260.6, 300.1]] + [[150.0, 150.0]] * 34)

    mask = build_face_mask(np.zeros((480, 480, 3), np.uint8), landmarks_68=np.zeros((68, 2)), mediapipe=FakeMediaPipe())
    assert mask.method == "mediapipe" and mask.box == mask_box(FakeMediaPipe()(None), 480, 480) == (84, 276, 70, 320)


def test_mediapipe_finding_no_face_falls_back_with_a_note():
    class NoFace:
        def __call__(self, image):
            return None

    lmk = np.concatenate([np.stack([np.linspace(100, 300, 17), np.linspace(150, 250, 17)], 1),
                          np.full((51, 2), 160.0)])
    mask = build_face_mask(np.zeros((480, 480, 3), np.uint8), landmarks_68=lmk, mediapipe=NoFace())
    assert mask.method == "insightface" and "MediaPipe found no single face" in mask.notes[0]
    with pytest.raises(InputError, match="MediaPipe found no single face"):
        build_face_mask(np.zeros((480, 480, 3), np.uint8), method="mediapipe", mediapipe=NoFace())


def test_no_landmarks():
    image = np.zeros((120, 160, 3), np.uint8)
    with pytest.raises(InputError, match="no face landmarks for the face mask"):
        build_face_mask(image, method="insightface")
    whole = build_face_mask(image, method="insightface", allow_whole_image=True)
    assert whole.method == "whole-image" and whole.box == (0, 160, 0, 120) and whole.mask.min() == 255
    assert "keeps the whole image" in whole.notes[0]


def test_face_outside_the_image():
    lmk = np.zeros((68, 2)) - 500.0
    with pytest.raises(InputError, match="face lies outside the image"):
        build_face_mask(np.zeros((100, 100, 3), np.uint8), landmarks_68=lmk, method="insightface")
