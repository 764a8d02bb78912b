"""Upscaling a video file: PyAV decoding, the streaming upscaler, H.264 encoding with the source audio.

Frames are decoded, upscaled and encoded one at a time, so memory stays bounded by the upscaler's window whatever the
video length. The audio stream is copied packet for packet when MP4 can hold its codec (the official script copies it
too), otherwise re-encoded to AAC; audio packets are interleaved with the video as they come due. The video keeps the
source frame rate; every input frame gives one output frame (the official script drops the last one).
"""

from __future__ import annotations

import os
from fractions import Fraction
from typing import Callable, Iterator

import av
import numpy as np
import torch

from ..errors import InputError
from .background import BackgroundUpscaler, load_background_model
from .face_alignment import ScrfdFaceDetector
from .face_parsing import load_parsenet
from .video import UpscaleSettings, VideoFaceUpscaler
from .weights import load_temporal_codeformer

# Audio codecs the MP4 muxer takes as they are.
MP4_AUDIO_CODECS = {"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"}


def read_video_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """(H, W, 3) uint8 RGB frames of the first video stream."""
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="rgb24")


def video_frame_rate(path: str | os.PathLike) -> Fraction:
    with _open(path) as container:
        if not container.streams.video:
            raise InputError(f"{path} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise InputError(f"{path}: cannot tell the frame rate of the video stream")
        return Fraction(rate)


def _open(path, mode="r"):
    try:
        return av.open(os.fspath(path), mode)
    except (av.error.FileNotFoundError, FileNotFoundError):
        raise InputError(f"video not found: {path}") from None
    except av.error.FFmpegError as exc:
        raise InputError(f"{path}: cannot open the video ({exc})") from None


class _AudioPassThrough:
    """Source audio into the output: packets copied (MP4-compatible codecs) or decoded and re-encoded to AAC."""

    def __init__(self, source_path, output: av.container.OutputContainer):
        self.container = _open(source_path)
        self.output = output
        self.stream_in = self.container.streams.audio[0] if self.container.streams.audio else None
        self.stream_out = None
        self.pending: Iterator = iter(())
        if self.stream_in is None:
            return
        if self.stream_in.codec_context.name in MP4_AUDIO_CODECS:
            self.copy = True
            self.stream_out = output.add_stream_from_template(self.stream_in)
            self.pending = (p for p in self.container.demux(self.stream_in) if p.dts is not None)
        else:
            self.copy = False
            self.stream_out = output.add_stream("aac", rate=self.stream_in.rate)
            self.stream_out.layout = self.stream_in.layout.name if self.stream_in.layout else "stereo"
            self.resampler = av.AudioResampler(format="fltp", layout=self.stream_out.layout, rate=self.stream_in.rate)
            self.pending = self.container.decode(self.stream_in)
        self._next = None

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

    def close(self):
        self.container.close()


def write_video(frames: Iterator[torch.Tensor | np.ndarray], out_path: str | os.PathLike, fps: Fraction,
                audio_from: str | os.PathLike | None = None, crf: int = 18,
                progress: Callable[[int], None] | None = None) -> int:
    """Encode (H, W, 3) uint8 RGB frames as H.264 yuv420p MP4 at `fps`, with the audio of `audio_from`; returns the
    frame count."""
    count = 0
    with _open(out_path, "w") as output:
        audio = None
        video = None
        try:
            for frame in frames:
                array = frame.numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)
                if video is None:
                    height, width = array.shape[:2]
                    if height % 2 or width % 2:
                        raise InputError(f"output size {width}x{height} is odd; H.264 (yuv420p) needs even sizes")
                    video = output.add_stream("libx264", rate=fps)
                    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
                    video.options = {"crf": str(crf)}
                    if audio_from is not None:  # after the video, so the video is stream 0
                        audio = _AudioPassThrough(audio_from, output)
                picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
                picture.pts = count
                if audio is not None:
                    audio.mux_until(float(count / fps))
                output.mux(video.encode(picture))
                count += 1
                if progress is not None:
                    progress(count)
            if video is not None:
                output.mux(video.encode(None))
            if audio is not None:
                audio.mux_until(None)
        finally:
            if audio is not None:
                audio.close()
    if count == 0:
        os.remove(out_path)
        raise InputError(f"{audio_from or 'the input'} has no video frames")
    return count


def upscale_video_file(in_path: str | os.PathLike, out_path: str | os.PathLike, *, upscaler_weights: str,
                       detector_model: str | None, parsing_model: str | None = None,
                       background_model: str | None = None, scale: float | None = 4.0,
                       target_long_side: int | None = None, fidelity_weight: float = 0.5, face_upsample: bool = False,
                       device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, crf: int = 18,
                       frame_chunk: int | None = None, progress: Callable[[int], None] | None = None) -> dict:
    """Upscale a video file to an MP4 with its audio (the CLI's entry point).

    `background_model` None upsamples the background with Lanczos only; `parsing_model` None pastes with the soft
    square mask only; `detector_model` None restores no faces (background upsampling only); `face_upsample` runs the
    background model on each restored face too (official --face_upsample; needs `background_model`). `dtype` is the network's
    (official: float32); `frame_chunk` bounds the frames its convolutions see at once (memory). Returns a summary:
    frames, fps, out, faces_detected, faces_reused.
    """
    in_path = os.fspath(in_path)
    fps = video_frame_rate(in_path)
    network = load_temporal_codeformer(upscaler_weights, device=device, dtype=dtype)
    detector = ScrfdFaceDetector(detector_model) if detector_model else None
    parsenet = load_parsenet(parsing_model, device=device) if parsing_model else None
    background = load_background_model(background_model, device=device) if background_model else \
        BackgroundUpscaler.lanczos()
    settings = UpscaleSettings(scale=scale, target_long_side=target_long_side, fidelity_weight=fidelity_weight,
                               face_upsample=face_upsample, network_dtype=dtype, network_frame_chunk=frame_chunk)
    upscaler = VideoFaceUpscaler(network, detector, background, parsenet, settings, device)
    frames = write_video(upscaler.stream(read_video_frames(in_path)), out_path, fps, audio_from=in_path, crf=crf,
                         progress=progress)
    track = upscaler.track
    return {"frames": frames, "fps": float(fps), "out": os.fspath(out_path),
            "faces_detected": track.detected_frames if track else 0,
            "faces_reused": track.reused_frames if track else 0}
