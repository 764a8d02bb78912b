"""wav2vec2 speech features exactly as Hallo3 computes them (hallo3 `sgm/utils/audio_processor.py:preprocess`,
`sgm/models/wav2vec.py`, `sample_video.py:process_audio_emb`).

1. `Wav2Vec2FeatureExtractor` (from the model folder's `preprocessor_config.json`) normalises the 16 kHz signal to zero
   mean and unit variance over the whole clip.
2. `frames = ceil(n / 16000 * 25)`, evaluated in floating point like the official code (so 4480 samples give 8 frames,
   not 7); this is `audio_length`, the length of the output video.
3. The normalised signal is right-padded with zeros to a whole number of 49-frame clips (640 samples per missing frame).
4. transformers' `Wav2Vec2Model` runs in fp32 with one change, made through a forward hook on its CNN feature encoder:
   the CNN features (about 50 per second) are linearly interpolated (`align_corners=True`) to exactly one per video
   frame before the feature projection and the transformer.
5. All 12 transformer layer outputs (`hidden_states[1:]`) are stacked per frame, and every frame gets the window of
   frames i-2 .. i+2, clamped at both ends: (frames, 5, layers, dim).

The model and its feature extractor are transformers' own; only the interpolation is Hallo3's.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError

from ..errors import InputError, ModelFileError
from ..loading.quiet import quiet_transformers
from .decode import FPS, SAMPLE_RATE

FRAMES_PER_CLIP = 49
WINDOW_RADIUS = 2  # a 5-frame window per video frame


@dataclass
class AudioFeatures:
    """wav2vec2 features for every video frame of a speech clip.

    `layers` is (num_frames, layers, dim) float32 on the CPU: all transformer layer outputs per frame. `num_frames` is
    padded up to a whole number of `frames_per_clip` clips; the first `audio_length` frames carry real audio (the
    finished video is cut to that length). `windows` gives the official (num_frames, 5, layers, dim) tensor; a clip's
    share is cut by `clip_windows.clip_audio` without building the whole window tensor (5x the memory).
    """

    layers: torch.Tensor
    audio_length: int
    frames_per_clip: int = FRAMES_PER_CLIP
    fps: float = FPS

    @property
    def num_frames(self) -> int:
        return int(self.layers.shape[0])

    @property
    def windows(self) -> torch.Tensor:
        return frame_windows(self.layers)


def frame_count(num_samples: int, fps: float = FPS, sample_rate: int = SAMPLE_RATE) -> int:
    """Video frames covered by `num_samples`; the official float expression, rounding quirks included."""
    return math.ceil(num_samples / sample_rate * fps)


def padded_frame_count(frames: int, frames_per_clip: int = FRAMES_PER_CLIP) -> int:
    """`frames` rounded up to a whole number of clips (official: padding only when not already a multiple)."""
    if frames_per_clip > 0 and frames % frames_per_clip != 0:
        frames += frames_per_clip - frames % frames_per_clip
    return frames


def encoder_input(values: np.ndarray, frames: int, fps: float = FPS) -> tuple[torch.Tensor, int]:
    """(what wav2vec receives, audio_length): the normalised signal right-padded with zeros to `frames` frames.

    `audio_length` is `frame_count` of the unpadded signal; the pad is `(frames - audio_length) * (16000 // fps)`
    samples, as official (so the padded signal need not be exactly `frames * 640` samples long)."""
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    audio_length = frame_count(len(values), fps)
    if frames < audio_length:
        raise ValueError(f"{frames} frames cannot hold {audio_length} frames of audio")
    signal = torch.from_numpy(values.copy())
    if frames != audio_length:
        signal = F.pad(signal, (0, int((frames - audio_length) * (SAMPLE_RATE // fps))))
    return signal, audio_length


def frame_windows(frames: torch.Tensor, radius: int = WINDOW_RADIUS) -> torch.Tensor:
    """(N, ...) -> (N, 2*radius+1, ...): frames i-radius .. i+radius for every i, indices clamped to [0, N-1]."""
    n = frames.shape[0]
    index = (torch.arange(n)[:, None] + torch.arange(-radius, radius + 1)[None, :]).clamp(0, n - 1)
    return frames[index.to(frames.device)]


class Wav2VecEncoder:
    """A transformers `Wav2Vec2Model` plus its `Wav2Vec2FeatureExtractor`, run the Hallo3 way.

    Speech up to `2 * cnn_chunk_seconds` goes through the CNN feature encoder in one piece, as official. Longer speech
    goes through it in `cnn_chunk_seconds` pieces (`chunked_cnn_features`), so 30 minutes do not need tens of GB for
    the first convolution's output; that is exact except for the float summation order of the first layer's
    whole-clip GroupNorm statistics (about 1e-7 relative). `cnn_chunk_seconds=None` always runs in one piece.
    """

    def __init__(self, model, feature_extractor, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 cnn_chunk_seconds: float | None = 60.0):
        self.model = model.eval().to(device=device, dtype=dtype)
        self.feature_extractor = feature_extractor
        self.device = torch.device(device)
        self.dtype = dtype
        self.cnn_chunk_seconds = cnn_chunk_seconds

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def to(self, device: str | torch.device) -> "Wav2VecEncoder":
        self.model.to(device)
        self.device = torch.device(device)
        return self

    def __call__(self, speech_16k: np.ndarray, *, frames_per_clip: int = FRAMES_PER_CLIP,
                 fps: float = FPS) -> AudioFeatures:
        """Features for a 16 kHz mono float32 signal (what `decode.speech_16k_mono` returns)."""
        speech = np.asarray(speech_16k, dtype=np.float32).reshape(-1)
        if speech.size < SAMPLE_RATE / fps:
            raise InputError(f"the speech is {speech.size / SAMPLE_RATE * 1000:.1f} ms long, shorter than one video "
                             f"frame ({1000 / fps:.0f} ms); use a longer recording")
        values = self.normalize(speech)
        audio_length = frame_count(len(values), fps)
        frames = padded_frame_count(audio_length, frames_per_clip)
        return self.encode_normalized(values, frames, frames_per_clip=frames_per_clip, fps=fps)

    def normalize(self, speech_16k: np.ndarray) -> np.ndarray:
        """The feature extractor's zero-mean, unit-variance signal over the whole input, (n,) float32."""
        values = self.feature_extractor(np.asarray(speech_16k, dtype=np.float32).reshape(-1),
                                        sampling_rate=SAMPLE_RATE).input_values
        return np.asarray(values, dtype=np.float32).reshape(-1)

    def encode_normalized(self, values: np.ndarray, frames: int, *, frames_per_clip: int = FRAMES_PER_CLIP,
                          fps: float = FPS) -> AudioFeatures:
        """Features of an already normalised signal, zero-padded to `frames` video frames (official: the padding is
        added to the normalised signal, `(frames - audio_length) * 640` zeros); `frames` >= its `audio_length`."""
        signal, audio_length = encoder_input(values, frames, fps)
        return AudioFeatures(self.layer_features(signal[None], frames), audio_length, frames_per_clip, fps)

    @torch.no_grad()
    def cnn_features(self, input_values: torch.Tensor) -> torch.Tensor:
        """(1, samples) -> (1, channels, ~50 Hz frames): the CNN feature encoder's output."""
        values = input_values.to(self.device, self.dtype)
        chunk = None if self.cnn_chunk_seconds is None else int(self.cnn_chunk_seconds * SAMPLE_RATE)
        if chunk is None or values.shape[-1] <= 2 * chunk:
            return self.model.feature_extractor(values)
        return chunked_cnn_features(self.model.feature_extractor, values, chunk)

    @torch.no_grad()
    def layer_features(self, input_values: torch.Tensor, frames: int) -> torch.Tensor:
        """(1, samples) normalised signal -> (frames, layers, dim): every transformer layer's output per video frame."""
        cnn = F.interpolate(self.cnn_features(input_values), size=frames, mode="linear", align_corners=True)

        # transformers' own forward runs the projection and the encoder (and collects every layer's output, which
        # differs between transformers versions); a hook hands it the frame-rate features in place of its CNN output,
        # and a minimal dummy waveform keeps its own CNN pass trivial
        handle = self.model.feature_extractor.register_forward_hook(lambda _module, _inputs, _output: cnn)
        try:
            receptive = _receptive_field(self.model.feature_extractor)[0]
            out = self.model(torch.zeros(1, receptive, device=self.device, dtype=self.dtype), output_hidden_states=True)
        finally:
            handle.remove()
        layers = torch.stack(out.hidden_states[1:], dim=1)[0]  # (layers, frames, dim)
        return layers.transpose(0, 1).float().cpu().contiguous()


