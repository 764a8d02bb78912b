"""Hallo / Hallo2 (SD1.5-UNet) preprocessing against the official code: hierarchical masks, the square reference, the
16-frame audio windows and padding, and Hallo2's 60-second pieces.

shared/fixtures/golden/hallo_unet_preprocess.{json,safetensors} (beside this repository) were made by running the
official hallo (8fd7c57) and hallo2 (58a9aa6) preprocessing with synthetic MediaPipe landmarks, faces and signals: the
cached mask images, the mask pyramids and the face-locator image for 4 landmark sets (square, non-square, face at the
edge with no InsightFace face and a zero-size lip box, face filling the image), `expand_region` cases, the
`sep_background` lookup, `process_audio_emb` windows, the v1 padding arithmetic with one normalised + padded encoder
input, the v2 piece padding and pydub's piece count. Read the json for what each entry means.
"""

import json
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from hallo_core.audio import Audio, decode_audio, speech_16k_mono
from hallo_core.audio.clip_windows import window_indices
from hallo_core.audio.long_audio_pieces import encode_in_pieces, piece_frames, pydub_piece_bounds
from hallo_core.audio.unet_windows import (
    prepare_unet_speech,
    unet_clip_audio,
    unet_num_clips,
    unet_output_frames,
    unet_window_rows,
)
from hallo_core.audio.wav2vec_features import (
    encoder_input,
    frame_count,
    frame_windows,
    load_wav2vec,
    padded_frame_count,
)
from hallo_core.dev.tiny_frontends import tiny_face_boxes, write_tiny_face_models, write_tiny_wav2vec
from hallo_core.errors import InputError, ModelFileError
from hallo_core.face import load_image
from hallo_core.face.face_mask import (
    LIP_IDS,
    SILHOUETTE_IDS,
    expand_region,
    mediapipe_available,
    silhouette_from_landmarks_68,
)
from hallo_core.face.hierarchical_masks import (
    background_mask,
    blur_mask,
    build_hierarchical_masks,
    masks_from_landmarks,
    masks_from_landmarks_68,
    masks_from_regions,
    pyramid_sides,
)
from hallo_core.face.identity import FaceAnalyzer
from hallo_core.face.square_reference import make_square, square_crop_box, unet_reference_pixels
from hallo_core.face.unet_reference import prepare_unet_reference

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
GOLDEN = SHARED / "golden" / "hallo_unet_preprocess"
META = json.loads(GOLDEN.with_suffix(".json").read_text())
T = load_file(GOLDEN.with_suffix(".safetensors"))
CASES = sorted(META["mask_cases"])
MAPS = ("lip_mask", "face_mask", "face_mask_blur", "sep_lip", "sep_background", "sep_face")


def case_masks(case, **kwargs):
    info = META["mask_cases"][case]
    w, h = info["image_size_wh"]
    assert info["lip_expand_ratio"] == 2.0
    return masks_from_landmarks(T[f"mask.{case}.landmarks"].numpy(), w, h,
                                face_expand_ratio=info["face_expand_ratio"], **kwargs)


