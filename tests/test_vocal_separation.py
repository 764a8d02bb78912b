"""MDX-Net vocal separation (hallo_core.audio.vocal_separation) against the audio-separator library.

tests/fixtures/frontends/vocals_tiny_official.safetensors: the vocals WAV (int16) that audio-separator 0.21.2
(`Separator(output_single_stem="vocals")`, defaults, as Hallo3 calls it) writes for the first 5 s of portraits/0001.wav
with the tiny Kim_Vocal_2 stand-in: every 8th sample, plus the SHA-256 of all samples.
"""

import hashlib
import json
import pathlib

import numpy as np
import onnx
import pytest
import torch
from conftest import in_portable_mkl
from safetensors import safe_open

from hallo_core.audio.decode import Audio, decode_audio
from hallo_core.audio.vocal_separation import MdxParams, VocalSeparator, params_from_model_data, uvr_model_hash
from hallo_core.dev.tiny_frontends import write_tiny_face_models, write_tiny_vocal_separator
from hallo_core.errors import InputError, ModelFileError

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
PORTRAITS = SHARED / "portraits"
FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "frontends"
CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_tiny_vocal_separator(tmp_path_factory.mktemp("sep") / "Kim_Vocal_2.onnx")


@pytest.fixture(scope="module")
def separator(model_path):
    return VocalSeparator(model_path, providers=CPU)


def test_kim_vocal_2_parameters():
    p = MdxParams()
    assert (p.n_fft, p.hop_length, p.dim_f, p.dim_t, p.compensate) == (7680, 1024, 3072, 256, 1.009)
    assert (p.chunk_size, p.trim, p.gen_size) == (261120, 3840, 253440)
    assert int((1 - p.overlap) * p.chunk_size) == 195840


def test_vocals_match_audio_separator(request):
    if not in_portable_mkl(request):
        return
    separator = request.getfixturevalue("separator")
    with safe_open(FIXTURES / "vocals_tiny_official.safetensors", "pt") as f:
        every8 = f.get_tensor("vocals_every8").numpy()
        sha = f.metadata()["sha256_int16_le"]
    full = decode_audio(PORTRAITS / "0001.wav")
    vocals = separator.separate(Audio(full.samples[:, :220500].clone(), 44100))
    assert vocals.sample_rate == 44100 and vocals.samples.shape == (2, 220500)
    pcm = np.rint(vocals.samples.numpy() * 32768).astype("<i2")
    assert np.array_equal(pcm.astype(np.float32) / 32768, vocals.samples.numpy())  # 16-bit values, as the WAV
    assert np.abs(pcm[:, ::8].astype(int) - every8).max() <= 1
    assert hashlib.sha256(np.ascontiguousarray(pcm).tobytes()).hexdigest() == sha  # bit-exact


def test_chunks_and_progress(separator):
    calls = []
    audio = Audio(torch.from_numpy(np.sin(np.arange(44100 * 7) * 0.05)[None].astype(np.float32) * 0.3), 44100)
    vocals = separator.separate(audio, progress=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 3), (2, 3), (3, 3)]  # 7 s -> 3 overlapping chunks of 5.9 s
    assert vocals.samples.shape == (2, 44100 * 7)
    assert torch.equal(vocals.samples[0], vocals.samples[1])  # mono in -> duplicated stereo, as the library
    assert float(vocals.samples.abs().max()) == pytest.approx(0.6, abs=1e-3)  # amplified to the 0.6 minimum peak


def test_other_rates_and_channel_counts(separator):
    rng = np.random.default_rng(0)
    audio = Audio(torch.from_numpy((rng.standard_normal((6, 48000)) * 0.1).astype(np.float32)), 48000)
    mix = separator.stereo_mix(audio)
    assert mix.shape == (2, 44100) and np.array_equal(mix[0], mix[1])
    vocals = separator.separate(audio)
    assert vocals.sample_rate == 44100 and vocals.samples.shape == (2, 44100)


def test_parameters_from_the_official_model_table(tmp_path):
    path = write_tiny_vocal_separator(tmp_path / "Kim_Vocal_2.onnx")
    assert params_from_model_data(path)[0] == MdxParams()
    entry = {"compensate": 1.5, "mdx_dim_f_set": 3072, "mdx_dim_t_set": 8, "mdx_n_fft_scale_set": 7680,
             "primary_stem": "Vocals"}
    (tmp_path / "mdx_model_data.json").write_text(json.dumps({uvr_model_hash(path): entry}))
    params, source = params_from_model_data(path)
    assert params.compensate == 1.5 and params.dim_t == 256 and source.endswith("mdx_model_data.json")
    entry["primary_stem"] = "Instrumental"
    (tmp_path / "mdx_model_data.json").write_text(json.dumps({uvr_model_hash(path): entry}))
    with pytest.raises(ModelFileError, match="separates Instrumental, not vocals"):
        VocalSeparator(path, providers=CPU)


def test_uvr_hash_of_a_small_file_is_the_whole_file(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"abc" * 1000)
    assert uvr_model_hash(str(tmp_path / "m.onnx")) == hashlib.md5(b"abc" * 1000).hexdigest()


# ----- bad input ----------------------------------------------------------------------------------------------------


def listing(folder):
    return sorted(p.name for p in pathlib.Path(folder).iterdir())


def test_missing_model(tmp_path):
    with pytest.raises(ModelFileError, match="vocal separation model not found") as info:
        VocalSeparator(tmp_path / "audio_separator", providers=CPU)
    assert "Kim_Vocal_2.onnx" in str(info.value) and "pretrained_models/audio_separator/" in str(info.value)
    assert "turn vocal separation off" in str(info.value)
    assert listing(tmp_path) == []


def test_not_an_onnx_file(tmp_path):
    (tmp_path / "Kim_Vocal_2.onnx").write_bytes(b"<html>404 not found</html>")
    with pytest.raises(ModelFileError, match="is not a readable ONNX model"):
        VocalSeparator(tmp_path / "Kim_Vocal_2.onnx", providers=CPU)
    assert listing(tmp_path) == ["Kim_Vocal_2.onnx"]


def test_wrong_model(tmp_path):
    write_tiny_face_models(tmp_path)
    with pytest.raises(ModelFileError, match=r"does not have the MDX-Net input \[batch, 4, 3072, 256\]"):
        VocalSeparator(tmp_path / "glintr100.onnx", providers=CPU)


def test_silent_audio(separator):
    with pytest.raises(InputError, match="the audio is silent"):
        separator.separate(Audio(torch.zeros(2, 44100), 44100))


def test_no_voice_in_the_audio(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Mul", ["input", "zero"], ["output"])], "mute",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 4, 3072, 256])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["b", 4, 3072, 256])],
                              [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "Kim_Vocal_2.onnx"))
    mute = VocalSeparator(tmp_path / "Kim_Vocal_2.onnx", providers=CPU)
    music = Audio(torch.from_numpy(np.sin(np.arange(44100) * 0.1)[None].astype(np.float32) * 0.5), 44100)
    with pytest.raises(InputError, match="found no voice") as info:
        mute.separate(music)
    assert "turn vocal separation off" in str(info.value)
    assert listing(tmp_path) == ["Kim_Vocal_2.onnx"]
