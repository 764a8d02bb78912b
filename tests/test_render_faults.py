"""Faults and mistakes on the command line: each ends in a correct video or a one-line refusal, never a wrong video.

Outputs that cannot be written are refused before the first model loads; a write that fails midway (a full disk)
keeps every finished clip and leaves no partial file; a damaged clip is rendered again; a second render into the same
render folder is refused; a render folder of an older version is rendered again; bad numbers are refused.
"""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import cut_audio, python_env

from hallo_core.audio import decode_audio, frame_count, speech_16k_mono
from hallo_core.media.video import probe, read_clip_frames


def _generate(args, preexec_fn=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "hallo_core", "generate", *map(str, args)], capture_output=True,
                          text=True, env=python_env(), timeout=timeout, preexec_fn=preexec_fn)


def _cli(args, capsys):
    """`generate` in this process (fast: no interpreter start), as a CompletedProcess-like result."""
    from hallo_core.cli import main

    code = main(["generate", *map(str, args)])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def _one_line_error(result):
    """The one error line (progress lines before it are fine; no traceback, nothing after it)."""
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    last = result.stderr.strip().splitlines()[-1]
    assert errors == [last] and last.startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return last


@pytest.fixture(scope="module")
def short_speech(portraits_dir, tmp_path_factory):
    return cut_audio(portraits_dir / "0003.wav", 2.2, tmp_path_factory.mktemp("speech") / "speech.wav")  # 2 clips


@pytest.fixture(scope="module")
def frames(short_speech):
    """Frames the official rule gives the speech (ceil(16 kHz samples / 16000 * 25), float quirks included)."""
    return frame_count(len(speech_16k_mono(decode_audio(str(short_speech)))))


@pytest.fixture
def common(tiny_models, portraits_dir, short_speech):
    return ["--image", portraits_dir / "0003.jpg", "--audio", short_speech, "--models", tiny_models, "--steps", 1,
            "--device", "cpu", "--no-vocal-separation"]


@pytest.mark.parametrize("out, message", [
    ("{tmp}", "is a folder; give a file name"),
    ("{tmp}/missing/talking.mp4", "does not exist; create it first"),
    ("/sys/talking.mp4", "cannot write into /sys"),
    ("{tmp}/talking.mov", "must end in .mp4"),
])
def test_unwritable_outputs_are_refused_before_any_model_loads(common, tmp_path, capsys, out, message):
    started = time.monotonic()
    result = _cli([*common, "--out", out.format(tmp=tmp_path)], capsys)
    line = _one_line_error(result)
    assert message in line, line
    assert time.monotonic() - started < 30  # no model was loaded, nothing was rendered
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".render"]


def test_unwritable_render_folder_is_refused_before_any_model_loads(common, tmp_path, capsys):
    line = _one_line_error(_cli([*common, "--out", tmp_path / "x.mp4", "--render-dir", "/sys/hallo_render"], capsys))
    assert "cannot create the render folder /sys/hallo_render" in line
    (tmp_path / "afile").write_text("")
    line = _one_line_error(_cli([*common, "--out", tmp_path / "x.mp4", "--render-dir", tmp_path / "afile"], capsys))
    assert "is a file" in line


@pytest.mark.parametrize("option, message", [
    (["--cfg", "nan"], "cfg must be a finite number"),
    (["--cfg", "inf"], "cfg must be a finite number"),
    (["--steps", "0"], "steps must be between 1 and 1000"),
    (["--seed", "-3"], "seed must be between"),
    (["--motion-dropout", "1.5"], "motion pixel dropout must be a finite number in [0, 1)"),
    (["--motion-noise", "nan"], "motion noise must be a finite number"),
    (["--step-cache", "nan"], "step cache threshold must be a finite number"),
    (["--text-cfg=-inf"], "text cfg must be a finite number"),
    (["--steps", "many"], "argument --steps: invalid int value"),
    (["--pose-weight", "1.2"], "--pose-weight is not an option of hallo3"),
    (["--device", "cuda"], "no CUDA GPU"),
])
def test_bad_numbers_and_options_are_refused_in_one_line(common, tmp_path, capsys, option, message):
    try:
        result = _cli([*common, "--out", tmp_path / "x.mp4", *option], capsys)
    except SystemExit as exit_:  # argparse's own refusals exit
        captured = capsys.readouterr()
        result = subprocess.CompletedProcess(option, exit_.code, captured.out, captured.err)
    line = _one_line_error(result)
    assert message in line, line
    assert not (tmp_path / "x.render").exists()


