"""Vocal separation with the MDX-Net `Kim_Vocal_2.onnx` model, as the official pipeline runs it.

Hallo3 (`sgm/utils/audio_processor.py`) calls the audio-separator library 0.21.2 with its defaults:
`Separator(output_single_stem="vocals")`, `load_model("Kim_Vocal_2.onnx")`, `separate(wav)`. That library is a large
dependency tree (librosa, pydub, onnx2torch, diffq, ...) for one ONNX model and an STFT, so this module re-implements
the same inference with onnxruntime and `torch.stft`. Every number below was read from audio-separator 0.21.2
(`separator/separator.py`, `architectures/mdx_separator.py`, `common_separator.py`, `uvr_lib_v5/stft.py`,
`uvr_lib_v5/spec_utils.py`) and from UVR's model table (`mdx_model_data.json`, which the official download ships):

| parameter | value | source |
| --- | --- | --- |
| sample rate | 44100 Hz, stereo (mono is duplicated) | `Separator(sample_rate=44100)`; `prepare_mix` |
| n_fft / hop / window | 7680 / 1024 / periodic Hann, `center=True` (reflect padding) | model data `mdx_n_fft_scale_set`; `mdx_params["hop_length"]`; `STFT` |
| model input | (batch, 4 = [L re, L im, R re, R im], dim_f = 3072 bins, dim_t = 256 frames); bins 0-2 zeroed | model data `mdx_dim_f_set`, `mdx_dim_t_set` = 8 (2**8); `run_model` |
| segment | `segment_size` 256 = dim_t frames: chunk = hop * (256 - 1) = 261120 samples | `mdx_params["segment_size"]` |
| overlap | 0.25: step = int(0.75 * chunk) = 195840; each chunk weighted by `np.hanning(chunk)`, summed, divided by the summed weights | `mdx_params["overlap"]`; `demix` |
| padding | trim = n_fft // 2 zeros in front; gen = chunk - 2 trim; gen + trim - n % gen zeros behind; trim removed afterwards | `demix` |
| compensate | x 1.009 | model data (Kim_Vocal_2, UVR hash 970b3f9492014d18fefeedfe4773cb42) |
| normalisation | peak > 0.9 -> scaled to 0.9, peak < 0.6 -> scaled up to 0.6: on the mix, then twice on the vocals | `normalization_threshold=0.9`, `amplification_threshold=0.6`; `separate`, `write_audio_pydub` |
| output | the primary stem ("Vocals") written as 16-bit WAV: `(x * 32767).astype(int16)` (truncation) | `write_audio_pydub` |
| denoise / batch | off / 1 | `mdx_params` |

Hallo and Hallo2 (the SD1.5-UNet backbones) pin audio-separator 0.17.2 instead, which differs only in having no
amplification: a mix or vocals whose peak is below 0.6 are left as they are (`amplify_quiet=False`).

The secondary stem (instrumental) that the library also computes is not needed and is skipped. When the official
download's `mdx_model_data.json` lies beside the model, its entry for the file's UVR hash (MD5 of the last 10,000 KiB)
supplies the model parameters, as the library does; otherwise Kim_Vocal_2's values above are used.

Deviation: a file that is not at 44.1 kHz is resampled by libswresample (PyAV) here, by soxr (librosa) in the library.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch

from ..errors import InputError, ModelFileError
from .decode import Audio, resample_channel

logger = logging.getLogger(__name__)

KIM_VOCAL_2_UVR_HASH = "970b3f9492014d18fefeedfe4773cb42"
MODEL_FILE = "Kim_Vocal_2.onnx"
_WHERE = "download Kim_Vocal_2.onnx (hallo3 pretrained_models/audio_separator/) or turn vocal separation off"


@dataclass(frozen=True)
class MdxParams:
    """MDX-Net inference settings; the defaults are Kim_Vocal_2's under audio-separator 0.21.2 (see module doc)."""

    n_fft: int = 7680
    hop_length: int = 1024
    dim_f: int = 3072
    dim_t: int = 256
    compensate: float = 1.009
    segment_size: int = 256
    overlap: float = 0.25
    sample_rate: int = 44100
    normalization_threshold: float = 0.9
    amplification_threshold: float | None = 0.6  # None: no amplification (audio-separator 0.17.2, Hallo / Hallo2)

    @property
    def trim(self) -> int:
        return self.n_fft // 2

    @property
    def chunk_size(self) -> int:
        return self.hop_length * (self.segment_size - 1)

    @property
    def gen_size(self) -> int:
        return self.chunk_size - 2 * self.trim


