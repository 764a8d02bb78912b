"""Audio input: decode a file or take a waveform, and resample speech to 16 kHz mono the way the official code does.

The official chain (hallo3 `sgm/utils/audio_processor.py`, `sgm/utils/util.py:resample_audio`) writes the separated
vocals as a 16-bit WAV, resamples it with the ffmpeg command line (`ffmpeg -i vocals.wav -ar 16000 vocals-16k.wav`)
and reads that with `librosa.load(sr=16000)`: int16 / 32768 as float32, then the mean over the channels.

`speech_16k_mono` does the same with the FFmpeg that PyAV bundles: every channel goes through libswresample in a
filter graph `aresample=16000:internal_sample_fmt=s16p` to 16-bit samples, then the channels are averaged in float32.
For 16-bit input this reproduces the ffmpeg CLI (5.1) bit-exactly on the fixture WAVs (44.1 and 48 kHz, mono and
stereo). PyAV's plain `AudioResampler` resamples in float and differs from the CLI by up to 5 LSB, hence the graph.
Input that is not exactly 16-bit (mp3, aac, a float ComfyUI waveform) is resampled in float and quantised to 16 bit, as
the CLI does when it writes a WAV.

No torchaudio (it does not import on CPU builds of torch) and no code of ours for the resampling itself.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import InputError

SAMPLE_RATE = 16000
FPS = 25
DEFAULT_MAX_SECONDS = 30 * 60  # a parameter: longer speech is rendered as several segments
SILENCE_PEAK = 2.0 / 32768  # at most +-2 LSB of 16-bit audio counts as silence
_CHUNK = 1 << 16  # samples pushed through the resampler at a time (streaming gives identical output)


@dataclass
class Audio:
    """A decoded waveform: `samples` is (channels, n) float32 in [-1, 1] at `sample_rate` Hz."""

    samples: torch.Tensor
    sample_rate: int

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.samples.shape[1])

    @property
    def seconds(self) -> float:
        return self.num_samples / self.sample_rate

    def as_comfy_audio(self) -> dict:
        """ComfyUI's AUDIO value: {"waveform": (1, channels, n) float32, "sample_rate": int}."""
        return {"waveform": self.samples.unsqueeze(0), "sample_rate": self.sample_rate}


def decode_audio(source: Any, *, max_seconds: float = DEFAULT_MAX_SECONDS, name: str | None = None,
                 check_silence: bool = True) -> Audio:
    """Decode `source` into an `Audio`, at its own sample rate and channel count.

    `source` is a path to any file PyAV reads (wav, mp3, flac, m4a, ogg, or a video whose audio track is used), a
    ComfyUI AUDIO dict {"waveform": [B, C, T] or [C, T], "sample_rate": int}, a (waveform, sample_rate) pair, or an
    `Audio`. Raises `InputError` for a missing, unreadable, empty, silent, too-short or too-long input.
    """
    if isinstance(source, Audio):
        audio, label = Audio(source.samples.float(), int(source.sample_rate)), name or "audio"
    elif isinstance(source, (str, os.PathLike)):
        label = name or os.fspath(source)
        audio = _decode_file(os.fspath(source), max_seconds)
    elif isinstance(source, Mapping) and "waveform" in source:
        label = name or "AUDIO input"
        audio = _from_waveform(source["waveform"], source.get("sample_rate"), label)
    elif isinstance(source, (tuple, list)) and len(source) == 2:
        label = name or "audio waveform"
        audio = _from_waveform(source[0], source[1], label)
    else:
        raise InputError(f"cannot use {type(source).__name__} as audio; pass a file path or a waveform with its "
                         "sample rate")
    _check_audio(audio, label, max_seconds, check_silence)
    return audio


def speech_16k_mono(audio: Audio) -> np.ndarray:
    """The official wav2vec2 input signal: 16 kHz, 16-bit quantised, mono mean, float32 (n,)."""
    channels = [resample_channel(ch, audio.sample_rate, SAMPLE_RATE, quantize_s16=True) for ch in audio.samples.numpy()]
    return np.mean(np.stack(channels), axis=0)  # librosa.to_mono: float32 mean over channels


