"""`python -m hallo_core batch`: many jobs on a local Ray (CPU workers, tiny models, 1-2 steps, ~2-5 s of speech).

A batch with a bad job and bad lines makes every good video with the official frame count, reports the bad job and
each bad line in one line and writes the results file; a re-run skips the jobs done before; `--strict` refuses the
batch; a worker killed after its first clip is run again by Ray and the retry renders no finished clip again; without
Ray the command says in one line how to install it; neither `generate` nor the parser imports Ray. One local Ray is
started for the module (workers stay warm between tests).
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
from conftest import cut_audio, python_env

from hallo_core.audio import decode_audio, frame_count, speech_16k_mono
from hallo_core.errors import HalloError
from hallo_core.media.video import probe
from hallo_core.runtime.options import MEMORY_PRESETS


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from hallo_core.batch.ray_runner import connect

    assert connect(num_cpus=2), "a Ray was already running in the test process"
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def speech(portraits_dir, tmp_path_factory):
    return cut_audio(portraits_dir / "0003.wav", 2.2, tmp_path_factory.mktemp("speech") / "speech.wav")  # 2 clips


def _frames(audio) -> int:
    """Frames the official rule gives the speech (ceil(16 kHz samples / 16000 * 25), float quirks included)."""
    return frame_count(len(speech_16k_mono(decode_audio(str(audio)))))


def _batch(args, capsys):
    from hallo_core.cli import main

    code = main(["batch", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _manifest(path, *lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def _results(out_dir):
    return [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]


def test_a_batch_makes_the_good_videos_and_reports_bad_jobs_and_lines(local_ray, tiny_models, portraits_dir, speech,
                                                                      tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("not audio")
    with pytest.raises(HalloError) as expected:  # the message the bad job must report, as generate gives it
        decode_audio(str(notes))
    common = {"steps": 1, "vocal_separation": False}
    manifest = _manifest(
        tmp_path / "jobs.jsonl",
        {"image": str(portraits_dir / "0003.jpg"), "audio": str(speech), "output": "first.mp4", **common},
        {"image": str(portraits_dir / "0001.jpg"), "audio": str(speech), "seed": 5, **common},
        "",
        {"image": str(portraits_dir / "0003.jpg"), "audio": "notes.txt", **common},  # relative to the manifest
        {"image": "missing.jpg", "audio": str(speech), "stepz": 1},
        {"image": str(portraits_dir / "0001.jpg"), "audio": str(speech), "steps": 0},
        "not json",
    )
    out = tmp_path / "out"
    started = time.monotonic()
    code, stdout, stderr = _batch([manifest, "--out", out, "--models", tiny_models], capsys)
    print(f"batch of 3 jobs + 3 bad lines: {time.monotonic() - started:.1f} s")
    assert code == 1, stderr

    frames = _frames(speech)
    results = _results(out)
    assert [(r["line"], r["status"]) for r in results] == [(1, "done"), (2, "done"), (4, "failed"), (5, "invalid"),
                                                            (6, "invalid"), (7, "invalid")]
    for record, name in zip(results[:2], ("first.mp4", "0001_speech.mp4")):
        assert record["output"] == str(out / name) and record["error"] is None
        assert record["frames"] == frames and record["clips"] == 2 and record["attempts"] == 1
        assert probe(out / name)["frames"] == frames
        assert record["seconds"] > 0
    assert not list(out.glob("*.render")) and not list(out.glob("*partial*"))
    assert results[2]["error"] == str(expected.value) and results[2]["frames"] is None
    assert 'unknown key "stepz" (did you mean "steps"?)' in results[3]["error"] and "missing.jpg not found" in \
        results[3]["error"]
    assert results[4]["error"] == "steps must be between 1 and 1000, got 0"
    assert results[5]["error"].startswith("not a JSON object")

    lines = stderr.splitlines()
    for record in results[3:]:
        assert f"{manifest}:{record['line']}: {record['error']}" in lines
    assert f"line 4 failed: {expected.value}" in lines
    assert any(line.startswith(f"line 1 done: {out / 'first.mp4'}, {frames} frames, 2 clips") for line in lines)
    assert "batch: 2/3 jobs done, 1 failed, 0 running | clips 4/4" in lines
    assert stdout.strip() == f"{out / 'results.jsonl'}: 2 done, 1 failed, 3 invalid"

    # Run again: the jobs done before are not rendered again, the failed one is tried again.
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}
    code, stdout, stderr = _batch([manifest, "--out", out, "--models", tiny_models], capsys)
    assert code == 1, stderr
    assert [(r["line"], r["status"]) for r in _results(out)][:3] == [(1, "done before"), (2, "done before"),
                                                                     (4, "failed")]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")} == mtimes
    assert f"line 1 done in an earlier run: {out / 'first.mp4'}" in stderr.splitlines()


def test_strict_refuses_a_batch_with_bad_lines(tiny_models, portraits_dir, speech, tmp_path, capsys):
    manifest = _manifest(
        tmp_path / "jobs.jsonl",
        {"image": str(portraits_dir / "0003.jpg"), "audio": str(speech)},
        {"image": str(portraits_dir / "0003.jpg"), "audio": str(speech), "cfg": float("nan")},
        {"image": str(portraits_dir / "0003.jpg"), "audio": str(speech), "steps": 2.5},
        {"image": str(portraits_dir / "0003.jpg"), "audio": str(speech), "pose_weight": 1.0},
        {"image": str(portraits_dir / "0001.jpg"), "audio": str(speech), "memory": "tiny"},
    )
    code, stdout, stderr = _batch([manifest, "--out", tmp_path / "out", "--models", tiny_models, "--strict"], capsys)
    assert code == 2 and stdout == ""
    lines = stderr.strip().splitlines()
    assert lines[-1] == (f"error: 4 bad lines in {manifest} (listed above); fix them, or leave out --strict to run "
                         "the good ones")
    assert lines[:-1] == [f"{manifest}:2: cfg must be a finite number in [0, 100], got nan",
                          f'{manifest}:3: "steps" must be a whole number, got 2.5',
                          f'{manifest}:4: "pose_weight" is not an option of hallo3',
                          f"{manifest}:5: unknown memory preset 'tiny'; choose one of {', '.join(MEMORY_PRESETS)}"]
    assert os.listdir(tmp_path / "out") == []  # nothing ran, no results file


def test_a_killed_worker_is_retried_and_renders_no_finished_clip_again(local_ray, tiny_models, portraits_dir,
                                                                       tmp_path, capsys):
    audio = cut_audio(portraits_dir / "0003.wav", 5.2, tmp_path / "speech.wav")  # 130 frames: 3 clips
    manifest = _manifest(tmp_path / "jobs.jsonl", {"image": str(portraits_dir / "0003.jpg"), "audio": str(audio),
                                                   "steps": 2, "vocal_separation": False, "output": "long.mp4"})
    out = tmp_path / "out"
    render_dir = out / "long.render"
    killed = {}

    def kill_after_the_first_clip():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (render_dir / "clip_00000.mkv").exists():
            time.sleep(0.02)
        pid = int((render_dir / "lock").read_text())  # the render store writes its holder's pid there
        assert pid != os.getpid()
        os.kill(pid, signal.SIGKILL)
        psutil.Process(pid).wait(timeout=30)
        records = json.loads((render_dir / "manifest.json").read_text())["clips"]
        killed.update(pid=pid, finished={f"clip_{int(i):05d}.mkv": (render_dir / f"clip_{int(i):05d}.mkv")
                                         .stat().st_mtime_ns for i in records})

    watcher = threading.Thread(target=kill_after_the_first_clip, daemon=True)
    watcher.start()
    code, stdout, stderr = _batch([manifest, "--out", out, "--models", tiny_models, "--keep-render"], capsys)
    watcher.join(timeout=5)
    assert code == 0, stderr
    # (Ray's raylet prints its own word on the dead worker to stdout before it.)
    assert stdout.strip().splitlines()[-1] == f"{out / 'results.jsonl'}: 1 done"
    assert killed and 1 <= len(killed["finished"]) < 3, killed

    [record] = _results(out)
    assert record["status"] == "done" and record["attempts"] == 2, record
    assert record["resumed_clips"] == len(killed["finished"]) and record["clips"] == 3
    for name, mtime in killed["finished"].items():  # finished clips were not rendered again
        assert (render_dir / name).stat().st_mtime_ns == mtime, name
    assert int((render_dir / "lock").read_text()) != killed["pid"]  # the retry ran in another worker process
    assert record["frames"] == probe(out / "long.mp4")["frames"] == _frames(audio) == 130
    assert "line 1: its worker stopped; Ray runs it again (attempt 2), resuming from its finished clips" in \
        stderr.splitlines()


def test_without_ray_the_command_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a))
    code, stdout, stderr = _batch([tmp_path / "jobs.jsonl", "--out", tmp_path / "out"], capsys)
    assert code == 2 and stdout == ""
    assert stderr == ("error: batch runs on Ray, which is not installed; install it with: pip install "
                      "'hallo-nodes[batch]' (or pip install -r requirements-batch.txt)\n")


def test_generate_and_the_command_line_do_not_import_ray():
    code = ("import sys, hallo_core.generate, hallo_core.cli; hallo_core.cli.build_parser(); "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith(('ray.', 'hallo_core.batch.'))))")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=python_env(),
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['hallo_core.batch.command']"


def test_every_generate_option_is_a_manifest_key_and_listed_in_the_help():
    from hallo_core.batch.command import BATCH_EPILOG
    from hallo_core.batch.manifest import KEYS
    from hallo_core.cli import build_parser

    [commands] = [a for a in build_parser()._actions if a.dest == "command"]
    options = {action.dest for action in commands.choices["generate"]._actions}
    batch_level = {"help", "device", "render_dir", "keep_render",  # the batch's flags and the workers' resources
                   "parallel", "ulysses_degree"}  # torchrun's: a batch job has one GPU
    renamed = {"out": "output", "no_vocal_separation": "vocal_separation"}
    assert {renamed.get(option, option) for option in options - batch_level} == set(KEYS)
    assert [key for key in KEYS if key not in BATCH_EPILOG] == []


def test_the_progress_line_counts_jobs_clips_and_time_left():
    from hallo_core.batch.progress import BatchState, status_line

    state = BatchState([1, 2, 3])
    state.update(3, {"event": "start", "pid": 1})
    state.update(3, {"event": "clips", "clips": 2})
    for clip in range(2):
        state.update(3, {"event": "clip_done", "clip": clip, "clips": 2, "resumed": False})
    state.update(3, {"event": "end", "error": None})
    state.update(1, {"event": "start", "pid": 2})
    state.update(1, {"event": "clip_done", "clip": 0, "clips": 4, "resumed": False})
    state.update(1, {"event": "start", "pid": 3})  # its worker died: Ray runs it again, the clip is resumed
    state.update(1, {"event": "clip_done", "clip": 0, "clips": 4, "resumed": True})
    state.update(1, {"event": "clip_done", "clip": 1, "clips": 4, "resumed": False})
    snapshot = state.snapshot()
    assert snapshot["jobs"][1]["attempts"] == 2 and snapshot["jobs"][1]["done"] == 2 and snapshot["rendered"] == 4
    snapshot["running_for"] = 40.0  # 4 clips rendered in 40 s: 0.1 clip/s
    # left: job 1's 2 clips + job 2 (not started) at the mean of the known jobs' (4 + 2) / 2 = 3 clips -> 50 s
    assert status_line(snapshot, {3: {"error": None}}, 3) == \
        "batch: 1/3 jobs done, 1 running | clips 4/6+ (1 resumed) | about 50 s left"