def _limit_file_size(limit: int):
    """A child process whose files cannot grow past `limit` bytes: writes fail with EFBIG, as on a full disk."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_write_that_fails_midway_keeps_the_clips_and_leaves_no_partial_file(common, tmp_path, frames):
    render_dir = tmp_path / "talking.render"
    out = tmp_path / "talking.mp4"
    # Clip files fail to write: nothing is finished, nothing partial is left.
    line = _one_line_error(_generate([*common, "--out", out], preexec_fn=_limit_file_size(4096)))
    assert "cannot write" in line and "free some disk space" in line, line
    assert not list(render_dir.glob("*partial*")) and not list(tmp_path.glob("*partial*"))
    # Every clip rendered and kept, but the MP4 fails: no MP4, no partial file, the clips stay.
    first = _generate([*common, "--out", out, "--keep-render"])
    assert first.returncode == 0, first.stderr
    os.remove(out)
    line = _one_line_error(_generate([*common, "--out", out], preexec_fn=_limit_file_size(20_000)))
    assert "cannot write" in line and str(out) in line, line
    assert not out.exists() and not list(tmp_path.glob("*partial*"))
    assert sorted(p.name for p in render_dir.glob("clip_*.mkv")) == ["clip_00000.mkv", "clip_00001.mkv"]
    # The same command again finishes from the kept clips.
    done = _generate([*common, "--out", out])
    assert done.returncode == 0, done.stderr
    assert "2 resumed" in done.stdout
    assert probe(out)["frames"] == frames and not render_dir.exists()


def test_a_real_full_disk_keeps_the_clips(common, tmp_path):
    """The same on a real 256 kB filesystem (needs root to mount one; the file-size limit test above needs none)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        (disk / "filler").write_bytes(b"\0" * 200_000)
        render_dir = tmp_path / "render"
        line = _one_line_error(_generate([*common, "--out", disk / "talking.mp4", "--render-dir", render_dir]))
        assert "No space left on device" in line and "free some disk space" in line, line
        assert [p.name for p in disk.iterdir()] == ["filler"]
        assert len(list(render_dir.glob("clip_*.mkv"))) == 2
    finally:
        subprocess.run(["umount", str(disk)])


def test_a_damaged_clip_is_rendered_again(common, tmp_path, frames):
    out = tmp_path / "talking.mp4"
    assert _generate([*common, "--out", out, "--keep-render"]).returncode == 0
    render_dir = tmp_path / "talking.render"
    original = read_clip_frames(render_dir / "clip_00001.mkv")
    untouched = (render_dir / "clip_00000.mkv").stat().st_mtime_ns
    with open(render_dir / "clip_00001.mkv", "r+b") as f:  # a clip damaged on disk, and one truncated
        f.truncate(f.seek(0, 2) // 2)
    result = _generate([*common, "--out", out, "--keep-render"])
    assert result.returncode == 0, result.stderr
    assert "clip 1" in result.stderr and "damaged; it is rendered again" in result.stderr
    assert "1 resumed" in result.stdout and probe(out)["frames"] == frames
    assert np.array_equal(read_clip_frames(render_dir / "clip_00001.mkv"), original)
    assert (render_dir / "clip_00000.mkv").stat().st_mtime_ns == untouched


def test_a_second_render_into_the_same_folder_is_refused(common, tmp_path, frames):
    render_dir = tmp_path / "shared.render"
    first = subprocess.Popen([sys.executable, "-m", "hallo_core", "generate", *map(str, common), "--steps", "3",
                              "--out", str(tmp_path / "a.mp4"), "--render-dir", str(render_dir)],
                             env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (render_dir / "manifest.json").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGSTOP)  # paused, holding the folder: the second cannot race past its end
    try:
        second = _generate([*common, "--out", tmp_path / "b.mp4", "--render-dir", render_dir])
    finally:
        os.kill(first.pid, signal.SIGCONT)
    line = _one_line_error(second)
    assert "another render is writing into" in line
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert probe(tmp_path / "a.mp4")["frames"] == frames and not (tmp_path / "b.mp4").exists()


def test_a_render_folder_of_an_older_version_is_rendered_again(common, tmp_path, frames):
    render_dir = tmp_path / "talking.render"
    render_dir.mkdir()
    (render_dir / "manifest.json").write_text(json.dumps({"key": "0" * 64, "clips": 2}))  # no format: older
    (render_dir / "clip_00000.mkv").write_bytes(b"old")
    (render_dir / "motion_00000.safetensors").write_bytes(b"old")
    result = _generate([*common, "--out", tmp_path / "talking.mp4", "--keep-render"])
    assert result.returncode == 0, result.stderr
    assert "another version of the pack" in result.stderr and "resumed" not in result.stdout
    assert probe(tmp_path / "talking.mp4")["frames"] == frames
    assert not (render_dir / "motion_00000.safetensors").exists()
    shutil.rmtree(render_dir)
