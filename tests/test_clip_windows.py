"""Per-clip audio windows (hallo_core.audio.clip_windows) against the official clip loop.

tests/fixtures/frontends/audio_clips_official.json holds, for 16 kHz inputs of 640 x {1, 49, 50, 94, 95, 500} samples,
4480 samples (a float-rounding case) and 160000 samples (10 s), what the official code computes: `audio_length` and the
padded frame count from `AudioProcessor.preprocess(clip_length=49)`, and for every clip of the `sample_video.py` loop
(with `process_audio_emb`) the source frame of each of the 49 x 5 window entries (-1 = zero audio).
"""

import json
import pathlib

import pytest
import torch

from hallo_core.audio.clip_windows import clip_audio, clip_frame_indices, clip_output_frames, num_clips, window_indices
from hallo_core.audio.wav2vec_features import AudioFeatures, frame_count, padded_frame_count

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "frontends"
GOLDEN = json.loads((FIXTURES / "audio_clips_official.json").read_text())
CASES = {c["num_samples"]: c for c in GOLDEN["cases"]}


def index_features(num_frames, audio_length):
    """Features whose every value is its frame number + 1, so a clip's values name its source frames."""
    layers = (torch.arange(num_frames, dtype=torch.float32) + 1).reshape(-1, 1, 1).repeat(1, 2, 3)
    return AudioFeatures(layers, audio_length)


@pytest.mark.parametrize("num_samples", sorted(CASES))
def test_lengths_padding_and_windows_match_official(num_samples):
    case = CASES[num_samples]
    audio_length = frame_count(num_samples)
    frames = padded_frame_count(audio_length)
    assert audio_length == case["audio_length"]
    assert frames == case["num_frames"]
    assert num_clips(frames) == case["num_clips"] == len(case["clip_window_frames"])
    features = index_features(frames, audio_length)
    for t, expected in enumerate(case["clip_window_frames"]):
        clip = clip_audio(features, t)
        assert clip.shape == (49, 5, 2, 3)
        assert torch.equal(clip[:, :, 0, 0].long() - 1, torch.tensor(expected)), f"clip {t}"
        assert torch.equal(clip[:, :, 1, 2], clip[:, :, 0, 0])  # whole feature vectors are moved


def test_ten_second_input():
    case = CASES[160000]
    assert (case["audio_length"], case["num_frames"], case["num_clips"]) == (250, 294, 7)
    first, last = case["clip_window_frames"][0], case["clip_window_frames"][-1]
    assert first[0] == [-1] * 5 and first[1] == [-1] * 5  # the two reference-image frames of clip 0: zero audio
    assert first[2] == [0, 0, 0, 1, 2]
    assert [row[2] for row in last] == [280 + i for i in range(14)] + [293] * 35  # last clip repeats its last frame
    assert clip_frame_indices(6, 294).tolist() == list(range(280, 294)) + [293] * 35


def test_frames_per_clip_and_motion_frames_are_parameters():
    """An unrolled copy of the official loop, with other sizes."""
    for frames_per_clip, motion, n in [(13, 1, 40), (49, 2, 49), (49, 4, 100), (9, 3, 30)]:
        new = frames_per_clip - motion
        emb = torch.arange(n)
        pre_fix = torch.full((motion,), -1)
        for t in range(num_clips(n, frames_per_clip, motion)):
            tensor = torch.cat([pre_fix, emb[t * new:min((t + 1) * new, n)]])
            pre_fix = tensor[-motion:] if motion else tensor[:0]
            if len(tensor) != frames_per_clip:
                tensor = torch.cat([tensor, tensor[-1:].repeat(frames_per_clip - len(tensor))])
            assert clip_frame_indices(t, n, frames_per_clip, motion).tolist() == tensor.tolist()


def test_output_frames_cover_the_audio():
    features = index_features(padded_frame_count(250), 250)
    clips = num_clips(features.num_frames)
    covered = [f for t in range(clips) for f in clip_output_frames(t)]
    assert covered == list(range(clips * 47)) and len(covered) >= features.audio_length
    # clip t's rows 2..48 are exactly the frames it adds
    for t in range(clips):
        rows = clip_frame_indices(t, features.num_frames)[2:]
        expected = torch.tensor(list(clip_output_frames(t))).clamp(max=features.num_frames - 1)
        assert torch.equal(rows, expected)


def test_dtype_device_and_plain_tensor():
    layers = torch.randn(98, 12, 8)
    clip = clip_audio(layers, 1, dtype=torch.bfloat16, device="cpu")
    assert clip.dtype == torch.bfloat16 and clip.shape == (49, 5, 12, 8)
    torch.testing.assert_close(clip.float(), layers[window_indices(98)[45:94]].bfloat16().float())


def test_clip_out_of_range():
    with pytest.raises(ValueError, match="clip 3 does not exist"):
        clip_frame_indices(3, 98)
