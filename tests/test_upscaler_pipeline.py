"""The Hallo2 upscaler's video pipeline: windows, streaming, alignment, paste-back, background, detector, files.

Image operations are checked against OpenCV (the official pipeline's library); the paste-back against a whole-frame
OpenCV/numpy rendering of facelib's steps.
"""

import gc
import importlib.util

import av
import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hallo_core.dev.tiny_frontends import tiny_face_boxes, write_tiny_face_models
from hallo_core.errors import InputError, ModelFileError
from hallo_core.upscaler.background import BackgroundUpscaler, load_background_model
from hallo_core.upscaler.face_alignment import (
    FFHQ_TEMPLATE_512,
    DetectedFace,
    FaceTrack,
    ScrfdFaceDetector,
    align_faces,
    alignment_matrix,
    inverse_alignment,
    select_face,
)
from hallo_core.upscaler.face_parsing import ParseNet, ParseNetConfig, parsing_mask, random_parsenet_state_dict
from hallo_core.upscaler.image_ops import erode, gaussian_blur, resize_lanczos4, warp_affine
from hallo_core.upscaler.paste_back import paste_face
from hallo_core.upscaler.temporal_codeformer import TemporalCodeFormerConfig
from hallo_core.upscaler.video import UpscaleSettings, VideoFaceUpscaler, output_size, window_plan
from hallo_core.upscaler.video_file import upscale_video_file
from hallo_core.upscaler.weights import random_state_dict

CPU = ["CPUExecutionProvider"]


def similarity(scale: float, angle_deg: float, crop_center_in_frame: tuple[float, float]) -> np.ndarray:
    """frame -> crop similarity with the crop centre (256, 256) at a frame point."""
    a = np.deg2rad(angle_deg)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.hstack([rot, (np.array([255.5, 255.5]) - rot @ np.asarray(crop_center_in_frame))[:, None]])


def landmarks_for(matrix: np.ndarray) -> np.ndarray:
    """Frame landmarks that align exactly onto the FFHQ template under `matrix`."""
    inverse = cv2.invertAffineTransform(matrix)
    return FFHQ_TEMPLATE_512 @ inverse[:, :2].T + inverse[:, 2]


class FixedFaceDetector:
    def __init__(self, landmarks, frames_without_face=()):
        self.landmarks = landmarks
        self.skip = set(frames_without_face)
        self.calls = 0

    def detect(self, frame):
        self.calls += 1
        if self.calls - 1 in self.skip:
            return []
        lm = self.landmarks
        box = np.array([lm[:, 0].min() - 20, lm[:, 1].min() - 30, lm[:, 0].max() + 20, lm[:, 1].max() + 20])
        return [DetectedFace(box, 0.9, lm)]


# ------------------------------------------------------------------------------------------------ windows, streaming


@pytest.mark.parametrize("length", [1, 5, 16, 17, 28, 29, 100])
def test_official_windows_keep_every_frame_once_in_order(length):
    plan = window_plan(length)
    assert plan[0][0] == 0 and plan[-1][1] == length
    kept = [i for n, (start, end) in enumerate(plan) for i in range(start if n == 0 else start + 4, end)]
    assert kept == list(range(length))
    assert all(end - start <= 16 for start, end in plan)
    assert all(b[0] == a[1] - 4 for a, b in zip(plan, plan[1:]))


def _constant_frames(length, height=96, width=128):
    for i in range(length):
        yield np.full((height, width, 3), 20 + 2 * (i % 110), np.uint8)