def _receptive_field(encoder) -> tuple[int, int]:
    """(samples seen by one output frame, samples between output frames) of the CNN feature encoder."""
    field, stride = 1, 1
    for layer in encoder.conv_layers:
        kernel, step = layer.conv.kernel_size[0], layer.conv.stride[0]
        field += (kernel - 1) * stride
        stride *= step
    return field, stride


@torch.no_grad()
def chunked_cnn_features(encoder, values: torch.Tensor, chunk_samples: int) -> torch.Tensor:
    """The CNN feature encoder's output computed piecewise over time, same result as `encoder(values)`.

    The convolutions have no padding, so output frames [k0, k1) need exactly the samples
    [stride*k0, stride*(k1-1) + field). wav2vec2-base's first layer normalises each channel over the whole clip
    (GroupNorm with one group per channel); its statistics are gathered in a first pass, in float64.
    """
    field, stride = _receptive_field(encoder)
    total = (values.shape[-1] - field) // stride + 1
    first = encoder.conv_layers[0]
    norm = getattr(first, "layer_norm", None)
    whole_clip_norm = isinstance(norm, torch.nn.GroupNorm)
    if whole_clip_norm:
        if norm.num_groups != norm.num_channels:
            raise ValueError("chunked CNN features need one GroupNorm group per channel (wav2vec2-base)")
        kernel, step = first.conv.kernel_size[0], first.conv.stride[0]
        frames0 = (values.shape[-1] - kernel) // step + 1
        per = max(chunk_samples // step, 1)
        count, mean, m2 = 0, None, None
        for j0 in range(0, frames0, per):  # Chan's parallel mean/variance over chunks
            j1 = min(frames0, j0 + per)
            h = first.conv(values[:, None, step * j0: step * (j1 - 1) + kernel]).double()[0]
            n, m, v = h.shape[-1], h.mean(-1), h.var(-1, unbiased=False) * h.shape[-1]
            if mean is None:
                count, mean, m2 = n, m, v
            else:
                delta = m - mean
                mean = mean + delta * n / (count + n)
                m2 = m2 + v + delta ** 2 * count * n / (count + n)
                count += n
        scale = (norm.weight.double() / torch.sqrt(m2 / count + norm.eps))
        shift = norm.bias.double() - mean * scale
        scale, shift = scale.to(values.dtype)[:, None], shift.to(values.dtype)[:, None]
    per = max(chunk_samples // stride, 1)
    pieces = []
    for k0 in range(0, total, per):
        k1 = min(total, k0 + per)
        h = values[:, None, stride * k0: stride * (k1 - 1) + field]
        if whole_clip_norm:
            h = first.activation(first.conv(h) * scale + shift)
            layers = encoder.conv_layers[1:]
        else:  # per-frame LayerNorm or no norm: every layer is local
            layers = encoder.conv_layers
        for layer in layers:
            h = layer(h)
        pieces.append(h)
    return torch.cat(pieces, dim=-1)


def load_wav2vec(model_dir: str | os.PathLike, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> Wav2VecEncoder:
    """Load wav2vec2-base-960h (or a tiny test copy) from its Hugging Face folder.

    The folder needs `config.json`, `preprocessor_config.json` and `model.safetensors` (or `pytorch_model.bin`, read
    without running pickled code). fp32 is the official precision.
    """
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    model_dir = os.fspath(model_dir)
    where = "(official layout: pretrained_models/wav2vec/wav2vec2-base-960h/)"
    if not os.path.isdir(model_dir):
        raise ModelFileError(f"wav2vec2 folder not found: {model_dir}; download facebook/wav2vec2-base-960h there "
                             f"{where}")
    for name in ("config.json", "preprocessor_config.json"):
        if not os.path.isfile(os.path.join(model_dir, name)):
            raise ModelFileError(f"{name} missing in {model_dir}; download it from facebook/wav2vec2-base-960h {where}")
    weights = os.path.join(model_dir, "model.safetensors")
    legacy = os.path.join(model_dir, "pytorch_model.bin")
    try:
        with quiet_transformers():
            config = Wav2Vec2Config.from_pretrained(model_dir, local_files_only=True)
            extractor = Wav2Vec2FeatureExtractor.from_pretrained(model_dir, local_files_only=True)
            if os.path.isfile(weights):
                model, info = Wav2Vec2Model.from_pretrained(model_dir, local_files_only=True, use_safetensors=True,
                                                            output_loading_info=True)
            elif os.path.isfile(legacy):
                from ..loading.safe_pickle import load_torch_checkpoint

                state = load_torch_checkpoint(legacy)
                model, info = Wav2Vec2Model.from_pretrained(None, config=config, state_dict=dict(state),
                                                            output_loading_info=True)
            else:
                raise ModelFileError(f"model.safetensors missing in {model_dir}; download it from "
                                     f"facebook/wav2vec2-base-960h {where}")
    except ModelFileError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
        raise ModelFileError(f"{model_dir}: cannot load the wav2vec2 model ({' '.join(str(exc).split())[:200]}); "
                             f"download facebook/wav2vec2-base-960h again {where}") from None
    missing = sorted(k for k in info.get("missing_keys", ()) if "masked_spec_embed" not in k)
    if missing or info.get("mismatched_keys"):
        bad = missing[:3] or [str(k) for k in list(info["mismatched_keys"])[:3]]
        raise ModelFileError(f"{model_dir}: the weights do not match a wav2vec2 model (e.g. {', '.join(bad)}); "
                             f"download facebook/wav2vec2-base-960h again {where}")
    if not getattr(extractor, "do_normalize", False):
        raise ModelFileError(f"{model_dir}/preprocessor_config.json has do_normalize=false, but Hallo3's "
                             "wav2vec2-base-960h normalises its input; use the official preprocessor_config.json")
    return Wav2VecEncoder(model, extractor, device=device, dtype=dtype)