def uvr_model_hash(path: str) -> str:
    """UVR's model id: MD5 of the file's last 10,000 KiB (of the whole file when it is smaller)."""
    with open(path, "rb") as f:
        try:
            f.seek(-10000 * 1024, 2)
        except OSError:
            f.seek(0)
        return hashlib.md5(f.read()).hexdigest()


def params_from_model_data(path: str, base: MdxParams = MdxParams()) -> tuple[MdxParams, str]:
    """Parameters for the model at `path` from `mdx_model_data.json` beside it, else Kim_Vocal_2's; and their source."""
    table = os.path.join(os.path.dirname(path), "mdx_model_data.json")
    model_hash = uvr_model_hash(path)
    if os.path.isfile(table):
        try:
            with open(table, encoding="utf-8") as f:
                entry = json.load(f).get(model_hash)
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"{table} is not readable JSON ({exc}); download it again or delete it") from None
        if entry is not None:
            if str(entry.get("primary_stem", "Vocals")).lower() != "vocals":
                raise ModelFileError(f"{path} separates {entry.get('primary_stem')}, not vocals; {_WHERE}")
            return replace(base, compensate=float(entry["compensate"]), dim_f=int(entry["mdx_dim_f_set"]),
                           dim_t=2 ** int(entry["mdx_dim_t_set"]), n_fft=int(entry["mdx_n_fft_scale_set"])), table
    if model_hash == KIM_VOCAL_2_UVR_HASH:
        return base, "Kim_Vocal_2"
    return base, "assumed Kim_Vocal_2 settings (model not in mdx_model_data.json)"


def peak_normalize(wave: np.ndarray, max_peak: float, min_peak: float | None) -> np.ndarray:
    """audio-separator's `spec_utils.normalize`, in place, float32 arithmetic as under numpy 1.26."""
    peak = float(np.abs(wave).max())
    if peak > max_peak:
        wave *= np.float32(max_peak / peak)
    elif min_peak is not None and peak < min_peak:
        wave *= np.float32(min_peak / peak)
    return wave