def resample_channel(x: np.ndarray, rate_in: int, rate_out: int, *, quantize_s16: bool) -> np.ndarray:
    """Resample one channel with libswresample (PyAV's FFmpeg); float32 out, int16 / 32768 steps if `quantize_s16`.

    Exactly-16-bit input is resampled with 16-bit internal samples, as the ffmpeg CLI does for a 16-bit WAV.
    """
    import av

    x = np.ascontiguousarray(x, dtype=np.float32)
    as_int16 = _exact_int16(x)
    if rate_in == rate_out and (as_int16 is not None or not quantize_s16):
        return x.copy()
    in_fmt = "s16" if as_int16 is not None else "flt"
    out_fmt = "s16" if quantize_s16 else "flt"
    options = f"{rate_out}:internal_sample_fmt=s16p" if (as_int16 is not None and quantize_s16) else str(rate_out)
    graph = av.filter.Graph()
    src = graph.add_abuffer(format=in_fmt, sample_rate=rate_in, layout="mono", time_base=Fraction(1, rate_in))
    resample = graph.add("aresample", options)
    fmt = graph.add("aformat", f"sample_fmts={out_fmt}:sample_rates={rate_out}:channel_layouts=mono")
    sink = graph.add("abuffersink")
    src.link_to(resample)
    resample.link_to(fmt)
    fmt.link_to(sink)
    graph.configure()

    data = as_int16 if as_int16 is not None else x
    out: list[np.ndarray] = []
    for start in range(0, len(data), _CHUNK):
        part = np.ascontiguousarray(data[None, start:start + _CHUNK])
        frame = av.AudioFrame.from_ndarray(part, format=in_fmt, layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate_in, start, Fraction(1, rate_in)
        graph.push(frame)
        _drain(graph, out)
    graph.push(None)
    _drain(graph, out)
    y = np.concatenate(out) if out else np.zeros(0, np.float32)
    if quantize_s16:
        return (y.astype(np.float32) / np.float32(32768)).astype(np.float32)
    return y.astype(np.float32)


def _drain(graph, out: list) -> None:
    import av

    while True:
        try:
            frame = graph.pull()
        except (av.error.BlockingIOError, av.error.EOFError):
            return
        out.append(frame.to_ndarray().reshape(-1))


def _exact_int16(x: np.ndarray) -> np.ndarray | None:
    """The int16 samples if every value is k / 32768 for an int16 k (a 16-bit source), else None."""
    scaled = x * np.float32(32768)  # exact: a power-of-two scale
    if len(x) and (scaled.min() < -32768 or scaled.max() > 32767):
        return None
    rounded = np.rint(scaled)
    if not np.array_equal(rounded, scaled):
        return None
    return rounded.astype(np.int16)


_SCALE = {"u8": 128.0, "s16": 32768.0, "s32": 2147483648.0, "s64": 9223372036854775808.0}


def _frame_samples(frame) -> np.ndarray:
    """One decoded frame as float32 (channels, n), scaled like FFmpeg's own sample-format conversion."""
    channels = frame.layout.nb_channels if hasattr(frame.layout, "nb_channels") else len(frame.layout.channels)
    arr = frame.to_ndarray()
    if not frame.format.is_planar:
        arr = arr.reshape(-1, channels).T
    base = frame.format.name.rstrip("p")
    if base == "u8":
        return (arr.astype(np.float32) - 128.0) / 128.0
    if base in _SCALE:
        return (arr.astype(np.float64) / _SCALE[base]).astype(np.float32)
    return arr.astype(np.float32)


def _decode_file(path: str, max_seconds: float) -> Audio:
    import av

    if not os.path.isfile(path):
        raise InputError(f"audio file not found: {path}")
    try:
        container = av.open(path)
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path} is not an audio or video file that can be decoded ({_why(exc)}); "
                         "use a wav, mp3, flac, m4a, ogg or mp4 file") from None
    with container:
        if not container.streams.audio:
            raise InputError(f"{path} has no audio track; use a file that contains speech audio")
        stream = container.streams.best("audio")
        rate = stream.codec_context.sample_rate or stream.rate
        # the length is checked on the decoded samples (headers can lie), stopping as soon as the limit is passed
        chunks: list[np.ndarray] = []
        total = 0
        try:
            for frame in container.decode(stream):
                if frame.sample_rate != rate:
                    if total == 0:
                        rate = frame.sample_rate
                    else:
                        raise InputError(f"{path} changes its sample rate mid-stream; re-export it with one "
                                         "sample rate")
                samples = _frame_samples(frame)
                if chunks and samples.shape[0] != chunks[0].shape[0]:
                    raise InputError(f"{path} changes its channel count mid-stream; re-export it with one layout")
                chunks.append(samples)
                total += samples.shape[1]
                if total > (max_seconds + 1) * rate:
                    raise _too_long(path, total / rate, max_seconds, at_least=True)
        except av.FFmpegError as exc:
            raise InputError(f"{path} is damaged or not audio ({_why(exc)}); re-export it or use another "
                             "file") from None
    if not chunks or not rate:
        raise InputError(f"{path} contains no audio samples; use a file that contains speech")
    return Audio(torch.from_numpy(np.concatenate(chunks, axis=1)), int(rate))


