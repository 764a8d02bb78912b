"""Video files with PyAV: the final MP4 (H.264 + AAC) and the lossless per-clip files of a render.

* `Mp4Writer` streams frames into an H.264 (yuv420p) MP4 with the driving audio as AAC, trimmed to the video; it
  writes under a temporary name and renames on success, so an interrupted run never leaves a half file.
* Clip files hold a finished clip's uint8 frames losslessly (FFV1 in Matroska, ~2-4x smaller than raw), so a resumed
  render reproduces the uninterrupted one exactly.
"""

from __future__ import annotations

import os
from fractions import Fraction
from typing import Iterable, Iterator

import av
import numpy as np

from ..errors import InputError

FPS = 25


def _temporary(path: str) -> str:
    root, ext = os.path.splitext(path)
    return f"{root}.partial{ext}"


class Mp4Writer:
    """`with Mp4Writer(path, audio=(waveform, rate)) as w: w.write(frame)`; frames are uint8 (H, W, 3) RGB.

    Audio (channels, samples) in [-1, 1] is encoded alongside the frames, so it is interleaved with the video and ends
    exactly where the video ends.
    """

    def __init__(self, path: str | os.PathLike, fps: int = FPS, audio: tuple[np.ndarray, int] | None = None,
                 crf: int = 18, preset: str = "medium"):
        self.path = os.fspath(path)
        self.fps = fps
        self.crf, self.preset = crf, preset
        self.frames = 0
        self._container = None
        self._video = None
        self._audio = None
        self._audio_cursor = 0
        self._waveform, self._rate = _prepare_audio(*audio) if audio is not None else (None, None)

    def __enter__(self) -> "Mp4Writer":
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise InputError(f"output folder does not exist: {directory}")
        self._container = av.open(_temporary(self.path), "w", format="mp4", options={"movflags": "+faststart"})
        return self

    def _open_streams(self, height: int, width: int) -> None:
        self._video = self._container.add_stream("libx264", rate=self.fps)
        self._video.width, self._video.height = width - width % 2, height - height % 2  # yuv420p needs even sizes
        self._video.pix_fmt = "yuv420p"
        self._video.options = {"crf": str(self.crf), "preset": self.preset}
        if self._waveform is not None:
            layout = "mono" if self._waveform.shape[0] == 1 else "stereo"
            self._audio = self._container.add_stream("aac", rate=self._rate, layout=layout)

    def write(self, frame: np.ndarray) -> None:
        if self._video is None:
            self._open_streams(*frame.shape[:2])
        frame = np.ascontiguousarray(frame[: self._video.height, : self._video.width])
        video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
        video_frame.pts = self.frames
        for packet in self._video.encode(video_frame):
            self._container.mux(packet)
        self.frames += 1
        self._encode_audio(final=False)

    def write_all(self, frames: Iterable[np.ndarray]) -> None:
        for frame in frames:
            self.write(frame)

    def _encode_audio(self, final: bool) -> None:
        if self._audio is None:
            return
        end = min(int(round(self.frames * self._rate / self.fps)), self._waveform.shape[1])
        frame_size = self._audio.codec_context.frame_size or 1024
        while self._audio_cursor < end and (final or self._audio_cursor + frame_size <= end):
            stop = min(self._audio_cursor + frame_size, end)
            chunk = np.ascontiguousarray(self._waveform[:, self._audio_cursor:stop])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=self._audio.layout.name)
            frame.sample_rate = self._rate
            frame.pts = self._audio_cursor
            frame.time_base = Fraction(1, self._rate)
            for packet in self._audio.encode(frame):
                self._container.mux(packet)
            self._audio_cursor = stop
        if final:
            for packet in self._audio.encode():
                self._container.mux(packet)

    def __exit__(self, exc_type, exc, tb) -> None:
        temporary = _temporary(self.path)
        try:
            if exc_type is None:
                if self._video is None:
                    raise InputError("no frames to write")
                for packet in self._video.encode():
                    self._container.mux(packet)
                self._encode_audio(final=True)
        finally:
            self._container.close()
            if exc_type is not None and os.path.exists(temporary):
                os.remove(temporary)
        if exc_type is None:
            os.replace(temporary, self.path)


def _prepare_audio(waveform, rate: int) -> tuple[np.ndarray, int]:
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim == 1:
        waveform = waveform[None]
    if waveform.shape[0] > 2:  # AAC for ordinary players: at most stereo
        waveform = np.stack([waveform[0::2].mean(0), waveform[1::2].mean(0)])
    return np.clip(waveform, -1.0, 1.0), int(rate)


def write_clip_frames(path: str | os.PathLike, frames: np.ndarray) -> None:
    """Lossless clip file of uint8 frames (N, H, W, 3); atomic."""
    path = os.fspath(path)
    temporary = _temporary(path)
    with av.open(temporary, "w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=FPS)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "bgr0"
        for index, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts = index
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(temporary, path)


def read_video_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """uint8 RGB frames of any video file, in order."""
    with av.open(os.fspath(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def read_clip_frames(path: str | os.PathLike) -> np.ndarray:
    return np.stack(list(read_video_frames(path)))


def probe(path: str | os.PathLike) -> dict:
    """Streams, codecs, frame count, fps and durations of a media file (for tests and checks)."""
    with av.open(os.fspath(path)) as container:
        info = {"streams": [], "duration": container.duration / 1e6 if container.duration else None}
        for stream in container.streams:
            entry = {"type": stream.type, "codec": stream.codec_context.name}
            if stream.type == "video":
                entry.update(fps=float(stream.average_rate or 0), width=stream.width, height=stream.height)
            if stream.type == "audio":
                entry.update(rate=stream.rate, channels=stream.codec_context.layout.nb_channels)
            if stream.duration is not None and stream.time_base is not None:
                entry["duration"] = float(stream.duration * stream.time_base)
            info["streams"].append(entry)
        container.seek(0)
        info["frames"] = sum(1 for _ in container.decode(video=0)) if container.streams.video else 0
    return info
