"""Face identity with tiny random antelopev2 stand-ins (hallo_core.face.identity) on the fixture portraits.

The tiny detector reports fixed boxes (in 640x640 detector pixels, see `tiny_face_boxes`) whenever the image is not a
flat colour, so every expected box below follows from insightface's letterbox scale; the tiny recogniser is a fixed
linear map of the aligned 112x112 crop, so its raw embedding can be compared with insightface's own FaceAnalysis.
"""

import pathlib
import shutil

import numpy as np
import pytest
import torch

from hallo_core.dev.tiny_frontends import tiny_face_boxes, write_tiny_face_models
from hallo_core.errors import InputError, ModelFileError
from hallo_core.face import load_image
from hallo_core.face.identity import FaceAnalyzer, find_face_model_dir

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
PORTRAITS = sorted((SHARED / "portraits").glob("*.jpg"))
CPU = ["CPUExecutionProvider"]
TWO_FACES = ({"center": (128, 128), "size": (64, 64), "score": 0.97},  # small, most confident, listed first
             {"center": (352, 288), "size": (224, 256), "score": 0.81})


@pytest.fixture(scope="module")
def face_dir(tmp_path_factory):
    return write_tiny_face_models(tmp_path_factory.mktemp("face") / "face_analysis" / "models")


@pytest.fixture(scope="module")
def analyzer(face_dir):
    return FaceAnalyzer(face_dir, providers=CPU)


def det_scale(h, w, size=640):
    """insightface RetinaFace.detect: the image is letterboxed into size x size."""
    if h / w > 1:
        return size / h
    return int(size * h / w) / h


@pytest.mark.parametrize("portrait", PORTRAITS, ids=lambda p: p.name)
def test_largest_face_raw_embedding_on_portraits(analyzer, portrait):
    image = load_image(portrait)
    identity = analyzer.identity(image)
    expected = tiny_face_boxes()[0]["bbox"] / det_scale(*image.shape[:2])
    assert identity.num_faces == 1 and identity.notes == []
    np.testing.assert_allclose(identity.face.bbox, expected, atol=1e-3)
    emb = identity.embedding
    assert emb.shape == (1, 512) and emb.dtype == torch.float32
    assert abs(float(emb.norm()) - 1.0) > 0.5  # raw, not L2-normalised
    assert identity.face.landmarks_68.shape == (68, 2)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # scikit-image deprecation inside insightface
def test_same_numbers_as_insightface_face_analysis(face_dir, analyzer):
    """The official call: FaceAnalysis(name="", root=face_analysis) .get(BGR), largest box, face["embedding"]."""
    import cv2
    from insightface.app import FaceAnalysis

    image = load_image(PORTRAITS[0])
    official = FaceAnalysis(name="", root=str(pathlib.Path(face_dir).parent), providers=CPU)
    official.prepare(ctx_id=0, det_size=(640, 640))
    faces = official.get(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    face = sorted(faces, key=lambda x: (x["bbox"][2] - x["bbox"][0]) * (x["bbox"][3] - x["bbox"][1]), reverse=True)[0]
    ours = analyzer.identity(image)
    np.testing.assert_array_equal(ours.face.bbox, face["bbox"])
    np.testing.assert_array_equal(ours.embedding.numpy()[0], face["embedding"])
    np.testing.assert_array_equal(ours.face.landmarks_68, face["landmark_3d_68"][:, :2])


@pytest.mark.parametrize("shape", [(480, 720), (720, 480), (333, 517)])
def test_non_square_images(analyzer, shape):
    from PIL import Image

    image = np.asarray(Image.open(PORTRAITS[1]).convert("RGB").resize(shape[::-1]))
    identity = analyzer.identity(image)
    np.testing.assert_allclose(identity.face.bbox, tiny_face_boxes()[0]["bbox"] / det_scale(*shape), atol=1e-3)


def test_several_faces_use_the_largest_and_say_so(tmp_path, caplog):
    folder = write_tiny_face_models(tmp_path, faces=TWO_FACES)
    identity = FaceAnalyzer(folder, providers=CPU).identity(load_image(PORTRAITS[2]))
    assert identity.num_faces == 2
    np.testing.assert_allclose(identity.face.bbox, tiny_face_boxes(TWO_FACES)[1]["bbox"] * 0.75, atol=1e-3)
    assert len(identity.notes) == 1 and identity.notes[0].startswith("2 faces found")
    assert "using the largest one at x 180-348, y 120-312" in identity.notes[0]
    assert "2 faces found" in caplog.text


def test_layouts_official_comfyui_and_plain_folder(tmp_path):
    official = write_tiny_face_models(tmp_path / "pretrained_models" / "face_analysis" / "models")
    comfy = write_tiny_face_models(tmp_path / "ComfyUI" / "models" / "insightface" / "models" / "antelopev2")
    assert find_face_model_dir(tmp_path / "pretrained_models" / "face_analysis") == official
    assert find_face_model_dir(tmp_path / "ComfyUI" / "models" / "insightface") == comfy
    assert find_face_model_dir(comfy) == comfy
    analyzer = FaceAnalyzer(tmp_path / "ComfyUI" / "models" / "insightface", providers=CPU)
    assert analyzer.detector.session.get_providers() == CPU


# ----- bad input --------------------------------------------------------------------------------------------------


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in pathlib.Path(folder).rglob("*"))


