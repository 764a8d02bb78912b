"""Video files with PyAV: the one MP4 writer, the one frame reader, the lossless clip files of a render.

* `Mp4Writer` streams uint8 RGB frames into an H.264 (yuv420p) MP4 with sound: either a waveform encoded as AAC and
  trimmed to the video, or the audio stream of another file (copied packet for packet when MP4 can hold its codec,
  otherwise re-encoded to AAC). It writes under a temporary name and renames on success, so a stopped or failed run
  never leaves a half file under the real name. Odd frame sizes lose their last row or column (yuv420p needs even
  sizes).
* Clip files hold a finished clip's uint8 frames losslessly (FFV1 in Matroska, ~2-4x smaller than raw), written
  atomically, so a resumed render reproduces the uninterrupted one exactly.
* `read_video_frames` decodes any video file's first video stream; `probe` describes a file (tests and checks).

Every failure to write (a missing or read-only folder, a full disk) is a one-line `OutputError` naming the path and
the fix; the partial file is removed.
"""

from __future__ import annotations

import errno
import os
from fractions import Fraction
from typing import Callable, Iterable, Iterator

import av
import numpy as np

from ..errors import InputError, OutputError

OUTPUT_SUFFIXES = (".mp4",)
# Audio codecs the MP4 muxer takes as they are.
MP4_AUDIO_CODECS = {"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"}


def partial_path(path: str) -> str:
    """The temporary name a file is written under before its atomic rename: `name.partial.ext`."""
    root, ext = os.path.splitext(path)
    return f"{root}.partial{ext}"


def write_failure(path: str, error: OSError) -> OutputError:
    """A write error as the one line a user can act on."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = "free some disk space (or write to another disk) and run the same command again"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "choose a folder you can write to"
    else:
        fix = "check the output location"
    return OutputError(f"cannot write {path}: {error.strerror or error}; {fix}")


def check_output_path(path: str | os.PathLike, what: str = "output", suffixes: tuple[str, ...] = OUTPUT_SUFFIXES,
                      ) -> str:
    """Refuse, before any work, an output path that cannot be written: a folder, a missing or read-only folder, or
    a name that does not end in one of `suffixes`. Returns the absolute path."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise OutputError(f"{what} {path} is a folder; give a file name such as {os.path.join(path, 'talking.mp4')}")
    if suffixes and not path.lower().endswith(suffixes):
        raise OutputError(f"{what} {path} must end in {' or '.join(suffixes)}")
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise OutputError(f"the folder of {what} {path} does not exist; create it first")
    if not folder_writable(folder):
        raise OutputError(f"cannot write into {folder} ({what} {os.path.basename(path)}); choose a folder you can "
                          "write to")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise OutputError(f"{what} {path} exists and cannot be overwritten; choose another name")
    return path


def folder_writable(folder: str) -> bool:
    """Whether a file can be created in `folder` (tried, not guessed from permission bits)."""
    probe_path = os.path.join(folder, f".hallo_write_test_{os.getpid()}")
    try:
        with open(probe_path, "wb"):
            pass
        os.remove(probe_path)
        return True
    except OSError:
        return False


def _open(path, mode="r", **kwargs):
    try:
        return av.open(os.fspath(path), mode, **kwargs)
    except (av.error.FileNotFoundError, FileNotFoundError):
        if mode == "r":
            raise InputError(f"video not found: {path}") from None
        raise OutputError(f"the folder of {path} does not exist; create it first") from None
    except av.error.FFmpegError as exc:
        if mode == "r":
            raise InputError(f"{path}: cannot open the video ({exc})") from None
        raise write_failure(os.fspath(path), OSError(exc.errno, exc.strerror)) from None