@pytest.mark.parametrize("length", [1, 5, 16, 17, 28, 29, 100])
def test_stream_restores_official_windows_and_outputs_each_frame_once(length):
    matrix = similarity(512 / 100, 0, (64, 48))
    windows = []

    def restore(crops):  # records which frames each network call saw (the crop centre holds the frame's value)
        levels = ((crops[0, :, 0, 256, 256] * 0.5 + 0.5) * 255).round()
        windows.append([int(v - 20) // 2 for v in levels])
        return crops

    upscaler = VideoFaceUpscaler(restore, FixedFaceDetector(landmarks_for(matrix)), BackgroundUpscaler.lanczos(),
                                 settings=UpscaleSettings(scale=1))
    outputs = list(upscaler.stream(_constant_frames(length)))
    assert windows == [list(range(start, end)) for start, end in window_plan(length)]
    assert [int(o.float().median()) for o in outputs] == [20 + 2 * i for i in range(length)]
    assert all(o.shape == (96, 128, 3) and o.dtype == torch.uint8 for o in outputs)


def test_frames_before_the_first_face_pass_through_and_later_gaps_reuse_the_last_face():
    matrix = similarity(512 / 100, 0, (64, 48))
    detector = FixedFaceDetector(landmarks_for(matrix), frames_without_face={0, 1, 5, 6})
    seen = []

    def restore(crops):
        seen.append(crops.shape[1])
        return crops * 0 - 1  # black faces: visible where pasted

    upscaler = VideoFaceUpscaler(restore, detector, BackgroundUpscaler.lanczos(), settings=UpscaleSettings(scale=1))
    outputs = list(upscaler.stream(_constant_frames(8)))
    assert seen == [6]  # frames 0 and 1 have no face yet; 5 and 6 reuse frame 4's landmarks
    centre = [int(o[48, 64, 0]) for o in outputs]
    assert centre[:2] == [20, 22] and all(c == 0 for c in centre[2:])
    assert upscaler.track.detected_frames == 4 and upscaler.track.reused_frames == 2


def _live_tensor_bytes() -> int:
    gc.collect()
    return sum(o.numel() * o.element_size() for o in gc.get_objects() if type(o) in (torch.Tensor, torch.nn.Parameter))


def test_streaming_holds_at_most_one_window_of_frames():
    """Over an 80-frame clip: at most 15 frames are read ahead of the output, and the tensors alive (frames, crops,
    restored faces, outputs) do not grow with the number of frames processed."""
    pulled = []

    def source(n):
        for i, frame in enumerate(_constant_frames(n, 60, 80)):
            pulled.append(i)
            yield frame

    matrix = similarity(512 / 60, 5, (40, 30))
    upscaler = VideoFaceUpscaler(lambda c: c, FixedFaceDetector(landmarks_for(matrix)), BackgroundUpscaler.lanczos(),
                                 settings=UpscaleSettings(scale=2))
    lag, live = [], {}
    before = _live_tensor_bytes()  # what earlier tests in this process keep alive (model caches)
    for produced, frame in enumerate(upscaler.stream(source(80)), start=1):
        lag.append(len(pulled) - produced)
        if produced in (28, 52, 76):  # the last output of the 2nd, 4th and 6th window
            live[produced] = _live_tensor_bytes()
    assert produced == 80 and max(lag) <= 16 - 1 and lag[-1] == 0
    one_crop = 3 * 512 * 512 * 4
    assert live[52] - live[28] < one_crop and live[76] - live[28] < one_crop, live
    assert live[28] - before < 40 * one_crop  # about one window of crops and faces, not the clip


def _noise_frames(n, height, width, seed=0):
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur((rng.random((height, width, 3)) * 255).astype(np.uint8), (9, 9), 3)
    for i in range(n):
        yield np.roll(base, i, axis=1)


# ------------------------------------------------------------------------------------------------ sizes


def test_output_sizes():
    assert output_size(480, 720, 4.0) == (1920, 2880, 4.0)
    assert output_size(480, 720, 2) == (960, 1440, 2.0)
    h, w, s = output_size(480, 720, target_long_side=4096)
    assert (h, w) == (2730, 4096) and h % 2 == 0 and abs(s - 4096 / 720) < 1e-12
    assert output_size(720, 480, target_long_side=3840)[:2] == (3840, 2560)
    with pytest.raises(InputError, match="4096"):
        output_size(1080, 1920, 4)
    with pytest.raises(InputError, match="below 1"):
        output_size(480, 720, 0.5)
    with pytest.raises(InputError, match="exactly one"):
        output_size(480, 720, 2, 2000)


def test_bad_inputs_are_refused():
    upscaler = VideoFaceUpscaler(lambda c: c, None, BackgroundUpscaler.lanczos(), settings=UpscaleSettings(scale=2))
    with pytest.raises(InputError, match="same size"):
        list(upscaler.stream([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)]))
    with pytest.raises(InputError, match="RGB"):
        list(upscaler.stream([np.zeros((8, 8), np.uint8)]))
    with pytest.raises(InputError, match="fidelity"):
        VideoFaceUpscaler(lambda c: c, None, BackgroundUpscaler.lanczos(), settings=UpscaleSettings(fidelity_weight=2))
    floats = list(upscaler.stream([np.full((8, 8, 3), 0.5, np.float32)]))  # ComfyUI IMAGE frames: float in [0, 1]
    assert floats[0].shape == (16, 16, 3) and int(floats[0][8, 8, 0]) == 128


# ------------------------------------------------------------------------------------------------ image ops vs OpenCV


def test_image_operations_match_opencv():
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur((rng.random((120, 90, 3)) * 255).astype(np.uint8), (5, 5), 1)
    matrix = cv2.getRotationMatrix2D((40, 50), 17, 1.7)
    matrix[:, 2] += [5, -3]
    ref = cv2.warpAffine(img, matrix, (200, 150), borderMode=cv2.BORDER_CONSTANT, borderValue=(135, 133, 132))
    ours = warp_affine(torch.from_numpy(img).float().permute(2, 0, 1)[None], matrix, (150, 200),
                       torch.tensor([135.0, 133.0, 132.0]))[0].permute(1, 2, 0).round().numpy()
    assert np.abs(ours - ref).max() <= 1 and (ours != ref).mean() < 0.01

    small = (rng.random((48, 72, 3)) * 255).astype(np.uint8)
    for size, off_by_one in [((96, 144), 0.05), ((192, 288), 0.05), ((100, 151), 0.1)]:
        ref = cv2.resize(small, size[::-1], interpolation=cv2.INTER_LANCZOS4)  # 8-bit fixed point inside
        ours = resize_lanczos4(torch.from_numpy(small).float().permute(2, 0, 1)[None], size)
        ours = ours[0].permute(1, 2, 0).round().clamp(0, 255).numpy()
        assert np.abs(ours - ref).max() <= 1 and (ours != ref).mean() < off_by_one

    mask = cv2.warpAffine(np.ones((64, 64), np.float32), matrix, (200, 150))
    for k in (0, 2, 3, 8, 31):
        assert np.array_equal(erode(torch.from_numpy(mask)[None, None], k)[0, 0].numpy(),
                              cv2.erode(mask, np.ones((k, k), np.uint8)))
    for k, sigma in ((1, 0), (5, 0), (9, 0), (31, 0), (101, 11)):
        ref = cv2.GaussianBlur(mask, (k, k), sigma)
        assert np.abs(gaussian_blur(torch.from_numpy(mask)[None, None], k, sigma)[0, 0].numpy() - ref).max() < 1e-5


# ------------------------------------------------------------------------------------------------ align and paste


def official_paste(background, face, inverse, scale, parse_mask=None):
    """facelib's paste_faces_to_input_image steps with OpenCV on the whole frame (RGB, uint8 in and out)."""
    h, w = background.shape[:2]
    inv_restored = cv2.warpAffine(face, inverse, (w, h))
    inv_mask = cv2.warpAffine(np.ones(face.shape[:2], np.float32), inverse, (w, h))
    inv_mask_erosion = cv2.erode(inv_mask, np.ones((int(2 * scale), int(2 * scale)), np.uint8))
    pasted_face = inv_mask_erosion[:, :, None] * inv_restored
    w_edge = int(np.sum(inv_mask_erosion) ** 0.5) // 20
    inv_mask_center = cv2.erode(inv_mask_erosion, np.ones((2 * w_edge, 2 * w_edge), np.uint8))
    inv_soft_mask = cv2.GaussianBlur(inv_mask_center, (2 * w_edge + 1, 2 * w_edge + 1), 0)[:, :, None]
    if parse_mask is not None:
        parse = cv2.warpAffine(parse_mask, inverse, (w, h), flags=3)[:, :, None]
        inv_soft_mask = np.where(parse < inv_soft_mask, parse, inv_soft_mask)
    return (inv_soft_mask * pasted_face + (1 - inv_soft_mask) * background).astype(np.uint8)


def synthetic_face_frame(height, width, matrix):
    """A textured frame with a bright face-like ellipse where the crop of `matrix` puts the face."""
    rng = np.random.default_rng(1)
    frame = cv2.GaussianBlur((rng.random((height, width, 3)) * 120).astype(np.uint8), (7, 7), 2)
    inverse = cv2.invertAffineTransform(matrix)
    centre = inverse @ np.array([256, 300, 1.0])
    radius = 170 * np.hypot(*inverse[:, 0])
    cv2.ellipse(frame, (int(centre[0]), int(centre[1])), (int(radius), int(radius * 1.3)), 0, 0, 360,
                (210, 170, 150), -1)
    for eye in FFHQ_TEMPLATE_512[:2]:
        p = inverse @ np.array([*eye, 1.0])
        cv2.circle(frame, (int(p[0]), int(p[1])), max(2, int(radius / 8)), (40, 30, 30), -1)
    return frame


@pytest.mark.parametrize("scale, centre, angle", [(4, (360, 230), 8.0), (2, (40, 420), -12.0)])
def test_alignment_and_paste_back_round_trip(scale, centre, angle):
    """Landmarks -> crop -> paste back at `scale`, checked against OpenCV; the second face leaves the frame."""
    matrix = similarity(512 / 230, angle, centre)
    frame = synthetic_face_frame(480, 720, matrix)
    landmarks = landmarks_for(matrix)
    estimated = alignment_matrix(landmarks)
    assert np.abs(estimated - matrix).max() < 1e-3  # OpenCV solves in single precision

    crop = align_faces(torch.from_numpy(frame).float().permute(2, 0, 1)[None], estimated[None])[0]
    ref_crop = cv2.warpAffine(frame, estimated, (512, 512), borderValue=(132, 133, 135))
    crop_np = crop.permute(1, 2, 0).numpy()
    assert np.abs(crop_np - ref_crop).max() <= 1 and (crop_np != ref_crop).mean() < 0.01

    out_h, out_w, s = output_size(480, 720, scale)
    background = cv2.resize(frame, (out_w, out_h), interpolation=cv2.INTER_LANCZOS4)
    inverse = inverse_alignment(estimated, s)
    yy, xx = np.mgrid[:512, :512]
    parse = (((xx - 256) / 200.0) ** 2 + ((yy - 280) / 230.0) ** 2 < 1).astype(np.float64)
    parse = cv2.GaussianBlur(cv2.GaussianBlur(parse, (101, 101), 11), (101, 101), 11)  # as a real parsing mask
    for mask in (None, parse):
        ours = paste_face(torch.from_numpy(background).float().permute(2, 0, 1), torch.from_numpy(ref_crop).float()
                          .permute(2, 0, 1), inverse, s,
                          None if mask is None else torch.from_numpy(mask).float()[None])
        ours = ours.permute(1, 2, 0).numpy()
        ref = official_paste(background, ref_crop, inverse, s, mask)
        diff = np.abs(ours - ref)  # OpenCV's fixed-point warps and float noise under the truncation
        assert diff.max() <= 2 and diff.mean() < 0.01, (diff.max(), diff.mean())
        # round trip: the face came from this very frame, so pasting it back changes little
        assert np.abs(ours - background.astype(np.float64)).mean() < 2.0


def _smooth_x2_model():
    """A deterministic x2 'super-resolution model' with a 1-px receptive field, on (N, 3, h, w) in [0, 1]."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.PixelShuffle(2)).eval()
    with torch.no_grad():
        net[0].weight.mul_(0.1)
        net[0].weight[:, :, 1, 1] += torch.eye(3).repeat_interleave(4, 0)  # close to nearest x2 of the input

    def upscale(x):
        with torch.no_grad():
            return net(x).clamp(0, 1)

    return upscale


@pytest.mark.parametrize("scale", [2, 4])
def test_face_upsample_pastes_the_upsampled_face_as_facelib(scale):
    """--face_upsample: the restored face goes through the background model to 512 s, is parsed after a bilinear
    resize back to 512, and pasted with the un-offset inverse; checked against facelib's steps in OpenCV."""
    matrix = similarity(512 / 150, 6.0, (170, 130))
    frame = synthetic_face_frame(240, 360, matrix)
    background = BackgroundUpscaler(_smooth_x2_model(), 2)
    config = ParseNetConfig(encoder_channels=(16, 16), res_depth=1, decoder_channels=(16,))
    parsenet = ParseNet(config).eval()
    parsenet.load_state_dict(random_parsenet_state_dict(config))
    upscaler = VideoFaceUpscaler(lambda crops: crops, FixedFaceDetector(landmarks_for(matrix)), background, parsenet,
                                 UpscaleSettings(scale=scale, face_upsample=True))
    ours = next(upscaler.stream([frame])).numpy()

    # official steps: the restored face is the crop (identity restorer), upsampled by the same upsampler object
    frame_t = torch.from_numpy(frame).float().permute(2, 0, 1)[None]
    estimated = alignment_matrix(landmarks_for(matrix))
    face = align_faces(frame_t, estimated[None])
    size = 512 * scale
    up_face = background(face, (size, size))[0].permute(1, 2, 0).numpy().astype(np.uint8)
    face_input = cv2.resize(up_face, (512, 512), interpolation=cv2.INTER_LINEAR)
    mask = parsing_mask(parsenet, torch.from_numpy(face_input).float().permute(2, 0, 1)[None])[0, 0].double().numpy()
    mask = cv2.resize(mask, (size, size))
    inverse = cv2.invertAffineTransform(estimated) * scale
    inverse /= scale
    inverse[:, 2] *= scale
    bg = background(frame_t, (240 * scale, 360 * scale))[0].permute(1, 2, 0).numpy().astype(np.uint8)
    ref = official_paste(bg, up_face, inverse, scale, mask)
    diff = np.abs(ours.astype(np.int16) - ref)
    assert diff.max() <= 2 and diff.mean() < 0.005, (diff.max(), diff.mean())  # OpenCV fixed point

    plain = VideoFaceUpscaler(lambda crops: crops, FixedFaceDetector(landmarks_for(matrix)), background, parsenet,
                              UpscaleSettings(scale=scale))
    without = next(plain.stream([frame])).numpy()
    assert (without != ours).mean() > 0.01  # the option changes the face region, as official


def test_face_upsample_needs_a_model_background():
    with pytest.raises(InputError, match="super-resolution model"):
        VideoFaceUpscaler(lambda c: c, None, BackgroundUpscaler.lanczos(), settings=UpscaleSettings(face_upsample=True))


# ------------------------------------------------------------------------------------------------ background


def test_background_tiles_like_one_pass_and_scales_like_the_official_resize():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.PixelShuffle(2)).eval()

    def upscale(x):  # receptive field 1 px: 8 px of tile context is plenty
        with torch.no_grad():
            return torch.sigmoid(net(x))

    frames = torch.rand(3, 3, 37, 53) * 255  # odd size: reflect-padded to even for a x2 model
    whole = BackgroundUpscaler(upscale, 2, tile=0)(frames, (74, 106))
    tiled = BackgroundUpscaler(upscale, 2, tile=16, tile_pad=8)(frames, (74, 106))
    assert whole.shape == (3, 3, 74, 106)
    assert (whole - tiled).abs().max() <= 1 and (whole != tiled).float().mean() < 1e-3
    x4 = BackgroundUpscaler(upscale, 2, tile=16, tile_pad=8)(frames, (148, 212))
    expected = resize_lanczos4(tiled, (148, 212)).round().clamp(0, 255)
    assert torch.equal(x4, expected)
    lanczos = BackgroundUpscaler.lanczos()(frames, (148, 212))
    assert torch.equal(lanczos, resize_lanczos4(frames, (148, 212)).round().clamp(0, 255))


