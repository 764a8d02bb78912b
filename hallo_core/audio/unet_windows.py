"""Speech front-end of the SD1.5-UNet backbones (Hallo, Hallo2): wav2vec2 features in 16-frame clips and each clip's
audio windows (official hallo `datasets/audio_processor.py:76-129`, `scripts/inference.py:95-114, 285-343`).

    speech = prepare_unet_speech(audio, encoder, separator)          # long_audio_pieces=True: Hallo2's 60 s pieces
    for t in range(unet_num_clips(speech.features)):
        windows = unet_clip_audio(speech.features, t)                 # (16, 5, 12, 768) -> audioproj
    video = video[:unet_output_frames(speech.features)]

The features are Hallo3's recipe (`wav2vec_features`) with 16-frame clips: `audio_length = ceil(n / 16000 * 25)` in
floating point, the normalised signal right-padded with `(16 - audio_length % 16) * 640` zeros when `audio_length` is
not a multiple of 16, and one feature row per video frame. Every frame i gets the window of rows i-2 .. i+2, clamped
to [0, N-1] with N the padded length (`process_audio_emb`); clip t takes rows [16t, 16t + 16). The clips do not
overlap (the 2 motion frames are images, not audio), there are N // 16 of them, and the video is cut to
`audio_length` frames (and, with Hallo2's pieces, to the frames rendered).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .clip_windows import window_indices
from .decode import FPS, Audio, check_not_silent, speech_16k_mono
from .long_audio_pieces import PIECE_SECONDS, Piece, encode_in_pieces
from .wav2vec_features import WINDOW_RADIUS, AudioFeatures, Wav2VecEncoder

CLIP_FRAMES = 16  # official n_sample_frames


@dataclass
class UnetSpeech:
    """The audio of one Hallo / Hallo2 render (same first three fields as `Speech`): the `original` (what the video
    carries), the `vocals` that drove the model (None without separation), the `features` (16-frame clips), and with
    Hallo2's pieces the `pieces` and a note."""

    original: Audio
    vocals: Audio | None
    features: AudioFeatures
    pieces: list[Piece] | None = None
    notes: list[str] = field(default_factory=list)


def _layers(features: AudioFeatures | torch.Tensor) -> torch.Tensor:
    return features.layers if isinstance(features, AudioFeatures) else features


def unet_num_clips(features: AudioFeatures | torch.Tensor | int, clip_frames: int = CLIP_FRAMES) -> int:
    """Clips the official loop renders: N // 16 (a tail shorter than a clip, possible with Hallo2's pieces, is
    dropped)."""
    n = features if isinstance(features, int) else int(_layers(features).shape[0])
    return n // clip_frames


def unet_output_frames(features: AudioFeatures, clip_frames: int = CLIP_FRAMES) -> int:
    """Frames of the finished video: the rendered frames cut to `audio_length`."""
    return min(unet_num_clips(features, clip_frames) * clip_frames, features.audio_length)


def unet_window_rows(clip_index: int, num_frames: int, clip_frames: int = CLIP_FRAMES,
                     radius: int = WINDOW_RADIUS) -> torch.Tensor:
    """(clip_frames, 2*radius+1): the feature rows in each window of clip `clip_index` (official process_audio_emb)."""
    clips = unet_num_clips(num_frames, clip_frames)
    if not 0 <= clip_index < clips:
        raise ValueError(f"clip {clip_index} does not exist: {num_frames} frames make {clips} clips")
    rows = torch.arange(clip_index * clip_frames, (clip_index + 1) * clip_frames)
    return window_indices(num_frames, radius)[rows]


def unet_clip_audio(features: AudioFeatures | torch.Tensor, clip_index: int, *, clip_frames: int = CLIP_FRAMES,
                    radius: int = WINDOW_RADIUS, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Clip `clip_index`'s audio windows, (clip_frames, 2*radius+1, layers, dim): rows [16t, 16t+16) of the official
    (N, 5, layers, dim) window tensor, without building it."""
    layers = _layers(features)
    index = unet_window_rows(clip_index, int(layers.shape[0]), clip_frames, radius)
    clip = layers[index.to(layers.device)]
    return clip.to(device=device if device is not None else clip.device, dtype=dtype or clip.dtype)


def prepare_unet_speech(audio: Audio, encoder: Wav2VecEncoder, separator=None, *, long_audio_pieces: bool = False,
                        piece_seconds: int = PIECE_SECONDS, clip_frames: int = CLIP_FRAMES, fps: float = FPS,
                        progress: Callable[[int, int], None] | None = None) -> UnetSpeech:
    """Features for a Hallo / Hallo2 render from decoded audio, separating the vocals first when a separator is given.

    `long_audio_pieces` reproduces Hallo2's `use_cut`: 60 s pieces, each separated, resampled, normalised and encoded
    on its own (see `long_audio_pieces`); off, the whole file is one pass, as Hallo (v1) and as Hallo2 for audio up to
    60 s."""
    if long_audio_pieces:
        result = encode_in_pieces(audio, encoder, separator, piece_seconds=piece_seconds, clip_frames=clip_frames,
                                  fps=fps, progress=progress)
        notes = []
        if len(result.pieces) > 1:
            notes.append(f"the audio was encoded in {len(result.pieces)} pieces of {piece_seconds} s, each on its own "
                         "(Hallo2's use_cut)")
        rendered = unet_num_clips(result.features, clip_frames) * clip_frames
        if rendered < result.features.audio_length:
            notes.append(f"as in the official Hallo2 code, the last {result.features.audio_length - rendered} frames "
                         "of audio fall outside the rendered clips and are not rendered")
        return UnetSpeech(audio, result.vocals, result.features, result.pieces, notes)
    vocals = separator.separate(audio, progress) if separator is not None else None
    speech = speech_16k_mono(vocals if vocals is not None else audio)
    check_not_silent(speech, "speech at 16 kHz")
    return UnetSpeech(audio, vocals, encoder(speech, frames_per_clip=clip_frames, fps=fps))


__all__ = ["CLIP_FRAMES", "UnetSpeech", "prepare_unet_speech", "unet_clip_audio", "unet_num_clips",
           "unet_output_frames", "unet_window_rows"]
