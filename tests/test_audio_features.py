"""wav2vec2 features with a tiny random wav2vec2 (hallo_core.audio.wav2vec_features) against the official code.

Golden numbers (tests/fixtures/frontends/wav2vec_tiny_official.safetensors) come from the official
`AudioProcessor.preprocess(wav, clip_length=49)` of hallo3 (transformers 4.45.2, torch 2.4, librosa 0.10.2, the
audio-separator 0.21.2 library and the ffmpeg 5.1 command line) on the tiny model `write_tiny_wav2vec` writes, for:
* "plain": the first 20800 samples of portraits/0008.wav resampled to 16 kHz, without vocal separation;
* "separated": samples 88200..171990 of portraits/0001.wav (44.1 kHz stereo) through the tiny Kim_Vocal_2 stand-in.
"""

import math
import pathlib
import shutil

import numpy as np
import pytest
import torch
from conftest import in_portable_mkl
from safetensors.torch import load_file

from hallo_core.audio import Audio, decode_audio, prepare_speech, speech_16k_mono
from hallo_core.audio.vocal_separation import VocalSeparator
from hallo_core.audio.wav2vec_features import frame_count, frame_windows, load_wav2vec
from hallo_core.dev.tiny_frontends import write_tiny_vocal_separator, write_tiny_wav2vec
from hallo_core.errors import InputError, ModelFileError

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
PORTRAITS = SHARED / "portraits"
FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "frontends"


@pytest.fixture(scope="module")
def wav2vec_dir(tmp_path_factory):
    return write_tiny_wav2vec(tmp_path_factory.mktemp("wav2vec") / "wav2vec2-base-960h")


@pytest.fixture(scope="module")
def encoder(wav2vec_dir):
    return load_wav2vec(wav2vec_dir)


@pytest.fixture(scope="module")
def golden():
    return load_file(FIXTURES / "wav2vec_tiny_official.safetensors")


def test_tiny_model_is_the_base_960h_architecture(encoder):
    cfg = encoder.model.config
    assert encoder.num_layers == 12 and encoder.hidden_size == 32
    assert cfg.feat_extract_norm == "group" and not cfg.do_stable_layer_norm and not cfg.conv_bias
    assert tuple(cfg.conv_stride) == (5, 2, 2, 2, 2, 2, 2)  # 320 samples per CNN frame, as the real model
    assert encoder.feature_extractor.do_normalize


def test_plain_features_match_official(encoder, golden):
    speech = speech_16k_mono(decode_audio(PORTRAITS / "0008.wav"))[:20800]
    features = encoder(speech)
    assert features.audio_length == int(golden["plain.audio_length"]) == 33
    assert features.layers.shape == golden["plain.layers"].shape == (49, 12, 32)
    torch.testing.assert_close(features.layers, golden["plain.layers"], atol=2e-5, rtol=0)
    torch.testing.assert_close(features.windows[:3], golden["plain.windows_frame0"], atol=2e-5, rtol=0)


def test_separated_features_match_official_end_to_end(tmp_path, request):
    """Vocal separation -> 16-bit vocals -> ffmpeg-equivalent 16 kHz -> librosa mono -> wav2vec2, all as official."""
    if not in_portable_mkl(request):
        return
    encoder, golden = request.getfixturevalue("encoder"), request.getfixturevalue("golden")
    separator = VocalSeparator(write_tiny_vocal_separator(tmp_path / "Kim_Vocal_2.onnx"),
                               providers=["CPUExecutionProvider"])
    full = decode_audio(PORTRAITS / "0001.wav")
    excerpt = Audio(full.samples[:, 88200:88200 + 83790].clone(), 44100)
    speech = prepare_speech(excerpt, encoder, separator)
    assert speech.original is excerpt and speech.vocals is not None and speech.vocals.sample_rate == 44100
    assert speech.features.audio_length == int(golden["separated.audio_length"]) == 48
    torch.testing.assert_close(speech.features.layers, golden["separated.layers"], atol=2e-5, rtol=0)


@pytest.mark.parametrize("seconds", [0.04, 1.0, 1.96, 2.5, 4.3])
def test_shape_and_alignment_follow_audio_length(encoder, seconds):
    n = int(round(seconds * 16000))
    rng = np.random.default_rng(n)
    features = encoder((rng.standard_normal(n) * 0.1).astype(np.float32))
    assert features.audio_length == math.ceil(n / 16000 * 25)
    assert features.num_frames % 49 == 0 and features.num_frames - 49 < features.audio_length <= features.num_frames
    assert features.layers.shape == (features.num_frames, 12, 32) and features.layers.dtype == torch.float32
    windows = features.windows
    assert windows.shape == (features.num_frames, 5, 12, 32)
    assert torch.equal(windows[:, 2], features.layers)  # the window is centred on its frame
    assert torch.equal(windows[0, 0], features.layers[0]) and torch.equal(windows[0, 1], features.layers[0])
    assert torch.equal(windows[-1, 4], features.layers[-1])  # clamped at the end
    assert torch.equal(windows[5, 0], features.layers[3]) and torch.equal(windows[5, 4], features.layers[7])