class _AudioFromFile:
    """Another file's audio into the output: packets copied (MP4-compatible codecs) or decoded and re-encoded to AAC,
    muxed as they come due so they interleave with the video."""

    def __init__(self, source_path: str, output) -> None:
        self.container = _open(source_path)
        self.output = output
        self.stream_out = None
        self.pending: Iterator = iter(())
        self._next = None
        streams = self.container.streams.audio
        if not streams:
            return
        stream_in = streams[0]
        self.copy = stream_in.codec_context.name in MP4_AUDIO_CODECS
        if self.copy:
            self.stream_out = output.add_stream_from_template(stream_in)
            self.pending = (p for p in self.container.demux(stream_in) if p.dts is not None)
        else:
            self.stream_out = output.add_stream("aac", rate=stream_in.rate)
            self.stream_out.layout = stream_in.layout.name if stream_in.layout else "stereo"
            self.resampler = av.AudioResampler(format="fltp", layout=self.stream_out.layout, rate=stream_in.rate)
            self.pending = self.container.decode(stream_in)

    def mux_until(self, seconds: float | None) -> None:
        """Write every audio packet that starts before `seconds` (None: all the rest)."""
        if self.stream_out is None:
            return
        while True:
            if self._next is None:
                self._next = next(self.pending, None)
                if self._next is None:
                    break
            item = self._next
            start = float(item.pts * item.time_base) if item.pts is not None else 0.0
            if seconds is not None and start >= seconds:
                return
            self._next = None
            if self.copy:
                item.stream = self.stream_out
                self.output.mux(item)
            else:
                for resampled in self.resampler.resample(item):
                    self.output.mux(self.stream_out.encode(resampled))
        if not self.copy:
            self.output.mux(self.stream_out.encode(None))
        self.stream_out = None

    def close(self) -> None:
        self.container.close()


class _AudioEncoder:
    """Audio chunks (channels, n) float32 in [-1, 1], in order, encoded as AAC in codec frames as the video advances:
    only a frame or a chunk of sound is held at a time."""

    def __init__(self, output, rate: int, channels: int, chunks: Iterator[np.ndarray]) -> None:
        self.output, self.rate, self.chunks = output, int(rate), chunks
        self.stream = output.add_stream("aac", rate=self.rate, layout="mono" if channels == 1 else "stereo")
        self.buffer = np.zeros((channels, 0), np.float32)
        self.cursor = 0  # samples encoded
        self.exhausted = False

    def _fill(self, samples: int) -> None:
        while self.buffer.shape[1] < samples and not self.exhausted:
            chunk = next(self.chunks, None)
            if chunk is None:
                self.exhausted = True
            else:
                self.buffer = np.concatenate([self.buffer, np.clip(chunk, -1.0, 1.0)], axis=1)

    def mux_until(self, seconds: float | None, final: bool = False) -> None:
        """Encode whole codec frames up to `seconds` (None: all); with `final` also the last part frame, then flush."""
        end = None if seconds is None else int(round(seconds * self.rate))
        size = self.stream.codec_context.frame_size or 1024
        while True:
            limit = size if end is None else min(size, end - self.cursor)
            if limit <= 0:
                break
            self._fill(limit)
            take = min(limit, self.buffer.shape[1])
            if take == 0 or (take < size and not final):
                break  # wait for the video to advance (or the sound has ended)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(self.buffer[:, :take]), format="fltp",
                                               layout=self.stream.layout.name)
            frame.sample_rate, frame.pts, frame.time_base = self.rate, self.cursor, Fraction(1, self.rate)
            for packet in self.stream.encode(frame):
                self.output.mux(packet)
            self.buffer, self.cursor = self.buffer[:, take:], self.cursor + take
        if final:
            for packet in self.stream.encode():
                self.output.mux(packet)

    def close(self) -> None:
        pass


def _as_channels(waveform) -> np.ndarray:
    """(samples,) or (channels, samples) -> float32 (1 or 2, samples): AAC for ordinary players is at most stereo."""
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim == 1:
        waveform = waveform[None]
    if waveform.shape[0] > 2:
        waveform = np.stack([waveform[0::2].mean(0), waveform[1::2].mean(0)])
    return waveform


