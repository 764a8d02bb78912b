"""Audio front-end: decoded speech -> (optional) vocals -> wav2vec2 features -> per-clip audio windows.

    audio = decode_audio("speech.mp3")                        # or a ComfyUI AUDIO dict / (waveform, rate)
    speech = prepare_speech(audio, encoder, separator)        # separator=None skips vocal separation
    clip = clip_audio(speech.features, t, dtype=torch.bfloat16, device="cuda")   # (49, 5, 12, 768)
    video = video[:speech.features.audio_length]; mux speech.original (not the vocals) into the output

`prepare_speech` is the official order: separate vocals at 44.1 kHz, resample to 16 kHz as `ffmpeg -ar 16000`, mono
mean, wav2vec2 features padded to whole 49-frame clips.
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
from .vocal_separation import MdxParams, VocalSeparator, load_vocal_separator
from .wav2vec_features import (
    FRAMES_PER_CLIP,
    AudioFeatures,
    Wav2VecEncoder,
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
    "Audio", "AudioFeatures", "DEFAULT_MAX_SECONDS", "FPS", "FRAMES_PER_CLIP", "MOTION_FRAMES", "MdxParams",
    "SAMPLE_RATE", "Speech", "VocalSeparator", "Wav2VecEncoder", "check_not_silent", "clip_audio",
    "clip_frame_indices", "clip_output_frames", "decode_audio", "frame_count", "frame_windows", "load_vocal_separator",
    "load_wav2vec", "new_frames_per_clip", "num_clips", "padded_frame_count", "prepare_speech", "resample_channel",
    "speech_16k_mono", "window_indices",
]