@pytest.mark.skipif(importlib.util.find_spec("spandrel") is not None, reason="spandrel is installed here")
def test_background_model_without_spandrel_names_the_fix(tmp_path):
    path = tmp_path / "RealESRGAN_x2plus.pth"
    torch.save({"params_ema": {"conv_first.weight": torch.zeros(1)}}, path)
    with pytest.raises(ModelFileError, match="spandrel.*Lanczos"):
        load_background_model(path)
    with pytest.raises(ModelFileError, match="not found"):
        load_background_model(tmp_path / "missing.pth")


# ------------------------------------------------------------------------------------------------ detector


def test_scrfd_detector_landmarks_and_the_largest_face(tmp_path):
    faces = ({"center": (128, 128), "size": (64, 64), "score": 0.97},
             {"center": (352, 288), "size": (224, 256), "score": 0.81})
    folder = write_tiny_face_models(tmp_path / "models", faces=faces)
    detector = ScrfdFaceDetector(folder + "/scrfd_10g_bnkps.onnx", providers=CPU)
    frame = next(_noise_frames(1, 240, 320))  # letterboxed into 640x640 at scale 2
    found = detector.detect(frame)
    expected = tiny_face_boxes(faces)
    assert len(found) == 2
    by_score = sorted(found, key=lambda f: -f.score)
    for face, truth in zip(by_score, expected):
        assert np.allclose(face.landmarks, truth["kps"] / 2, atol=1e-3)
        assert np.allclose(face.box, truth["bbox"] / 2, atol=1e-3)
    chosen = select_face(found, 240, 320)
    assert np.allclose(chosen.landmarks, expected[1]["kps"] / 2, atol=1e-3)  # the larger, lower-scoring face
    track = FaceTrack(detector)
    assert track(np.zeros((240, 320, 3), np.uint8)) is None  # a flat frame has no face, and none came before
    assert track(frame) is not None
    assert np.array_equal(track(np.zeros((240, 320, 3), np.uint8)), chosen.landmarks)