class VocalSeparator:
    """Kim_Vocal_2 (MDX-Net) through onnxruntime; `separate(audio)` returns the vocals the official WAV holds."""

    def __init__(self, model_path: str | os.PathLike, *, providers: list[str] | None = None,
                 device: str | torch.device | None = None, params: MdxParams | None = None,
                 amplify_quiet: bool = True):
        from ..face.identity import default_providers, require_onnxruntime

        path = os.fspath(model_path)
        if os.path.isdir(path):
            path = os.path.join(path, MODEL_FILE)
        if not os.path.isfile(path):
            raise ModelFileError(f"vocal separation model not found: {path}; {_WHERE}")
        ort = require_onnxruntime()
        self.path = path
        self.params, self.params_source = (params, "caller") if params is not None else params_from_model_data(path)
        if not amplify_quiet:  # audio-separator 0.17.2 (Hallo, Hallo2)
            self.params = replace(self.params, amplification_threshold=None)
        try:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            self.session = ort.InferenceSession(path, sess_options=options,
                                                providers=providers or default_providers(device))
        except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
            raise ModelFileError(f"{path} is not a readable ONNX model ({' '.join(str(exc).split())[:160]}); "
                                 f"{_WHERE}") from None
        self._check_signature()
        self.window = torch.hann_window(self.params.n_fft, periodic=True)

    def _check_signature(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        want = [4, self.params.dim_f, self.params.dim_t]
        shape = list(inputs[0].shape) if inputs else []
        fits = len(inputs) == 1 and len(outputs) >= 1 and len(shape) == 4 and all(
            not isinstance(d, int) or d == w for d, w in zip(shape[1:], want))
        if not fits or len(outputs[0].shape) != 4:
            raise ModelFileError(f"{self.path} does not have the MDX-Net input [batch, 4, {self.params.dim_f}, "
                                 f"{self.params.dim_t}] of Kim_Vocal_2 (found {shape}); {_WHERE}")
        self.input_name = inputs[0].name

    def separate(self, audio: Audio, progress: Callable[[int, int], None] | None = None) -> Audio:
        """Vocals of `audio` at 44.1 kHz stereo, 16-bit values (the official vocals file); the input is not changed."""
        p = self.params
        mix = self.stereo_mix(audio)
        if not np.any(mix):
            raise InputError("the audio is silent (all samples are zero); use a recording with speech")
        mix = peak_normalize(mix, p.normalization_threshold, p.amplification_threshold)
        vocals = self.demix(mix, progress)
        vocals *= np.float32(p.compensate)
        # the library would amplify near-silence to a 0.6 peak of noise (and writes no file for exact zeros, so
        # Hallo3 crashes); refuse instead
        if not float(np.abs(vocals).max()) >= 1e-6:
            raise InputError("vocal separation found no voice in the audio (the vocals are silent); use a recording "
                             "with speech, or turn vocal separation off")
        vocals = peak_normalize(vocals, p.normalization_threshold, p.amplification_threshold)
        vocals = peak_normalize(vocals, p.normalization_threshold, p.amplification_threshold)  # again when written
        pcm = (vocals * 32767).astype(np.int16)  # the official 16-bit WAV (truncation, scale 32767)
        return Audio(torch.from_numpy(pcm.astype(np.float32) / np.float32(32768)), p.sample_rate)

    def stereo_mix(self, audio: Audio) -> np.ndarray:
        """The model's input signal: (2, n) float32 at 44.1 kHz; mono is duplicated, more channels are averaged."""
        x = audio.samples.numpy().astype(np.float32)
        if x.shape[0] > 2:
            x = x.mean(axis=0, keepdims=True)
        if audio.sample_rate != self.params.sample_rate:
            x = np.stack([resample_channel(ch, audio.sample_rate, self.params.sample_rate, quantize_s16=False)
                          for ch in x])
        if x.shape[0] == 1:
            x = np.concatenate([x, x])
        return np.ascontiguousarray(x, dtype=np.float32)

    def demix(self, mix: np.ndarray, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """The model's estimate of the vocals, (2, n) float32, by windowed overlap-add over chunks."""
        p = self.params
        n = mix.shape[-1]
        pad = p.gen_size + p.trim - n % p.gen_size
        mixture = np.concatenate([np.zeros((2, p.trim), np.float32), mix, np.zeros((2, pad), np.float32)], axis=1)
        step = int((1 - p.overlap) * p.chunk_size)
        result = np.zeros((1, 2, mixture.shape[-1]), dtype=np.float32)
        divider = np.zeros((1, 2, mixture.shape[-1]), dtype=np.float32)
        starts = range(0, mixture.shape[-1], step)
        for index, start in enumerate(starts):
            end = min(start + p.chunk_size, mixture.shape[-1])
            size = end - start
            part = mixture[:, start:end]
            if size < p.chunk_size:  # the last chunk is zero-padded to the model's length
                part = np.concatenate([part, np.zeros((2, p.chunk_size - size), np.float32)], axis=1)
            estimate = self.run_model(part[None])
            window = np.hanning(size)[None, None, :]
            estimate[..., :size] *= window  # float64 weights, float32 storage, as in the library
            divider[..., start:end] += window
            result[..., start:end] += estimate[..., :size]
            if progress is not None:
                progress(index + 1, len(starts))
        with np.errstate(divide="ignore", invalid="ignore"):  # zero weight only inside the trimmed margins
            waves = result / divider
        return np.ascontiguousarray(waves[0, :, p.trim:-p.trim][:, :n])

    def run_model(self, chunk: np.ndarray) -> np.ndarray:
        """(1, 2, chunk) waveform -> STFT -> model -> inverse STFT -> (1, 2, chunk) float32."""
        p = self.params
        spec = torch.stft(torch.from_numpy(chunk).reshape(-1, chunk.shape[-1]), n_fft=p.n_fft, hop_length=p.hop_length,
                          window=self.window, center=True, return_complex=True)  # (2, bins, frames)
        spec = torch.view_as_real(spec).permute(0, 3, 1, 2).reshape(1, 4, -1, spec.shape[-1])[:, :, :p.dim_f]
        spec = spec.contiguous()
        spec[:, :, :3, :] *= 0  # the library drops the lowest three bins
        pred = torch.from_numpy(self.session.run(None, {self.input_name: spec.numpy()})[0])
        bins = p.n_fft // 2 + 1
        pred = torch.cat([pred, pred.new_zeros(1, 4, bins - pred.shape[2], pred.shape[3])], dim=2)
        pred = pred.reshape(2, 2, bins, -1).permute(0, 2, 3, 1)
        wave = torch.istft(torch.complex(pred[..., 0].contiguous(), pred[..., 1].contiguous()), n_fft=p.n_fft,
                           hop_length=p.hop_length, window=self.window, center=True)
        return wave.reshape(1, 2, -1).numpy()


def load_vocal_separator(model_path: str | os.PathLike, *, providers: list[str] | None = None,
                         device: str | torch.device | None = None, amplify_quiet: bool = True) -> VocalSeparator:
    """Kim_Vocal_2 as Hallo3 runs it; `amplify_quiet=False` as Hallo and Hallo2 run it (audio-separator 0.17.2)."""
    return VocalSeparator(model_path, providers=providers, device=device, amplify_quiet=amplify_quiet)