def test_no_face_is_refused_unless_allowed(analyzer, caplog):
    flat = np.full((480, 480, 3), 127, np.uint8)
    with pytest.raises(InputError, match="no face found in the reference image") as info:
        analyzer.identity(flat)
    assert "\n" not in str(info.value) and "allow" in str(info.value)
    identity = analyzer.identity(flat, allow_no_face=True)
    assert identity.face is None and identity.num_faces == 0
    assert torch.equal(identity.embedding, torch.zeros(1, 512))
    assert "zero identity embedding" in identity.notes[0] and "zero identity" in caplog.text


def test_face_too_small(tmp_path):
    folder = write_tiny_face_models(tmp_path, faces=({"center": (320, 224), "size": (32, 40), "score": 0.9},))
    before = listing(tmp_path)
    with pytest.raises(InputError, match="only 24x30 px") as info:
        FaceAnalyzer(folder, providers=CPU).identity(load_image(PORTRAITS[0]))
    assert "at least 32 px" in str(info.value)
    assert listing(tmp_path) == before


def test_missing_folder_and_files(tmp_path, face_dir):
    with pytest.raises(ModelFileError, match="face model folder not found") as info:
        FaceAnalyzer(tmp_path / "nothing", providers=CPU)
    assert "pretrained_models/face_analysis/models/" in str(info.value)
    assert "models/insightface/models/antelopev2/" in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="scrfd_10g_bnkps.onnx not found in"):
        FaceAnalyzer(tmp_path / "empty", providers=CPU)
    for name in ("glintr100.onnx", "1k3d68.onnx"):
        folder = tmp_path / name.split(".")[0]
        shutil.copytree(face_dir, folder)
        (folder / name).unlink()
        before = listing(folder)
        with pytest.raises(ModelFileError, match=f"{name} not found in .*antelopev2"):
            FaceAnalyzer(folder, providers=CPU)
        assert listing(folder) == before
    FaceAnalyzer(tmp_path / "1k3d68", providers=CPU, landmarks=False)  # the landmark model is optional


def test_wrong_and_corrupt_model_files(tmp_path, face_dir):
    swapped = tmp_path / "swapped"
    shutil.copytree(face_dir, swapped)
    shutil.copy(swapped / "scrfd_10g_bnkps.onnx", swapped / "glintr100.onnx")
    with pytest.raises(ModelFileError, match="glintr100.onnx is a detection model, not the antelopev2 recognition"):
        FaceAnalyzer(swapped, providers=CPU)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(face_dir, corrupt)
    (corrupt / "scrfd_10g_bnkps.onnx").write_bytes(b"\x08\x01garbage" * 10)
    with pytest.raises(ModelFileError, match="scrfd_10g_bnkps.onnx is not a readable ONNX model"):
        FaceAnalyzer(corrupt, providers=CPU)