def test_detector_files_are_checked(tmp_path):
    with pytest.raises(ModelFileError, match="not found.*scrfd"):
        ScrfdFaceDetector(tmp_path / "scrfd_10g_bnkps.onnx", providers=CPU)
    bad = tmp_path / "det.onnx"
    bad.write_bytes(b"junk")
    with pytest.raises(ModelFileError, match="not a usable SCRFD"):
        ScrfdFaceDetector(bad, providers=CPU)


# ------------------------------------------------------------------------------------------------ files


def _write_clip(path, frames, fps=25, seconds=None):
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "yuv420p"
        audio = out.add_stream("aac", rate=16000)
        audio.layout = "mono"
        for i, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = i
            out.mux(video.encode(picture))
        out.mux(video.encode(None))
        t = np.arange(int(16000 * (seconds or len(frames) / fps))) / 16000
        wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, len(wave), 1024):
            chunk = av.AudioFrame.from_ndarray(wave[None, start:start + 1024], format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = 16000, start
            out.mux(audio.encode(chunk))
        out.mux(audio.encode(None))


def test_upscale_video_file_end_to_end(tmp_path):
    """Tiny random models, a 2-frame clip with audio: an MP4 at 2x with every frame and the audio copied."""
    config = TemporalCodeFormerConfig(dim_embd=64, n_head=1, n_layers=1, codebook_size=16, nf=32)
    save_file(random_state_dict(config, seed=0), str(tmp_path / "net_g.safetensors"))
    parsing = ParseNetConfig(encoder_channels=(32, 32), res_depth=1, decoder_channels=(32,))
    torch.save(random_parsenet_state_dict(parsing), tmp_path / "parsing_parsenet.pth")
    folder = write_tiny_face_models(tmp_path / "face")
    clip = tmp_path / "in.mp4"
    _write_clip(clip, list(_noise_frames(2, 240, 320)))
    done = []
    summary = upscale_video_file(clip, tmp_path / "out.mp4", upscaler_weights=str(tmp_path / "net_g.safetensors"),
                                 detector_model=folder + "/scrfd_10g_bnkps.onnx",
                                 parsing_model=str(tmp_path / "parsing_parsenet.pth"), scale=2, progress=done.append)
    assert summary["frames"] == 2 and summary["faces_detected"] == 2 and done == [1, 2]
    with av.open(str(tmp_path / "out.mp4")) as result:
        video, audio = result.streams.video[0], result.streams.audio[0]
        assert (video.codec_context.name, video.height, video.width) == ("h264", 480, 640)
        assert audio.codec_context.name == "aac" and audio.rate == 16000
        assert len(list(result.decode(video=0))) == 2
    with pytest.raises(InputError, match="not found"):
        upscale_video_file(tmp_path / "missing.mp4", tmp_path / "x.mp4", upscaler_weights="w", detector_model=None)
    with pytest.raises(InputError, match="face upsampling needs a super-resolution model"):
        upscale_video_file(clip, tmp_path / "y.mp4", upscaler_weights=str(tmp_path / "net_g.safetensors"),
                           detector_model=None, face_upsample=True)
    assert not (tmp_path / "y.mp4").exists()
