"""Audio decoding and the 16 kHz mono signal (hallo_core.audio.decode)."""

import hashlib
import json
import math
import pathlib
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from hallo_core.audio.decode import decode_audio, resample_channel, speech_16k_mono
from hallo_core.errors import InputError

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
PORTRAITS = SHARED / "portraits"
FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "frontends"


def listing(folder):
    return sorted(p.name for p in pathlib.Path(folder).iterdir())


def write_audio(path, samples, rate, codec, layout=None, video=False):
    """Encode float samples (channels, n) with PyAV into `path`."""
    samples = np.asarray(samples, dtype=np.float32)
    layout = layout or ("mono" if samples.shape[0] == 1 else "stereo")
    with av.open(str(path), "w") as container:
        if video:
            vs = container.add_stream("libx264", rate=25)
            vs.width, vs.height, vs.pix_fmt = 64, 64, "yuv420p"
        stream = container.add_stream(codec, rate=rate, layout=layout)
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout=layout,
                                      rate=stream.codec_context.sample_rate)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        if video:
            for i in range(int(samples.shape[1] / rate * 25)):
                img = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 9 % 255, np.uint8), format="rgb24")
                img.pts = i
                for packet in vs.encode(img):
                    container.mux(packet)
            for packet in vs.encode(None):
                container.mux(packet)
        for out in list(resampler.resample(frame)) + list(resampler.resample(None)):
            for packet in stream.encode(out):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def tone(seconds, rate, channels=1, freq=440.0):
    t = np.arange(int(seconds * rate)) / rate
    x = 0.5 * np.sin(2 * np.pi * freq * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
    return np.stack([x * (0.8 + 0.2 * c) for c in range(channels)]).astype(np.float32)


@pytest.mark.parametrize("name, channels, rate, seconds", [("0001", 2, 44100, 9.78), ("0003", 2, 44100, 9.45),
                                                           ("0008", 1, 48000, 10.45)])
def test_fixture_wavs_decode(name, channels, rate, seconds):
    audio = decode_audio(PORTRAITS / f"{name}.wav")
    assert audio.channels == channels and audio.sample_rate == rate
    assert audio.seconds == pytest.approx(seconds, abs=0.01)
    assert audio.samples.dtype == torch.float32 and float(audio.samples.abs().max()) <= 1.0
    # 16-bit source: every sample is k / 32768
    assert torch.equal(torch.round(audio.samples * 32768), audio.samples * 32768)


def test_resampling_matches_ffmpeg_command_line_bit_exactly():
    """The official `ffmpeg -i x.wav -ar 16000 y.wav` (ffmpeg 5.1 CLI) output, reproduced sample for sample."""
    golden = json.loads((FIXTURES / "ffmpeg_cli_resample_16k.json").read_text())
    for name, ref in golden["files"].items():
        audio = decode_audio(PORTRAITS / f"{name}.wav")
        channels = [resample_channel(ch, audio.sample_rate, 16000, quantize_s16=True) for ch in audio.samples.numpy()]
        pcm = np.rint(np.stack(channels, axis=1) * 32768).astype("<i2").reshape(-1)  # interleaved, as the WAV
        assert len(pcm) // ref["channels"] == ref["frames"]
        assert pcm[:8].tolist() == ref["first"]
        assert hashlib.sha256(pcm.tobytes()).hexdigest() == ref["sha256"], name
        mono = speech_16k_mono(audio)  # librosa.load(sr=16000): int16 / 32768, mean over channels, float32
        expected = np.mean(pcm.reshape(-1, ref["channels"]).T.astype(np.float32) / np.float32(32768), axis=0)
        assert mono.dtype == np.float32 and np.array_equal(mono, expected)


@pytest.mark.parametrize("codec, suffix, rate, channels", [("libmp3lame", "mp3", 44100, 2), ("flac", "flac", 48000, 1),
                                                           ("aac", "m4a", 44100, 2), ("libopus", "ogg", 48000, 2),
                                                           ("pcm_s16le", "wav", 22050, 1)])
def test_compressed_formats_decode(tmp_path, codec, suffix, rate, channels):
    src = tone(1.5, rate, channels)
    path = tmp_path / f"speech.{suffix}"
    write_audio(path, src, rate, codec)
    audio = decode_audio(path)
    assert audio.channels == channels and audio.sample_rate == rate
    assert audio.seconds == pytest.approx(1.5, abs=0.06)  # codec priming / padding
    speech = speech_16k_mono(audio)
    assert len(speech) == pytest.approx(1.5 * 16000, abs=0.06 * 16000)
    ref = resample_channel(src.mean(0), rate, 16000, quantize_s16=False)
    n = min(len(ref), len(speech)) - 2000
    lag = max(range(0, 1200), key=lambda k: float(np.dot(speech[k:k + n], ref[:n])))  # encoder delay
    corr = np.corrcoef(speech[lag:lag + n], ref[:n])[0, 1]
    assert corr > 0.99


def test_video_audio_track_is_decoded(tmp_path):
    path = tmp_path / "talk.mp4"
    write_audio(path, tone(1.0, 44100, 2), 44100, "aac", video=True)
    audio = decode_audio(path)
    assert audio.channels == 2 and audio.sample_rate == 44100 and audio.seconds == pytest.approx(1.0, abs=0.06)


def test_comfy_audio_and_waveform_inputs():
    ref = decode_audio(PORTRAITS / "0003.wav")
    comfy = {"waveform": ref.samples[None].clone(), "sample_rate": 44100}  # ComfyUI AUDIO: [B, C, T]
    from_dict = decode_audio(comfy)
    from_pair = decode_audio((ref.samples.clone(), 44100))
    assert torch.equal(from_dict.samples, ref.samples) and from_dict.sample_rate == 44100
    assert torch.equal(from_pair.samples, ref.samples)
    assert np.array_equal(speech_16k_mono(from_dict), speech_16k_mono(ref))
    round_trip = from_dict.as_comfy_audio()
    assert round_trip["waveform"].shape == (1, 2, ref.num_samples) and round_trip["sample_rate"] == 44100
    mono = decode_audio({"waveform": ref.samples[0], "sample_rate": 44100})  # [T]
    assert mono.channels == 1


def test_float_waveform_is_resampled_in_float_and_quantised():
    x = tone(1.0, 22050)[0] * 0.9 + 1e-6  # not 16-bit values
    y = resample_channel(x, 22050, 16000, quantize_s16=True)
    assert len(y) == 16000
    assert np.array_equal(np.round(y * 32768), y * 32768)  # 16-bit steps, as the CLI's WAV
    yf = resample_channel(x, 22050, 16000, quantize_s16=False)
    assert np.abs(yf - y).max() <= 1 / 32768 + 1e-7


def test_many_channels_are_averaged():
    x = torch.from_numpy(np.concatenate([tone(1.0, 16000, 1)] * 6))
    x[3] = 0
    audio = decode_audio((x, 16000))
    assert audio.channels == 6
    speech = speech_16k_mono(audio)
    assert np.allclose(speech, x.numpy().mean(0), atol=1 / 32768)


# ----- bad input: one clear line, nothing written ---------------------------------------------------------------


def bad(tmp_path, source, match, **kwargs):
    before = listing(tmp_path)
    with pytest.raises(InputError, match=match) as info:
        decode_audio(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400
    assert listing(tmp_path) == before
    return message


def test_missing_file(tmp_path):
    bad(tmp_path, tmp_path / "nope.wav", "audio file not found")


def test_not_audio_at_all(tmp_path):
    (tmp_path / "notes.wav").write_text("this is not a wave file\n" * 20)
    msg = bad(tmp_path, tmp_path / "notes.wav", "not an audio or video file")
    assert "wav, mp3" in msg
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "picture.png")
    bad(tmp_path, tmp_path / "picture.png", "no audio track|not an audio")


def test_corrupt_audio(tmp_path):
    good = tmp_path / "good.mp3"
    write_audio(good, tone(2.0, 44100, 2), 44100, "libmp3lame")
    data = bytearray(good.read_bytes())
    rng = np.random.default_rng(0)
    data[200:] = rng.integers(0, 256, len(data) - 200, dtype=np.uint8).tobytes()  # keep the header, scramble the rest
    (tmp_path / "broken.mp3").write_bytes(bytes(data))
    good.unlink()
    msg = bad(tmp_path, tmp_path / "broken.mp3", "is not an audio or video file that can be decoded")
    assert "Invalid data" in msg and msg.count("broken.mp3") == 1
    flac = tmp_path / "good.flac"
    write_audio(flac, tone(2.0, 44100, 2), 44100, "flac")
    data = bytearray(flac.read_bytes())
    data[100:] = rng.integers(0, 256, len(data) - 100, dtype=np.uint8).tobytes()  # valid header, garbage frames
    (tmp_path / "broken.flac").write_bytes(bytes(data))
    flac.unlink()
    bad(tmp_path, tmp_path / "broken.flac", "contains no audio samples|is damaged")


def test_video_without_audio(tmp_path):
    path = tmp_path / "silent_film.mp4"
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 64, 64, "yuv420p"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            frame.pts = i
            for p in vs.encode(frame):
                c.mux(p)
        for p in vs.encode(None):
            c.mux(p)
    bad(tmp_path, path, "has no audio track")


def test_silent_audio(tmp_path):
    write_audio(tmp_path / "silence.wav", np.zeros((2, 44100), np.float32), 44100, "pcm_s16le")
    msg = bad(tmp_path, tmp_path / "silence.wav", "silent")
    assert "-inf dBFS" in msg
    bad(tmp_path, (torch.full((1, 16000), 1e-5), 16000), "silent")


def test_shorter_than_one_frame(tmp_path):
    write_audio(tmp_path / "blip.wav", tone(0.03, 16000), 16000, "pcm_s16le")
    msg = bad(tmp_path, tmp_path / "blip.wav", "shorter than one video frame")
    assert "30.0 ms" in msg and "40 ms" in msg
    decode_audio((torch.from_numpy(tone(0.04, 16000)), 16000))  # exactly one frame is fine


def test_absurdly_long(tmp_path):
    msg = bad(tmp_path, PORTRAITS / "0001.wav", "the limit is", max_seconds=5.0)
    assert "split the audio" in msg and "max_seconds" in msg
    bad(tmp_path, (torch.from_numpy(tone(3.0, 8000)), 8000), "limit is 0.0 min", max_seconds=2.0)
    from hallo_core.audio.decode import DEFAULT_MAX_SECONDS

    assert DEFAULT_MAX_SECONDS == 30 * 60


def test_bad_waveforms(tmp_path):
    bad(tmp_path, {"waveform": torch.zeros(2, 2, 1000), "sample_rate": 16000}, "batch of 2 clips")
    bad(tmp_path, {"waveform": torch.zeros(1, 1000), "sample_rate": 0}, "sample rate")
    nan = torch.from_numpy(tone(1.0, 16000))
    nan[0, 5] = float("nan")
    bad(tmp_path, (nan, 16000), "NaN")
    bad(tmp_path, (torch.zeros(16000, 2), 16000), r"\[samples, channels\]")
    bad(tmp_path, {"waveform": torch.zeros(1, 0), "sample_rate": 16000}, "no audio samples")
    bad(tmp_path, 42, "cannot use int as audio")


def test_frame_arithmetic_matches_official_float_expression():
    from hallo_core.audio.wav2vec_features import frame_count

    assert frame_count(640) == 1 and frame_count(641) == 2
    assert frame_count(4480) == 8  # official math.ceil(4480 / 16000 * 25) == 8, a float rounding quirk
    assert frame_count(160000) == 250 == math.ceil(160000 / 16000 * 25)