def _track_chunks(tracks: list[tuple[str, float]], rate: int, channels: int) -> Iterator[np.ndarray]:
    """The sound of each (file, seconds) in turn, decoded and resampled, each cut or padded with silence to exactly
    its seconds."""
    layout = "mono" if channels == 1 else "stereo"
    for path, seconds in tracks:
        wanted, given = int(round(seconds * rate)), 0
        with _open(path) as container:
            if container.streams.audio:
                resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
                stream = container.streams.audio[0]
                for frame in [*container.decode(stream), None]:
                    for piece in resampler.resample(frame):
                        chunk = piece.to_ndarray()[:, :max(wanted - given, 0)]
                        given += chunk.shape[1]
                        if chunk.shape[1]:
                            yield chunk
        if given < wanted:
            yield np.zeros((channels, wanted - given), np.float32)


class Mp4Writer:
    """`with Mp4Writer(path, audio=(waveform, rate)) as w: w.write_all(frames)`; frames are uint8 (H, W, 3) RGB.

    `audio` is a waveform (channels, samples) in [-1, 1] that ends where the video ends; `audio_from` instead takes
    the audio of another media file (the upscaler keeps its input's sound); `audio_tracks` the sound of several files
    one after the other, (file, seconds) each (joined segments). Progress: `frames` counts frames written.
    """

    def __init__(self, path: str | os.PathLike, fps: float | Fraction = 25, audio: tuple[np.ndarray, int] | None = None,
                 audio_from: str | os.PathLike | None = None, crf: int = 18, preset: str = "medium",
                 audio_tracks: list[tuple[str, float]] | None = None):
        if sum(x is not None for x in (audio, audio_from, audio_tracks)) > 1:
            raise ValueError("give one of audio, audio_from, audio_tracks")
        self.path = os.fspath(path)
        self.fps = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
        self.crf, self.preset = crf, preset
        self.frames = 0
        self._audio_input = audio
        self._audio_from = os.fspath(audio_from) if audio_from is not None else None
        self._audio_tracks = [(os.fspath(p), s) for p, s in audio_tracks] if audio_tracks else None
        self._container = None
        self._video = None
        self._audio = None

    def __enter__(self) -> "Mp4Writer":
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise OutputError(f"the folder of {self.path} does not exist; create it first")
        self._container = _open(partial_path(self.path), "w", format="mp4", options={"movflags": "+faststart"})
        return self

    def _open_streams(self, height: int, width: int) -> None:
        if height < 2 or width < 2:
            raise InputError(f"frames of {width}x{height} pixels cannot be encoded as H.264")
        self._video = self._container.add_stream("libx264", rate=self.fps)
        self._video.width, self._video.height = width - width % 2, height - height % 2
        self._video.pix_fmt = "yuv420p"
        self._video.options = {"crf": str(self.crf), "preset": self.preset}
        # Audio after the video, so the video is stream 0.
        if self._audio_input is not None:
            waveform, rate = _as_channels(self._audio_input[0]), self._audio_input[1]
            self._audio = _AudioEncoder(self._container, rate, waveform.shape[0], iter([waveform]))
        elif self._audio_from is not None:
            self._audio = _AudioFromFile(self._audio_from, self._container)
        elif self._audio_tracks is not None:
            first = _audio_format(self._audio_tracks[0][0])
            if first is not None:
                rate, channels = first
                self._audio = _AudioEncoder(self._container, rate, channels,
                                            _track_chunks(self._audio_tracks, rate, channels))

    def write(self, frame) -> None:
        array = frame.numpy() if hasattr(frame, "numpy") else np.asarray(frame)
        if self._video is None:
            self._open_streams(*array.shape[:2])
        array = np.ascontiguousarray(array[: self._video.height, : self._video.width])
        picture = av.VideoFrame.from_ndarray(array, format="rgb24")
        picture.pts = self.frames
        try:
            if self._audio is not None:
                self._audio.mux_until(float(self.frames / self.fps))
            for packet in self._video.encode(picture):
                self._container.mux(packet)
        except OSError as error:
            raise write_failure(self.path, error) from None
        self.frames += 1

    def write_all(self, frames: Iterable) -> None:
        for frame in frames:
            self.write(frame)

    def _finish(self) -> None:
        if self._video is None:
            raise InputError("no frames to write")
        for packet in self._video.encode():
            self._container.mux(packet)
        if isinstance(self._audio, _AudioEncoder):
            self._audio.mux_until(float(self.frames / self.fps), final=True)
        elif self._audio is not None:
            self._audio.mux_until(None)

    def __exit__(self, exc_type, exc, tb) -> None:
        temporary = partial_path(self.path)
        failure = None
        try:
            if exc_type is None:
                self._finish()
        except OSError as error:
            failure = write_failure(self.path, error)
        finally:
            try:
                self._container.close()
            except OSError as error:
                failure = failure or write_failure(self.path, error)
            if self._audio is not None:
                self._audio.close()
        if exc_type is not None or failure is not None:
            if os.path.exists(temporary):
                os.remove(temporary)
            if failure is not None:
                raise failure
            return
        try:
            os.replace(temporary, self.path)
        except OSError as error:
            os.remove(temporary)
            raise write_failure(self.path, error) from None


