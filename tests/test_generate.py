"""`make-tiny-models` + `generate`: the whole real path on tiny random models."""

import json
import math
import random
import signal
import subprocess
import sys
import time

import numpy as np
from conftest import cut_audio, python_env

from hallo_core.audio.decode import decode_audio
from hallo_core.media.video import probe, read_clip_frames, read_video_frames


def _generate(args, **kwargs):
    return subprocess.run([sys.executable, "-m", "hallo_core", "generate", *map(str, args)], capture_output=True,
                          text=True, env=python_env(), **kwargs)


def test_make_tiny_models_command_writes_the_official_layout(tmp_path):
    result = subprocess.run([sys.executable, "-m", "hallo_core", "make-tiny-models", str(tmp_path / "pm")],
                            capture_output=True, text=True, env=python_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    for relative in ("hallo3/latest", "hallo3/1/mp_rank_00_model_states.pt", "cogvideox-5b-i2v-sat/vae/3d-vae.pt",
                     "t5-v1_1-xxl/config.json", "wav2vec/wav2vec2-base-960h/config.json",
                     "face_analysis/models/scrfd_10g_bnkps.onnx", "face_analysis/models/glintr100.onnx",
                     "audio_separator/Kim_Vocal_2.onnx"):
        assert (tmp_path / "pm" / relative).is_file(), relative


def test_generate_writes_an_mp4_as_long_as_the_speech(tiny_models, portraits_dir, tmp_path):
    out = tmp_path / "talking.mp4"
    started = time.monotonic()
    result = _generate(["--image", portraits_dir / "0001.jpg", "--audio", portraits_dir / "0001.wav",
                        "--prompt", "A little girl talking around a campfire", "--models", tiny_models,
                        "--out", out, "--steps", 2, "--device", "cpu"], timeout=900)
    assert result.returncode == 0, result.stderr
    elapsed = time.monotonic() - started
    seconds = decode_audio(str(portraits_dir / "0001.wav")).seconds
    info = probe(out)
    video = [s for s in info["streams"] if s["type"] == "video"]
    audio = [s for s in info["streams"] if s["type"] == "audio"]
    assert len(video) == 1 and video[0]["codec"] == "h264" and video[0]["fps"] == 25.0
    assert len(audio) == 1 and audio[0]["codec"] == "aac"
    assert info["frames"] == math.ceil(seconds * 25) == 245
    assert abs(audio[0]["duration"] - info["frames"] / 25) <= 1 / 25
    # The portrait is square: the official output crops the padded frames back to a square.
    assert (video[0]["width"], video[0]["height"]) == (64, 64)
    assert not (tmp_path / "talking.render").exists(), "the render directory is removed after success"
    assert not list(tmp_path.glob("*.partial*"))
    print(f"tiny 9.8 s render, 2 steps: {elapsed:.1f} s")


def test_sigkill_at_a_random_moment_then_a_rerun_equals_an_uninterrupted_render(tiny_models, portraits_dir, tmp_path):
    """Killed at a random moment of a 3-clip render, the re-run reuses every finished clip untouched, renders the
    rest, and its clip files equal an uninterrupted render's (the moment is printed, to reproduce a failure)."""
    audio = cut_audio(portraits_dir / "0003.wav", 5.2, tmp_path / "speech.wav")  # 130 frames: 3 clips
    common = ["--image", portraits_dir / "0003.jpg", "--audio", audio, "--models", tiny_models, "--steps", 2,
              "--seed", 7, "--device", "cpu", "--keep-render", "--no-vocal-separation"]

    started = time.monotonic()
    reference = _generate([*common, "--out", tmp_path / "reference.mp4"], timeout=900)
    assert reference.returncode == 0, reference.stderr
    duration = time.monotonic() - started

    rng = random.Random()
    kill_after = rng.uniform(0.3, 1.0) * duration
    render_dir = tmp_path / "resumed.render"
    process = subprocess.Popen([sys.executable, "-m", "hallo_core", "generate", *map(str, common), "--out",
                                str(tmp_path / "resumed.mp4")], env=python_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        process.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
    print(f"killed after {kill_after:.1f} s of a {duration:.1f} s render (return code {process.returncode})")
    finished = {}
    if (render_dir / "manifest.json").exists():
        records = json.loads((render_dir / "manifest.json").read_text())["clips"]
        finished = {f"clip_{int(i):05d}.mkv": (render_dir / f"clip_{int(i):05d}.mkv").stat().st_mtime_ns
                    for i in records if (render_dir / f"clip_{int(i):05d}.mkv").exists()}

    resumed = _generate([*common, "--out", tmp_path / "resumed.mp4"], timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    if finished and process.returncode != 0:
        assert f"{len(finished)} resumed" in resumed.stdout
    for name, mtime in finished.items():  # finished clips were not rendered again
        assert (render_dir / name).stat().st_mtime_ns == mtime
    for clip in range(3):
        name = f"clip_{clip:05d}.mkv"
        assert np.array_equal(read_clip_frames(render_dir / name),
                              read_clip_frames(tmp_path / "reference.render" / name)), name
    assert not list(render_dir.glob("*partial*"))
    # The MP4s hold the same frames. (x264 on this build does not encode identical frames bit-identically from
    # one process to the next, so the encoded files are compared as videos, the rendered frames above exactly.)
    resumed_video = np.stack(list(read_video_frames(tmp_path / "resumed.mp4"))).astype(np.float32)
    reference_video = np.stack(list(read_video_frames(tmp_path / "reference.mp4"))).astype(np.float32)
    assert resumed_video.shape == reference_video.shape == (130, 64, 64, 3)
    assert np.abs(resumed_video - reference_video).mean() < 2.0


def test_generate_refuses_bad_inputs_in_one_line(tiny_models, portraits_dir, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not audio")
    result = _generate(["--image", portraits_dir / "0001.jpg", "--audio", text, "--models", tiny_models,
                        "--out", tmp_path / "x.mp4", "--steps", 2, "--device", "cpu"], timeout=300)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "x.render").exists()
