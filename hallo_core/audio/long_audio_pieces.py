"""Hallo2's 60-second audio pieces (official hallo2 `scripts/inference_long.py:141-161, 228-253`,
`hallo/datasets/audio_processor.py:76-129`), an option of the UNet speech front-end (off by default).

With `use_cut` (Hallo2's default), the driving audio is cut into 60 s pieces before anything else, and every piece goes
through vocal separation, 16 kHz resampling, normalisation and wav2vec2 on its own; the per-frame features of the
pieces are concatenated. What that changes against one pass over the whole file:

* the vocal separator's peak normalisation, the wav2vec2 input normalisation (zero mean, unit variance) and the
  wav2vec2 context (its CNN and transformer see one piece) are per piece, so the features near each 60 s boundary and
  the scale of every piece differ from a whole-file pass;
* only the last piece is padded, and by `16 - all_len % 16` frames where `all_len` = the total length so far, while
  the test for padding looks at the last piece alone (`seq_len % 16 != 0`). So when the piece's length is not a
  multiple of 16 but the total is, 16 extra frames (a whole extra clip) are rendered and cut off at the end; when the
  piece's length is a multiple of 16 but the total is not, nothing is padded and the final `total % 16` frames are
  never rendered (the video is shorter than the audio);
* audio up to 60 s is one piece and behaves exactly as Hallo (v1).

The cut follows pydub's millisecond arithmetic: the length is `round(1000 * samples / rate)` ms, a piece spans
[i * 60000, min((i + 1) * 60000, length)) ms, and a position of m ms is sample `int(m * rate / 1000)`; samples past
the end of the file (at most the rounding of the length) read as zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import InputError
from .decode import FPS, Audio, check_not_silent, speech_16k_mono
from .wav2vec_features import AudioFeatures, Wav2VecEncoder, encoder_input, frame_count

PIECE_SECONDS = 60


@dataclass
class Piece:
    """One piece: `start`/`end` in samples of the original audio, its `audio_length` (frames before padding), the
    `frames` it was encoded to, and the zero samples added to its normalised signal (`pad_samples`)."""

    start: int
    end: int
    audio_length: int
    frames: int
    pad_samples: int


def pydub_piece_bounds(num_samples: int, sample_rate: int, piece_seconds: int = PIECE_SECONDS) -> list[tuple[int, int]]:
    """[start, end) sample ranges of the official `cut_audio` pieces (end may pass `num_samples` by a rounding)."""
    length_ms = round(1000 * (float(num_samples) / sample_rate))  # pydub's len(): Python round, half to even
    piece_ms = piece_seconds * 1000
    count = length_ms // piece_ms + (1 if length_ms % piece_ms != 0 else 0)
    per_ms = sample_rate / 1000.0
    bounds = []
    for i in range(count):
        start_ms, end_ms = i * piece_ms, min((i + 1) * piece_ms, length_ms)
        bounds.append((int(start_ms * per_ms), int(end_ms * per_ms)))
    return bounds


def piece_frames(audio_length: int, processed_length: int, clip_frames: int, last: bool) -> int:
    """Frames a piece is encoded to: official hallo2 padding, `all_len` quirk included (see module doc)."""
    if last and clip_frames > 0 and audio_length % clip_frames != 0:
        all_len = audio_length + processed_length
        return audio_length + clip_frames - all_len % clip_frames
    return audio_length


def cut_piece(audio: Audio, start: int, end: int) -> Audio:
    """Samples [start, end) of `audio`, zero-filled past its end (as pydub fills missing frames with silence)."""
    samples = audio.samples[:, start:min(end, audio.num_samples)]
    if end > audio.num_samples:
        samples = torch.cat([samples, samples.new_zeros(samples.shape[0], end - audio.num_samples)], dim=1)
    return Audio(samples.contiguous(), audio.sample_rate)


@dataclass
class PieceFeatures:
    """The concatenated features (`features.num_frames` need not be a multiple of 16), the concatenated vocals (None
    without separation) and what each piece was."""

    features: AudioFeatures
    vocals: Audio | None
    pieces: list[Piece]


def encode_in_pieces(audio: Audio, encoder: Wav2VecEncoder, separator=None, *, piece_seconds: int = PIECE_SECONDS,
                     clip_frames: int = 16, fps: float = FPS,
                     progress: Callable[[int, int], None] | None = None) -> PieceFeatures:
    """Hallo2's piecewise speech features: each piece separated (when a separator is given), resampled, normalised,
    padded (last piece only) and encoded on its own; `progress(done, total)` is called once per piece."""
    if audio.num_samples < audio.sample_rate / fps:
        raise InputError(f"the speech is {audio.seconds * 1000:.1f} ms long, shorter than one video frame "
                         f"({1000 / fps:.0f} ms); use a longer recording")
    check_not_silent(audio.samples, "speech")
    bounds = pydub_piece_bounds(audio.num_samples, audio.sample_rate, piece_seconds)
    layers, vocals, pieces = [], [], []
    processed = 0
    for index, (start, end) in enumerate(bounds):
        piece = cut_piece(audio, start, end)
        where = (f"piece {index + 1} of {len(bounds)} ({start / audio.sample_rate:.1f}-"
                 f"{end / audio.sample_rate:.1f} s)")
        try:
            piece_vocals = separator.separate(piece) if separator is not None else None
        except InputError as exc:
            raise InputError(f"{where}: {exc} (or turn the 60-second pieces off)") from None
        values = encoder.normalize(speech_16k_mono(piece_vocals if piece_vocals is not None else piece))
        length = frame_count(len(values), fps)
        frames = piece_frames(length, processed, clip_frames, last=index == len(bounds) - 1)
        signal, _ = encoder_input(values, frames, fps)
        layers.append(encoder.layer_features(signal[None], frames))
        pieces.append(Piece(start, end, length, frames, int(signal.numel() - len(values))))
        if piece_vocals is not None:
            vocals.append(piece_vocals)
        processed += length
        if progress is not None:
            progress(index + 1, len(bounds))
    features = AudioFeatures(torch.cat(layers), processed, clip_frames, fps)
    joined = None
    if vocals:
        joined = Audio(torch.cat([v.samples for v in vocals], dim=1), vocals[0].sample_rate)
    return PieceFeatures(features, joined, pieces)


__all__ = ["PIECE_SECONDS", "Piece", "PieceFeatures", "cut_piece", "encode_in_pieces", "piece_frames",
           "pydub_piece_bounds"]