def test_cnn_features_are_interpolated_to_video_frames_before_the_encoder(encoder):
    """Reference computation from transformers' modules: CNN -> linear (align_corners) -> projection -> encoder."""
    import torch.nn.functional as F

    rng = np.random.default_rng(7)
    values = torch.from_numpy(rng.standard_normal((1, 16000 * 2)).astype(np.float32))
    frames = 49
    with torch.no_grad():
        model = encoder.model
        cnn = model.feature_extractor(values)  # (1, C, 99)
        assert cnn.shape[-1] == 99  # 50 Hz, not 25
        cnn = F.interpolate(cnn, size=frames, mode="linear", align_corners=True).transpose(1, 2)
        hidden, _ = model.feature_projection(cnn)
        out = model.encoder(hidden)
    ours = encoder.layer_features(values, frames)
    assert ours.shape == (frames, 12, 32)
    torch.testing.assert_close(ours[:, -1], out.last_hidden_state[0], atol=1e-6, rtol=0)


def test_frame_windows_clamps():
    x = torch.arange(4.0)[:, None]
    assert frame_windows(x)[:, :, 0].tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 3], [1, 2, 3, 3, 3]]


def test_legacy_pytorch_model_bin_is_read_safely(tmp_path, wav2vec_dir, encoder):
    folder = tmp_path / "bin_only"
    shutil.copytree(wav2vec_dir, folder)
    state = load_file(folder / "model.safetensors")
    torch.save(state, folder / "pytorch_model.bin")  # the old transformers format (a pickle)
    (folder / "model.safetensors").unlink()
    other = load_wav2vec(folder)
    speech = (np.random.default_rng(1).standard_normal(8000) * 0.1).astype(np.float32)
    torch.testing.assert_close(other(speech).layers, encoder(speech).layers, atol=0, rtol=0)


def test_too_short_speech(encoder):
    with pytest.raises(InputError, match="shorter than one video frame"):
        encoder(np.ones(639, np.float32))


def test_silent_speech_after_separation_is_refused(tmp_path, encoder):
    silent = Audio(torch.zeros(1, 16000), 16000)
    with pytest.raises(InputError, match="silent"):
        prepare_speech(silent, encoder, None)


# ----- missing or wrong model files: one line naming the file and where it belongs, nothing written -------------


def model_error(folder, match):
    parent = pathlib.Path(folder).parent
    before = sorted(p.name for p in parent.iterdir()) if parent.exists() else []
    with pytest.raises(ModelFileError, match=match) as info:
        load_wav2vec(folder)
    msg = str(info.value)
    assert "\n" not in msg and "wav2vec2-base-960h" in msg
    if parent.exists():
        assert sorted(p.name for p in parent.iterdir()) == before
    return msg


def test_missing_folder(tmp_path):
    msg = model_error(tmp_path / "absent", "wav2vec2 folder not found")
    assert "pretrained_models/wav2vec/wav2vec2-base-960h" in msg


@pytest.mark.parametrize("name", ["config.json", "preprocessor_config.json", "model.safetensors"])
def test_missing_file(tmp_path, wav2vec_dir, name):
    folder = tmp_path / "w2v"
    shutil.copytree(wav2vec_dir, folder)
    (folder / name).unlink()
    model_error(folder, f"{name} missing in")


def test_corrupt_weights(tmp_path, wav2vec_dir):
    folder = tmp_path / "w2v"
    shutil.copytree(wav2vec_dir, folder)
    (folder / "model.safetensors").write_bytes(b"\x00" * 100)
    model_error(folder, "cannot load the wav2vec2 model")


def test_wrong_weights(tmp_path, wav2vec_dir):
    from safetensors.numpy import save_file

    folder = tmp_path / "w2v"
    shutil.copytree(wav2vec_dir, folder)
    save_file({"encoder.block.0.layer.0.SelfAttention.q.weight": np.zeros((4, 4), np.float32)},
              str(folder / "model.safetensors"))
    model_error(folder, "do not match a wav2vec2 model")


def test_non_normalising_preprocessor_is_refused(tmp_path, wav2vec_dir):
    import json

    folder = tmp_path / "w2v"
    shutil.copytree(wav2vec_dir, folder)
    cfg = json.loads((folder / "preprocessor_config.json").read_text())
    cfg["do_normalize"] = False
    (folder / "preprocessor_config.json").write_text(json.dumps(cfg))
    model_error(folder, "do_normalize=false")


def test_frame_count_matches_official_rounding():
    assert [frame_count(n) for n in (1, 639, 640, 641, 4480, 31360)] == [1, 1, 1, 2, 8, 49]


def test_long_speech_runs_the_cnn_in_pieces_with_the_same_result(wav2vec_dir, encoder):
    from hallo_core.audio.wav2vec_features import chunked_cnn_features

    values = torch.from_numpy(np.random.default_rng(3).standard_normal((1, 16000 * 12)).astype(np.float32))
    with torch.no_grad():
        whole = encoder.model.feature_extractor(values)
    for chunk in (16000, 7777):
        torch.testing.assert_close(chunked_cnn_features(encoder.model.feature_extractor, values, chunk), whole,
                                   atol=1e-6, rtol=1e-5)
    pieces = load_wav2vec(wav2vec_dir)
    pieces.cnn_chunk_seconds = 0.5  # 2.7 s of speech is then "long"
    speech = (np.random.default_rng(4).standard_normal(43200) * 0.1).astype(np.float32)
    torch.testing.assert_close(pieces(speech).layers, encoder(speech).layers, atol=2e-5, rtol=0)
    assert encoder.cnn_chunk_seconds == 60.0  # default: one piece up to 2 minutes, as official