def one_line(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg and msg
    return msg


# ----- hierarchical masks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_masks_match_official_bit_exactly(case):
    info, m = META["mask_cases"][case], case_masks(case)
    assert list(m.face_region_request) == info["face_expand_region_result_x0x1y0y1"]
    assert list(m.lip_region_request) == info["lip_expand_region_result_x0x1y0y1"]
    assert m.face_box == tuple(info["face_box_x0x1y0y1"])
    assert m.lip_box == (None if info["lip_box_x0x1y0y1"] is None else tuple(info["lip_box_x0x1y0y1"]))
    for name in MAPS:
        golden = T[f"mask.{case}.png.{name}"].numpy()
        assert m.maps[name].dtype == np.uint8 and np.array_equal(m.maps[name], golden), name
    assert m.method == "mediapipe" and m.frame_size == 512
    region = T[f"mask.{case}.face_region_x255"]
    assert m.face_region.shape == (1, 3, 512, 512) and m.face_region.dtype == torch.float32
    assert torch.equal(m.face_region[0], (region.float() / 255).expand(3, -1, -1))
    for kind in ("full", "face", "lip"):
        levels = getattr(m, kind)
        assert [t.shape[1] for t in levels] == [s * s for s in info["pyramid_sides"]]
        for level, tensor in enumerate(levels):
            assert torch.equal(tensor, T[f"mask.{case}.{kind}_mask.{level}"]), (kind, level)


def test_landmark_boxes_use_the_official_ids_and_rounding():
    for case in CASES:
        info, lm = META["mask_cases"][case], T[f"mask.{case}.landmarks"].numpy()
        for ids, key in ((LIP_IDS, "lip_landmark_minmax_rounded_xy"), (SILHOUETTE_IDS, "face_landmark_minmax_rounded_xy")):
            pts = lm[list(ids)]
            assert [list(np.round(pts.min(0))), list(np.round(pts.max(0)))] == info[key]


def test_face_filling_the_image_reproduces_the_negative_start_quirk():
    m = case_masks("d_face_fills_image")
    assert m.face_region_request == (-92, 512, -86, 512) and m.face_box == (420, 512, 426, 512)
    assert "only the far-edge part (420, 512, 426, 512) is marked" in m.notes[0]
    assert int((m.maps["face_mask"] > 0).sum()) == 92 * 86
    clamped = case_masks("d_face_fills_image", clamp_boxes=True)
    assert clamped.face_box == (0, 512, 0, 512) and "clamped to (0, 512, 0, 512)" in clamped.notes[0]
    # a box covering the whole image blurs to a constant, which MINMAX turns into zeros: no expression mask
    assert not clamped.maps["face_mask_blur"].any() and torch.all(clamped.full[0] == 1)
    assert any("normalises to zero" in n for n in clamped.notes)


def test_zero_size_lip_box_gives_an_empty_lip_mask():
    m = case_masks("c_edge_noface_zero_lip")
    assert m.lip_box is None and all(not t.any() for t in m.lip)
    assert any("lip box is empty" in n for n in m.notes)
    assert META["mask_cases"]["c_edge_noface_zero_lip"]["insightface_faces"] == 0  # the masks need no InsightFace face


@pytest.mark.parametrize("case", META["expand_region_cases"], ids=lambda c: str(c["region_minx_maxx_miny_maxy"]))
def test_expand_region_cases(case):
    got = expand_region(case["region_minx_maxx_miny_maxy"], case["image_w"], case["image_h"], case["expand_ratio"])
    assert list(got) == case["result"] and all(isinstance(v, int) for v in got)


def test_sep_background_truncates_like_the_official_float64_expression():
    lut = META["sep_background_lut"]
    got = background_mask(np.arange(256, dtype=np.uint8))
    assert got.dtype == np.uint8 and got.tolist() == lut["values"]
    assert np.flatnonzero(got != 255 - np.arange(256)).tolist() == lut["entries_not_255_minus_v"]


def test_blur_of_a_constant_mask_is_zero():
    const = META["blur_mask_constant_input"]
    assert int(blur_mask(np.zeros((512, 512), np.uint8), 51).max()) == const["zeros_512"]
    assert np.unique(blur_mask(np.full((512, 512), 255, np.uint8), 51)).tolist() == const["ones255_512_unique_values"]


def test_frame_size_sets_the_pyramid_and_the_face_region():
    assert pyramid_sides(512) == [64, 32, 16, 8] and pyramid_sides(128) == [16, 8, 4, 2]
    with pytest.raises(ValueError, match="multiple of 64"):
        pyramid_sides(100)
    case = "b_nonsquare_640x560"
    m = case_masks(case, frame_size=128)
    for kind, png in (("full", "sep_background"), ("face", "sep_face"), ("lip", "sep_lip")):
        for level, side in enumerate([16, 8, 4, 2]):
            pil = Image.fromarray(T[f"mask.{case}.png.{png}"].numpy()).resize((side, side), Image.BILINEAR)
            assert torch.equal(getattr(m, kind)[level], torch.from_numpy(np.array(pil)).float().div(255).view(1, -1))
    pil = Image.fromarray(T[f"mask.{case}.png.face_mask"].numpy()).convert("RGB").resize((128, 128), Image.BILINEAR)
    assert torch.equal(m.face_region[0], torch.from_numpy(np.array(pil)).permute(2, 0, 1).float().div(255))
    full, _face, lip = m.repeated(16)
    assert full[0].shape == (16, 256) and torch.equal(lip[3], m.lip[3].repeat(16, 1))


def ibug_68(face_box, lip_box):
    """68 points whose jaw/brows span `face_box` (x0, x1, brow_y, chin_y) and whose outer lip spans `lip_box`."""
    x0, x1, brow, chin = face_box
    pts = np.zeros((68, 2))
    pts[0:17] = np.stack([np.linspace(x0, x1, 17), brow + 40 + (chin - brow - 40) * np.sin(np.linspace(0, np.pi, 17))], 1)
    pts[17:27] = np.stack([np.linspace(x0 + 10, x1 - 10, 10), np.full(10, float(brow))], 1)
    pts[27:48] = [(x0 + x1) / 2, (brow + chin) / 2]
    lx0, lx1, ly0, ly1 = lip_box
    a = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    pts[48:60] = np.stack([(lx0 + lx1) / 2 - (lx1 - lx0) / 2 * np.cos(a), (ly0 + ly1) / 2 - (ly1 - ly0) / 2 * np.sin(a)], 1)
    pts[60:68] = [(lx0 + lx1) / 2, (ly0 + ly1) / 2]
    return pts


def test_insightface_landmarks_give_the_silhouette_estimate_and_the_outer_lip_box():
    lmk = ibug_68((150, 350, 160, 420), (210, 290, 350, 390))
    m = masks_from_landmarks_68(lmk, 512, 512)
    face = expand_region([150, 350, round(160 - 0.19 * 260), 420], 512, 512, 1.2)
    lip = expand_region([210, 290, 350, 390], 512, 512, 2.0)
    assert m.method == "insightface" and m.face_region_request == face and m.lip_region_request == lip
    ref = masks_from_regions(face, lip, 512, 512, method="x")
    for kind in ("full", "face", "lip"):
        assert all(torch.equal(a, b) for a, b in zip(getattr(m, kind), getattr(ref, kind)))
    np.testing.assert_allclose(silhouette_from_landmarks_68(lmk).min(0), [150, 160 - 0.19 * 260])


class FakeMediaPipe:
    """The official landmarker's output without the model: fixed 478 points, or no face."""

    def __init__(self, points):
        self.points = points

    def landmarks(self, image):
        return self.points


def test_build_masks_chooses_mediapipe_then_insightface():
    lm = T["mask.a_square_512.landmarks"].numpy()
    image = np.zeros((512, 512, 3), np.uint8)
    lmk = ibug_68((150, 350, 160, 420), (210, 290, 350, 390))
    m = build_hierarchical_masks(image, landmarks_68=lmk, mediapipe=FakeMediaPipe(lm))
    assert m.method == "mediapipe" and torch.equal(m.full[0], T["mask.a_square_512.full_mask.0"])
    m = build_hierarchical_masks(image, landmarks_68=lmk, mediapipe=FakeMediaPipe(None))
    assert m.method == "insightface" and "MediaPipe found no single face" in m.notes[0]
    m = build_hierarchical_masks(image, landmarks_68=lmk, method="insightface", mediapipe=FakeMediaPipe(lm))
    assert m.method == "insightface"
    with pytest.raises(InputError, match="MediaPipe found no single face") as info:
        build_hierarchical_masks(image, method="mediapipe", mediapipe=FakeMediaPipe(None))
    one_line(info)


def test_no_face_is_refused_unless_allowed():
    image = np.zeros((300, 300, 3), np.uint8)
    with pytest.raises(InputError, match="no face landmarks") as info:
        build_hierarchical_masks(image, method="insightface")
    one_line(info)
    m = build_hierarchical_masks(image, method="insightface", allow_no_face=True)
    assert m.method == "whole-image" and m.face_box == (0, 300, 0, 300) and m.lip_box is None
    assert torch.all(m.face_region == 1) and all(torch.all(t == 1) for t in m.full)
    assert all(not t.any() for t in m.face + m.lip) and "whole image" in m.notes[0]


@pytest.mark.skipif(mediapipe_available(), reason="mediapipe is installed")
def test_mediapipe_masks_without_the_package():
    with pytest.raises(ModelFileError, match="pip install mediapipe") as info:
        build_hierarchical_masks(np.zeros((64, 64, 3), np.uint8), method="mediapipe")
    one_line(info)


def test_degenerate_face_landmarks_are_refused():
    with pytest.raises(InputError, match="face box is empty") as info:
        masks_from_landmarks_68(np.full((68, 2), 200.0), 512, 512)
    one_line(info)
    # official: a box outside the image is slid back inside it, not emptied
    outside = masks_from_landmarks_68(ibug_68((150, 350, 160, 420), (210, 290, 350, 390)) + 2000, 512, 512)
    assert outside.face_box[1] == 512 and outside.face_box[3] == 512


# ----- reference image ----------------------------------------------------------------------------------------------


def pattern(h, w):
    y, x, c = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    return ((x * 7 + y * 13 + c * 50 + (x * y) // 5 + ((x // 4 + y // 3) % 2) * 60) % 256).astype(np.uint8)


@pytest.mark.parametrize("size,frame", [(300, 512), (512, 512), (700, 512), (333, 128)])
def test_square_reference_is_pil_bilinear(size, frame):
    img = pattern(size, size)
    ref = unet_reference_pixels(img, frame)
    pil = np.asarray(Image.fromarray(img).resize((frame, frame), Image.BILINEAR), np.float32) / np.float32(255)
    expected = (torch.from_numpy(pil).permute(2, 0, 1)[None] - 0.5) / 0.5
    assert ref.shape == (1, 3, frame, frame) and ref.dtype == torch.float32 and torch.equal(ref, expected)
    if size == frame:  # no resampling at all
        assert torch.equal(ref, torch.from_numpy(img).permute(2, 0, 1)[None].float().div(255).sub(0.5).div(0.5))


def test_stretch_option_matches_official_non_square_reference():
    img = T["mask.b_nonsquare_640x560.image_rgb_uint8"].numpy()
    square = make_square(img, non_square="stretch")
    assert square.image is img and square.crop is None and square.stretched
    assert "stretched to a square" in square.notes[0] and "1.14x narrower" in square.notes[0]
    assert torch.equal(unet_reference_pixels(square.image)[0], T["mask.b_nonsquare_640x560.pixel_values_ref_img"])


def test_non_square_default_is_a_face_centred_square_crop():
    img = pattern(560, 640)
    square = make_square(img, face_bbox=(280, 100, 400, 260))  # face centre x 340
    assert square.crop == (60, 0, 560) and square.offset == (60, 0) and not square.stretched
    assert np.array_equal(square.image, img[:, 60:620])
    assert "560x560 square at x 60, y 0 around the face" in square.notes[0]
    assert make_square(img, face_bbox=(400, 100, 520, 260)).crop == (80, 0, 560)  # kept inside the image
    assert make_square(img).crop == (40, 0, 560)  # no face: centre
    assert square_crop_box(300, 900, (10, 700, 200, 890)) == (0, 600, 300)  # pushed back inside
    tight = make_square(pattern(400, 600), face_bbox=(50, 20, 520, 380))
    assert "does not fit entirely" in tight.notes[1]
    same = make_square(pattern(256, 256), non_square="crop", face_bbox=(0, 0, 10, 10))
    assert same.crop is None and same.notes == []
    with pytest.raises(InputError, match="crop, stretch") as info:
        make_square(img, non_square="pad")
    one_line(info)


@pytest.fixture(scope="module")
def analyzer(tmp_path_factory):
    return FaceAnalyzer(write_tiny_face_models(tmp_path_factory.mktemp("face")), providers=["CPUExecutionProvider"])


def test_prepare_unet_reference_on_a_portrait_and_its_non_square_crop(analyzer):
    portrait = load_image(SHARED / "portraits" / "0001.jpg")
    ref = prepare_unet_reference(portrait, analyzer, mask_method="insightface")
    assert ref.square.crop is None and ref.pixels.shape == (1, 3, 512, 512) and ref.face_embedding.shape == (1, 512)
    assert torch.equal(ref.pixels, unet_reference_pixels(portrait))
    expected = masks_from_landmarks_68(ref.identity.face.landmarks_68, 480, 480)
    assert ref.masks.face_box == expected.face_box and torch.equal(ref.masks.face[0], expected.face[0])
    assert ref.face_region.shape == (1, 3, 512, 512)

    wide = np.ascontiguousarray(portrait[40:400])  # 480 x 360
    ref = prepare_unet_reference(wide, analyzer, mask_method="insightface", frame_size=128)
    face = ref.identity.face
    x0, y0, side = ref.square.crop
    assert side == 360 and y0 == 0 and x0 == min(max(round((face.bbox[0] + face.bbox[2]) / 2 - 180), 0), 120)
    shifted = masks_from_landmarks_68(face.landmarks_68 - np.array([x0, 0]), 360, 360, frame_size=128)
    assert ref.masks.face_box == shifted.face_box and torch.equal(ref.masks.lip[1], shifted.lip[1])
    assert ref.pixels.shape == (1, 3, 128, 128) and torch.equal(ref.pixels, unet_reference_pixels(ref.square.image, 128))
    assert any("not square" in n for n in ref.notes)
    stretched = prepare_unet_reference(wide, analyzer, mask_method="insightface", non_square="stretch")
    assert stretched.square.stretched and stretched.masks.face_box == masks_from_landmarks_68(
        face.landmarks_68, 480, 360).face_box
    assert torch.equal(stretched.face_embedding, ref.face_embedding)  # always from the original image


def test_reference_without_a_face(analyzer):
    blank = np.full((256, 256, 3), 128, np.uint8)  # the tiny detector finds nothing on a flat image
    with pytest.raises(InputError, match="no face found") as info:
        prepare_unet_reference(blank, analyzer, mask_method="insightface")
    one_line(info)
    ref = prepare_unet_reference(blank, analyzer, mask_method="insightface", allow_no_face=True)
    assert not ref.face_embedding.any() and ref.masks.method == "whole-image" and len(ref.notes) >= 2
    assert tiny_face_boxes()  # the tiny models are what the fixture above loaded


# ----- audio: windows, v1 padding --------------------------------------------------------------------------------


@pytest.mark.parametrize("n", sorted(int(k) for k in META["process_audio_emb_windows"]["by_N"]))
def test_process_audio_emb_windows(n):
    golden = META["process_audio_emb_windows"]["by_N"][str(n)]
    assert window_indices(n).tolist() == golden
    layers = torch.arange(float(n))[:, None, None].expand(n, 3, 2).contiguous()
    assert frame_windows(layers)[:, :, 0, 0].tolist() == golden
    assert unet_num_clips(n) == n // 16
    if n >= 16:
        assert unet_window_rows(0, n).tolist() == golden[:16]
        assert torch.equal(unet_clip_audio(layers, 0), frame_windows(layers)[:16])
    else:
        with pytest.raises(ValueError, match="does not exist"):
            unet_window_rows(0, n)


@pytest.mark.parametrize("case", [c for c in META["audio_v1_padding"]["cases"] if c["samples"] > 1],
                         ids=lambda c: str(c["samples"]))
def test_v1_padding_arithmetic(case):
    length = frame_count(case["samples"])
    assert length == case["audio_length"]
    assert (length != case["samples"] / 640) == (case["float_ceil_trap"] or case["samples"] % 640 != 0)
    frames = padded_frame_count(length, 16)
    assert frames == case["seq_len_after_pad"] == case["emb_frames"]
    signal, audio_length = encoder_input(np.ones(case["samples"], np.float32), frames)
    assert audio_length == length and signal.numel() == case["encoder_input_samples"]
    assert signal.numel() - case["samples"] == case["pad_samples"] and not signal[case["samples"]:].any()
    assert unet_num_clips(frames) == case["clips"]
    assert min(unet_num_clips(frames) * 16, length) == case["output_frames"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return load_wav2vec(write_tiny_wav2vec(tmp_path_factory.mktemp("wav2vec") / "wav2vec2-base-960h"))


def test_v1_encoder_input_matches_official(encoder):
    """The official normalised, zero-padded wav2vec input for a 17-frame signal (the real preprocessor config)."""
    golden = T["audio.v1_17frames.encoder_input"]
    signal = T["audio.v1_17frames.signal"].numpy()
    padded, length = encoder_input(encoder.normalize(signal), padded_frame_count(frame_count(signal.size), 16))
    assert length == 17 and padded.shape == golden.shape == (20480,) and padded.dtype == torch.float32
    assert not padded[signal.size:].any() and not golden[signal.size:].any()
    # float32 mean/variance: numpy 1.26 (fixture) and 2.x sum in a different order (about 1 ulp)
    torch.testing.assert_close(padded, golden, atol=3e-8, rtol=0)


def test_one_sample_and_silent_audio_are_refused(encoder):
    # the official code crashes on one sample ("len() of unsized object")
    assert next(c for c in META["audio_v1_padding"]["cases"] if c["samples"] == 1)["official_code_raises"]
    for pieces in (False, True):
        with pytest.raises(InputError, match="shorter than one video frame") as info:
            prepare_unet_speech(Audio(torch.full((1, 1), 0.5), 16000), encoder, long_audio_pieces=pieces)
        one_line(info)
    for pieces in (False, True):
        with pytest.raises(InputError, match="silent") as info:
            prepare_unet_speech(Audio(torch.zeros(1, 32000), 16000), encoder, long_audio_pieces=pieces)
        one_line(info)


def test_whole_file_speech_in_16_frame_clips(encoder):
    audio = decode_audio(SHARED / "portraits" / "0008.wav")
    audio = Audio(audio.samples[:, :int(48000 * 1.37)].clone(), 48000)
    speech = prepare_unet_speech(audio, encoder)
    features = speech.features
    direct = encoder(speech_16k_mono(audio), frames_per_clip=16)
    assert features.audio_length == direct.audio_length == 35 and features.num_frames == 48
    assert torch.equal(features.layers, direct.layers) and speech.pieces is None and speech.vocals is None
    windows = frame_windows(features.layers)  # official process_audio_emb on the padded N
    for t in range(unet_num_clips(features)):
        clip = unet_clip_audio(features, t, dtype=torch.float16)
        assert clip.shape == (16, 5, 12, 32) and torch.equal(clip, windows[16 * t:16 * t + 16].half())
    assert unet_output_frames(features) == 35


# ----- audio: Hallo2 pieces -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", META["audio_v2_pieces"]["cases"], ids=lambda c: c["case"])
def test_v2_piece_padding_quirk(case):
    total = sum(p["samples"] for p in case["pieces"])
    bounds = pydub_piece_bounds(total, 16000)
    assert [end - start for start, end in bounds] == [p["samples"] for p in case["pieces"]]
    processed, frames = 0, []
    for index, piece in enumerate(case["pieces"]):
        last = index == len(case["pieces"]) - 1
        assert piece["padding"] == last and piece["processed_length_before"] == processed
        length = frame_count(piece["samples"])
        assert length == piece["length"]
        n = piece_frames(length, processed, 16, last)
        assert n == piece["seq_len_after_pad"] == piece["emb_frames"]
        signal, _ = encoder_input(np.ones(piece["samples"], np.float32), n)
        assert signal.numel() - piece["samples"] == piece["pad_samples"]
        processed += length
        frames.append(n)
    assert processed == case["audio_length"] and sum(frames) == case["N_concat"]
    assert unet_num_clips(sum(frames)) == case["clips"] and case["clips"] * 16 == case["frames_generated"]
    assert min(case["frames_generated"], processed) == case["output_frames"]


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_pydub_piece_count(rate):
    for item in META["cut_audio_segments"]:
        samples = item["ms"] * rate // 1000
        assert len(pydub_piece_bounds(samples, rate)) == item["segments"], item
    # the length rounds to whole ms; the last piece ends at that rounding (zero-filled past the file)
    assert pydub_piece_bounds(44100 * 61 + 30, 44100) == [(0, 2646000), (2646000, 2690144)]


def test_pieces_are_encoded_each_on_its_own(encoder):
    """1-second pieces (the official 60 s scaled down): 1.28 s = 25 + 8 frames; the last piece pads by the quirk."""
    rng = np.random.default_rng(5)
    audio = Audio(torch.from_numpy((rng.standard_normal((1, 20480)) * 0.2).astype(np.float32)), 16000)
    speech = prepare_unet_speech(audio, encoder, long_audio_pieces=True, piece_seconds=1)
    bounds = [(p.start, p.end) for p in speech.pieces]
    assert bounds == [(0, 16000), (16000, 20480)]
    assert [(p.audio_length, p.frames) for p in speech.pieces] == [(25, 25), (8, 23)]  # all_len 33 -> pad 15
    first = encoder(speech_16k_mono(Audio(audio.samples[:, :16000], 16000)), frames_per_clip=1)  # no padding
    last_values = encoder.normalize(speech_16k_mono(Audio(audio.samples[:, 16000:], 16000)))
    last = encoder.encode_normalized(last_values, 23, frames_per_clip=16)
    assert torch.equal(speech.features.layers, torch.cat([first.layers, last.layers]))
    assert speech.features.audio_length == 33 and unet_num_clips(speech.features) == 3
    assert unet_output_frames(speech.features) == 33
    whole = prepare_unet_speech(audio, encoder)
    assert whole.features.num_frames == 32  # one pass: 32 frames, 2 clips; the pieces render an extra clip
    assert not torch.allclose(whole.features.layers[:25], first.layers, atol=1e-3)  # per-piece normalisation
    single = prepare_unet_speech(audio, encoder, long_audio_pieces=True, piece_seconds=60)  # <= 60 s: as v1
    assert len(single.pieces) == 1 and torch.equal(single.features.layers, whole.features.layers)


def test_pieces_with_an_unrendered_tail_say_so(encoder):
    audio = Audio(torch.from_numpy(np.random.default_rng(6).standard_normal((1, 26240)).astype(np.float32) * 0.2),
                  16000)  # 1 s + 16 frames: the last piece needs no pad, the total (41) is not whole clips
    speech = prepare_unet_speech(audio, encoder, long_audio_pieces=True, piece_seconds=1)
    assert [(p.audio_length, p.frames) for p in speech.pieces] == [(25, 25), (16, 16)]
    assert unet_num_clips(speech.features) == 2 and unet_output_frames(speech.features) == 32
    assert any("last 9 frames" in n for n in speech.notes)


def test_a_silent_piece_is_named(encoder):
    class Separator:  # stands in for Kim_Vocal_2: refuses silent input as VocalSeparator does
        def separate(self, audio, progress=None):
            if not audio.samples.any():
                raise InputError("the audio is silent (all samples are zero); use a recording with speech")
            return Audio(audio.samples * 0.5, audio.sample_rate)

    samples = torch.zeros(1, 40000)
    samples[:, :16000] = torch.from_numpy(np.random.default_rng(7).standard_normal(16000).astype(np.float32) * 0.2)
    with pytest.raises(InputError, match=r"piece 2 of 3 \(1.0-2.0 s\): the audio is silent") as info:
        encode_in_pieces(Audio(samples, 16000), encoder, Separator(), piece_seconds=1)
    assert "pieces off" in one_line(info)
    ok = encode_in_pieces(Audio(samples[:, :20000].clone() + 0.01, 16000), encoder, Separator(), piece_seconds=1)
    assert ok.vocals.num_samples == 20000 and torch.equal(ok.vocals.samples, (samples[:, :20000] + 0.01) * 0.5)


def test_unet_vocal_separation_does_not_amplify_quiet_audio(tmp_path):
    """Hallo / Hallo2 pin audio-separator 0.17.2: peaks above 0.9 are lowered as in 0.21.2, quiet audio is not raised."""
    from hallo_core.audio.vocal_separation import load_vocal_separator
    from hallo_core.dev.tiny_frontends import write_tiny_vocal_separator

    path = write_tiny_vocal_separator(tmp_path / "Kim_Vocal_2.onnx")
    hallo3 = load_vocal_separator(path, providers=["CPUExecutionProvider"])
    unet = load_vocal_separator(path, providers=["CPUExecutionProvider"], amplify_quiet=False)
    assert hallo3.params.amplification_threshold == 0.6 and unet.params.amplification_threshold is None
    wave = torch.from_numpy(np.random.default_rng(8).standard_normal((2, 44100)).astype(np.float32))
    wave = wave / wave.abs().max()
    lsb = 2 / 32768  # the vocals are 16-bit values (truncated)
    # the tiny separator is linear, so without amplification twice the input gives twice the vocals ...
    a, b = (unet.separate(Audio(wave * k, 44100)).samples for k in (0.1, 0.2))
    assert b.abs().max() < 0.6 and torch.allclose(b, 2 * a, atol=2 * lsb, rtol=0)
    # ... while Hallo3's separator raises both to the same peak
    a, b = (hallo3.separate(Audio(wave * k, 44100)).samples for k in (0.1, 0.2))
    assert torch.allclose(a, b, atol=lsb, rtol=0) and abs(float(a.abs().max()) - 0.6) < 1e-3
