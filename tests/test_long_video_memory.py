"""A ten-minute video through the file-backed path the long workflows use (JoinVideos, then the upscaler's VIDEO in and
out) at a tiny frame size: memory stays bounded (it does not grow with the video's length) and the output has every
frame and the whole sound."""

import numpy as np

from hallo_core.dev.host_memory import HostMemoryPeak
from hallo_core.media.video import Mp4Writer, join_videos, probe, read_video_frames
from hallo_core.upscaler.background import BackgroundUpscaler
from hallo_core.upscaler.video import UpscaleSettings, VideoFaceUpscaler

FPS, RATE, SIDE = 25, 16000, 16


def _video(path, seconds: float, seed: int):
    frames = int(seconds * FPS)
    rng = np.random.default_rng(seed)
    tones = np.sin(np.arange(int(seconds * RATE)) * 2 * np.pi * 220 / RATE).astype(np.float32)[None] * 0.3
    base = rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)
    with Mp4Writer(path, fps=FPS, audio=(tones, RATE), preset="ultrafast") as writer:
        for index in range(frames):
            writer.write(np.roll(base, index % SIDE, axis=1))
    return frames


def _join_and_upscale(tmp_path, seconds: float) -> tuple[int, int]:
    """(frames, peak host memory growth in bytes) of joining two halves of `seconds` and upscaling the result x2."""
    halves = [tmp_path / f"half_{seconds}_{i}.mp4" for i in range(2)]
    total = sum(_video(path, seconds / 2, i) for i, path in enumerate(halves))
    joined, upscaled = tmp_path / f"joined_{seconds}.mp4", tmp_path / f"upscaled_{seconds}.mp4"
    upscaler = VideoFaceUpscaler(lambda crops: crops, None, BackgroundUpscaler.lanczos(),
                                 settings=UpscaleSettings(scale=2))
    with HostMemoryPeak(interval_s=0.01) as peak:
        assert join_videos(halves, joined) == total
        with Mp4Writer(upscaled, fps=FPS, audio_from=joined, preset="ultrafast") as writer:
            writer.write_all(upscaler.stream(read_video_frames(joined)))
    assert writer.frames == total
    info = probe(upscaled)
    audio = next(s for s in info["streams"] if s["type"] == "audio")
    assert info["frames"] == total and abs(audio["duration"] - total / FPS) < 0.1
    video = next(s for s in info["streams"] if s["type"] == "video")
    assert (video["width"], video["height"]) == (2 * SIDE, 2 * SIDE)
    return total, peak.growth


def test_ten_minutes_take_no_more_memory_than_one(tmp_path):
    frames_short, short = _join_and_upscale(tmp_path, 60.0)
    frames_long, long = _join_and_upscale(tmp_path, 600.0)
    assert frames_long == 10 * frames_short == 15000
    # Frames stream through; only the sound (16 kHz mono: 38 MB for ten minutes as float32) is held while joining.
    print(f"peak host memory growth: 1 min {short / 2**20:.0f} MB, 10 min {long / 2**20:.0f} MB")
    assert long < short + 80 * 2**20
