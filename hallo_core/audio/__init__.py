"""Audio front-end: decoded speech -> (optional) vocals -> wav2vec2 features -> per-clip audio windows.

    audio = decode_audio("speech.mp3")                        # or a ComfyUI AUDIO dict / (waveform, rate)
    speech = prepare_speech(audio, encoder, separator)        # separator=None skips vocal separation
    clip = clip_audio(speech.features, t, dtype=torch.bfloat16, device="cuda")   # (49, 5, 12, 768)
    video = video[:speech.features.audio_length]; mux speech.original (not the vocals) into the output

`prepare_speech` is the official order: separate vocals at 44.1 kHz, resample to 16 kHz as `ffmpeg -ar 16000`, mono
mean, wav2vec2 features padded to whole 49-frame clips.

Hallo / Hallo2 (SD1.5 UNet, 16-frame clips): `prepare_unet_speech` and `unet_clip_audio` (see `unet_windows`), with
Hallo2's 60 s pieces as an option (`long_audio_pieces`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .clip_windows import (
    MOTION_FRAMES,
    clip_audio,
    clip_frame_indices,
    clip_output_frames,
    new_frames_per_clip,
    num_clips,
    window_indices,
)
from .decode import (
    DEFAULT_MAX_SECONDS,
    FPS,
    SAMPLE_RATE,
    Audio,
    check_not_silent,
    decode_audio,
    resample_channel,
    speech_16k_mono,
)
from .long_audio_pieces import PIECE_SECONDS, Piece, encode_in_pieces, piece_frames, pydub_piece_bounds
from .unet_windows import (
    CLIP_FRAMES,
    UnetSpeech,
    prepare_unet_speech,
    unet_clip_audio,
    unet_num_clips,
    unet_output_frames,
    unet_window_rows,
)
from .vocal_separation import MdxParams, VocalSeparator, load_vocal_separator
from .wav2vec_features import (
    FRAMES_PER_CLIP,
    AudioFeatures,
    Wav2VecEncoder,
    encoder_input,
    frame_count,
    frame_windows,
    load_wav2vec,
    padded_frame_count,
)


@dataclass
class Speech:
    """The audio of one render: the `original` (what the video carries), the `vocals` that drove the model (None
    without separation) and their wav2vec2 `features`."""

    original: Audio
    vocals: Audio | None
    features: AudioFeatures


def prepare_speech(audio: Audio, encoder: Wav2VecEncoder, separator: VocalSeparator | None = None, *,
                   frames_per_clip: int = FRAMES_PER_CLIP, fps: float = FPS,
                   progress: Callable[[int, int], None] | None = None) -> Speech:
    """Features for the model from decoded audio, separating the vocals first when a separator is given."""
    vocals = separator.separate(audio, progress) if separator is not None else None
    speech = speech_16k_mono(vocals if vocals is not None else audio)
    check_not_silent(speech, "speech at 16 kHz")
    return Speech(audio, vocals, encoder(speech, frames_per_clip=frames_per_clip, fps=fps))


__all__ = [
    "Audio", "AudioFeatures", "CLIP_FRAMES", "DEFAULT_MAX_SECONDS", "FPS", "FRAMES_PER_CLIP", "MOTION_FRAMES",
    "MdxParams", "PIECE_SECONDS", "Piece", "SAMPLE_RATE", "Speech", "UnetSpeech", "VocalSeparator", "Wav2VecEncoder",
    "check_not_silent", "clip_audio", "clip_frame_indices", "clip_output_frames", "decode_audio", "encode_in_pieces",
    "encoder_input", "frame_count", "frame_windows", "load_vocal_separator", "load_wav2vec", "new_frames_per_clip",
    "num_clips", "padded_frame_count", "piece_frames", "prepare_speech", "prepare_unet_speech", "pydub_piece_bounds",
    "resample_channel", "speech_16k_mono", "unet_clip_audio", "unet_num_clips", "unet_output_frames",
    "unet_window_rows", "window_indices",
]
