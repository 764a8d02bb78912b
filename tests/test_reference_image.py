"""Reference image decoding and the official resize (hallo_core.face.reference_image).

tests/fixtures/frontends/reference_resize_official.safetensors: the official full and face-masked references from
hallo3 `sample_video.py` (resize_for_square_padding / resize_for_rectangle_crop, torchvision 0.19, torch 2.4) for
integer-pattern test images of 1:1, 3:2, 2:3, odd and very wide sizes, at a small video size (32, 48) and at the
official (480, 720) (every 16th pixel stored there), with the rectangle mask `test_box`.
"""

import json
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from hallo_core.dev.tiny_frontends import write_tiny_face_models
from hallo_core.errors import InputError
from hallo_core.face import load_image, prepare_reference
from hallo_core.face.face_mask import box_mask
from hallo_core.face.identity import FaceAnalyzer
from hallo_core.face.reference_image import crop_output_frames, reference_images

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "frontends"
with safe_open(FIXTURES / "reference_resize_official.safetensors", "pt") as _f:
    CASES = json.loads(_f.metadata()["cases"])
    GOLDEN = {k: _f.get_tensor(k) for k in _f.keys()}


def test_image(h, w):
    y, x, c = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    return ((x * 7 + y * 13 + c * 50 + (x * y) // 5 + ((x // 4 + y // 3) % 2) * 60) % 256).astype(np.uint8)


def test_box(h, w):
    return (w // 4, w - w // 5, h // 6, h - h // 4)


test_image.__test__ = test_box.__test__ = False  # helpers, not tests


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["key"])
def test_resize_crop_pad_match_official(case):
    (h, w), size, step = case["image"], tuple(case["size"]), case["subsample"]
    refs = reference_images(test_image(h, w), box_mask(test_box(h, w), h, w), size)
    assert list(refs.full.shape) == case["full_shape"] and refs.full.dtype == torch.float32
    assert refs.is_padded_square == case["square_padded"] == (h == w)
    torch.testing.assert_close(refs.full[..., ::step, ::step], GOLDEN[case["key"] + ".full"], atol=1e-5, rtol=0)
    if case["key"] + ".masked" in GOLDEN:
        torch.testing.assert_close(refs.masked[..., ::step, ::step], GOLDEN[case["key"] + ".masked"], atol=1e-5, rtol=0)


def test_square_padding_and_crop_back():
    img = test_image(37, 37)
    refs = reference_images(img, np.full((37, 37), 255, np.uint8), (96, 144))
    assert refs.output_crop == (24, 96)
    assert torch.all(refs.full[..., :24] == -1) and torch.all(refs.full[..., 120:] == -1)  # black padding
    frames = torch.rand(2, 3, 96, 144)
    assert torch.equal(crop_output_frames(frames, refs.output_crop), frames[..., 24:120])
    comfy = torch.rand(2, 96, 144, 3)
    assert crop_output_frames(comfy, refs.output_crop, channels_last=True).shape == (2, 96, 96, 3)
    assert reference_images(test_image(40, 60), np.zeros((40, 60), np.uint8), (96, 144)).output_crop is None


def test_masked_reference_is_black_outside_the_mask():
    img = test_image(90, 60)
    refs = reference_images(img, np.zeros((90, 60), np.uint8), (32, 48))
    assert torch.all(refs.masked == -1)
    refs = reference_images(img, np.full((90, 60), 255, np.uint8), (32, 48))
    assert torch.equal(refs.masked, refs.full)


# ----- decoding: converted, not refused --------------------------------------------------------------------------


def test_grayscale_rgba_palette_cmyk_16bit(tmp_path):
    rgb = test_image(80, 100)
    gray = rgb[..., 0]
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    out = load_image(tmp_path / "gray.png")
    assert out.shape == (80, 100, 3) and np.array_equal(out, np.repeat(gray[..., None], 3, 2))

    rgba = np.concatenate([rgb, np.full((80, 100, 1), 7, np.uint8)], 2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(load_image(tmp_path / "rgba.png"), rgb)  # alpha dropped, as official convert("RGB")

    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    assert load_image(tmp_path / "palette.png").shape == (80, 100, 3)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert load_image(tmp_path / "cmyk.jpg").shape == (80, 100, 3)

    g16 = (gray.astype(np.uint16) * 257)  # 16-bit gray, full range
    Image.fromarray(g16).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    out16 = load_image(tmp_path / "gray16.png")
    assert np.array_equal(out16[..., 0], gray)  # PIL's convert("RGB") would clip these to 255
    assert np.array_equal(load_image(g16), np.repeat(gray[..., None], 3, 2))  # uint16 array

    import cv2

    rgb16 = rgb.astype(np.uint16) * 256 + 100  # 16 bits per channel
    cv2.imwrite(str(tmp_path / "rgb16.png"), np.ascontiguousarray(rgb16[..., ::-1]))
    assert np.array_equal(load_image(tmp_path / "rgb16.png"), rgb)  # PIL keeps the high byte


def test_comfy_image_tensor_round_trip():
    rgb = test_image(70, 90)
    comfy = torch.from_numpy(rgb).float().div(255)[None]  # IMAGE: [B, H, W, C] float 0..1
    assert np.array_equal(load_image(comfy), rgb)
    assert np.array_equal(load_image(comfy[0].numpy()), rgb)
    gray = torch.from_numpy(rgb[..., :1]).float().div(255)[None]
    assert load_image(gray).shape == (70, 90, 3)


def test_exif_orientation_is_applied(tmp_path):
    rgb = test_image(80, 120)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.fromarray(rgb).save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    assert load_image(tmp_path / "phone.jpg").shape == (120, 80, 3)


# ----- bad input -------------------------------------------------------------------------------------------------


def listing(folder):
    return sorted(p.name for p in pathlib.Path(folder).iterdir())


def test_too_small_for_a_face_crop(tmp_path):
    Image.fromarray(test_image(40, 63)).save(tmp_path / "tiny.png")
    before = listing(tmp_path)
    with pytest.raises(InputError, match="is 63x40 px, too small for a face crop") as info:
        load_image(tmp_path / "tiny.png")
    assert "at least 64 px" in str(info.value) and "\n" not in str(info.value)
    assert listing(tmp_path) == before


def test_unreadable_images(tmp_path):
    with pytest.raises(InputError, match="image file not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "fake.png").write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="is not an image that can be read"):
        load_image(tmp_path / "fake.png")
    with pytest.raises(InputError, match="batch of 2 images"):
        load_image(torch.zeros(2, 64, 64, 3))
    with pytest.raises(InputError, match="NaN"):
        load_image(np.full((64, 64, 3), np.nan, np.float32))
    assert listing(tmp_path) == ["fake.png"]


# ----- the whole reference path with tiny face models -------------------------------------------------------------


@pytest.mark.parametrize("size", [(480, 720), (96, 144)])
def test_prepare_reference_on_a_portrait(tmp_path, size):
    folder = write_tiny_face_models(tmp_path / "face_analysis" / "models")
    analyzer = FaceAnalyzer(tmp_path / "face_analysis", providers=["CPUExecutionProvider"])
    image = load_image(SHARED / "portraits" / "0008.jpg")
    ref = prepare_reference(image, analyzer, size=size)
    assert ref.identity.embedding.shape == (1, 512) and ref.mask.method == "insightface"
    assert ref.images.full.shape == ref.images.masked.shape == (1, 3) + size
    assert ref.images.output_crop == ((size[1] - size[0]) // 2, size[0])
    expected = reference_images(image, ref.mask.mask, size)
    assert torch.equal(ref.images.full, expected.full) and torch.equal(ref.images.masked, expected.masked)
    # outside the (resized) mask box the masked reference is black
    x0, x1, y0, y1 = ref.mask.box
    scale, pad = size[0] / 480, (size[1] - size[0]) // 2
    assert torch.all(ref.images.masked[..., : max(int(y0 * scale) - 2, 0), :] == -1)
    assert torch.all(ref.images.masked[..., :, : pad + max(int(x0 * scale) - 2, 0)] == -1)
    assert ref.notes == [] and sorted(pathlib.Path(folder).iterdir()) == sorted(pathlib.Path(folder).glob("*.onnx"))


def test_prepare_reference_without_a_face(tmp_path):
    write_tiny_face_models(tmp_path)
    analyzer = FaceAnalyzer(tmp_path, providers=["CPUExecutionProvider"])
    flat = np.full((300, 300, 3), 90, np.uint8)  # square: no letterbox bars, so the tiny detector sees nothing
    with pytest.raises(InputError, match="no face found"):
        prepare_reference(flat, analyzer)
    ref = prepare_reference(flat, analyzer, allow_no_face=True, size=(32, 48))
    assert ref.images.output_crop == (8, 32)
    assert ref.mask.method == "whole-image" and torch.equal(ref.images.masked, ref.images.full)
    assert len(ref.notes) == 2