def write_clip_frames(path: str | os.PathLike, frames: np.ndarray, fps: int = 25) -> None:
    """Lossless clip file of uint8 frames (N, H, W, 3); atomic."""
    path = os.fspath(path)
    temporary = partial_path(path)
    try:
        with av.open(temporary, "w", format="matroska") as container:
            stream = container.add_stream("ffv1", rate=fps)
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
    except OSError as error:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise write_failure(path, error) from None


def read_video_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """(H, W, 3) uint8 RGB frames of the first video stream, in order."""
    with _open(path) as container:
        if not container.streams.video:
            raise InputError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as exc:
            raise InputError(f"{path}: the video cannot be decoded past frame {stream.frames} ({exc})") from None


def read_clip_frames(path: str | os.PathLike) -> np.ndarray:
    return np.stack(list(read_video_frames(path)))


def video_frame_count(path: str | os.PathLike) -> int:
    """Frames of the first video stream: the container's count when it keeps one (MP4), else counted by decoding."""
    with _open(path) as container:
        if not container.streams.video:
            raise InputError(f"{path} has no video stream")
        counted = container.streams.video[0].frames
    return counted if counted > 0 else sum(1 for _ in read_video_frames(path))


def video_frame_rate(path: str | os.PathLike) -> Fraction:
    with _open(path) as container:
        if not container.streams.video:
            raise InputError(f"{path} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise InputError(f"{path}: cannot tell the frame rate of the video stream")
        return Fraction(rate)


def _audio_format(path: str) -> tuple[int, int] | None:
    """(rate, channels at most 2) of a file's first audio stream, None without sound."""
    with _open(path) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        return stream.rate, min(stream.codec_context.layout.nb_channels, 2)


def join_videos(paths: list[str | os.PathLike], out: str | os.PathLike, crf: int = 18,
                progress: Callable[[int], None] | None = None) -> int:
    """Videos of one size and frame rate, one after the other, into one MP4 with their sound joined in the same
    order (each video's sound cut or padded to its frames); frames and sound stream through. Returns the frame
    count."""
    paths = [os.fspath(p) for p in paths]
    fps = video_frame_rate(paths[0])
    sizes, tracks = set(), []
    for path in paths:
        with _open(path) as container:
            if not container.streams.video:
                raise InputError(f"{path} has no video stream")
            stream = container.streams.video[0]
            sizes.add((stream.width, stream.height))
        if video_frame_rate(path) != fps:
            raise InputError(f"{path} runs at {float(video_frame_rate(path)):g} fps, {paths[0]} at {float(fps):g}; "
                             "join videos of one frame rate")
        tracks.append((path, float(video_frame_count(path) / fps)))
    if len(sizes) > 1:
        raise InputError(f"the videos have different sizes ({', '.join(f'{w}x{h}' for w, h in sorted(sizes))}); join "
                         "segments of one render")
    with Mp4Writer(out, fps=fps, audio_tracks=tracks, crf=crf) as writer:
        for path in paths:
            for frame in read_video_frames(path):
                writer.write(frame)
                if progress is not None:
                    progress(writer.frames)
    return writer.frames


def probe(path: str | os.PathLike) -> dict:
    """Streams, codecs, frame count, fps and durations of a media file (for tests and checks)."""
    with _open(path) as container:
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