def _from_waveform(waveform: Any, sample_rate: Any, label: str) -> Audio:
    if sample_rate is None or not float(sample_rate).is_integer() or int(sample_rate) <= 0:
        raise InputError(f"{label}: sample rate {sample_rate!r} is not a positive whole number of Hz")
    w = torch.as_tensor(waveform).detach().to("cpu", torch.float32)
    if w.dim() == 3:
        if w.shape[0] != 1:
            raise InputError(f"{label} holds a batch of {w.shape[0]} clips; pass one clip (split the batch first)")
        w = w[0]
    elif w.dim() == 1:
        w = w[None]
    if w.dim() != 2 or w.shape[0] < 1:
        raise InputError(f"{label}: waveform of shape {tuple(waveform.shape)} is not [channels, samples]")
    if w.shape[0] > 64 and w.shape[1] <= 64:
        raise InputError(f"{label}: waveform of shape {tuple(w.shape)} looks like [samples, channels]; "
                         "transpose it to [channels, samples]")
    return Audio(w.contiguous(), int(sample_rate))


def _check_audio(audio: Audio, label: str, max_seconds: float, check_silence: bool) -> None:
    if audio.num_samples == 0:
        raise InputError(f"{label} contains no audio samples; use a recording with speech")
    if not torch.isfinite(audio.samples).all():
        raise InputError(f"{label} contains NaN or infinite samples; re-export the audio")
    if audio.seconds > max_seconds:
        raise _too_long(label, audio.seconds, max_seconds)
    if audio.seconds < 1.0 / FPS:
        raise InputError(f"{label} is {audio.seconds * 1000:.1f} ms long, shorter than one video frame "
                         f"({1000 / FPS:.0f} ms at {FPS} fps); use a longer recording")
    if check_silence:
        check_not_silent(audio.samples, label)


def check_not_silent(samples: torch.Tensor | np.ndarray, label: str, what: str = "audio") -> None:
    """Refuse a signal whose peak is at most 2 LSB of 16-bit audio (digital silence)."""
    peak = float(torch.as_tensor(samples).abs().max()) if torch.as_tensor(samples).numel() else 0.0
    if peak <= SILENCE_PEAK:
        level = "-inf" if peak == 0 else f"{20 * math.log10(peak):.0f}"
        raise InputError(f"{label}: the {what} is silent (peak {level} dBFS); use a recording with audible speech")


def _too_long(label: str, seconds: float, max_seconds: float, at_least: bool = False) -> InputError:
    more = "more than " if at_least else ""
    return InputError(
        f"{label} is {more}{seconds / 60:.1f} min long; the limit is {max_seconds / 60:.1f} min (max_seconds): "
        "split the audio into parts below the limit and render them as consecutive segments, or raise max_seconds")


def _why(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)  # FFmpeg errors repeat the file name; keep the reason
    return " ".join(str(text).split())[:160] or type(exc).__name__
