"""workflows/run_api.py as a user runs it (a subprocess) against a real ComfyUI with core nodes only.
Skipped without COMFYUI_PATH."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import core_graphs
import harness

RUN_API = harness.REPO / "workflows" / "run_api.py"


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, str(RUN_API), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def write_workflow(path, prompt):
    path.write_text(json.dumps(prompt, indent=1))
    return path


def test_uploads_sets_runs_and_downloads_the_video(comfy_core_server, tmp_path):
    import av

    wav = core_graphs.write_tone_wav(tmp_path / "speech.wav", seconds=2.0)
    wf = write_workflow(tmp_path / "video_api.json", core_graphs.video_with_audio("placeholder.wav", frames=10))
    out = tmp_path / "downloads"
    r = run_cli("--server", comfy_core_server.url, "--workflow", wf, "--upload", f"2.audio={wav}",
                "--set", "1.batch_size=50", "--set", "3.fps=25", "--out", out)
    assert r.returncode == 0, r.stderr
    assert f"uploaded {wav} -> input/speech.wav" in r.stderr  # progress and messages: stderr
    assert "[4 SaveVideo] running" in r.stderr
    (mp4,) = out.glob("video/*.mp4")
    assert r.stdout.splitlines() == [str(mp4)]  # the downloaded paths: stdout, each file once
    with av.open(str(mp4)) as f:
        seconds = f.duration / av.time_base
        assert f.streams.audio[0].codec_context.name == "aac"
        frames = sum(1 for _ in f.decode(video=0))
    assert frames == 50 and abs(seconds - 2.0) < 0.1  # --set batch_size reached the server


def test_invalid_prompt_exits_4_with_the_node_error(comfy_core_server, tmp_path):
    wf = write_workflow(tmp_path / "tiny_api.json", core_graphs.tiny_image())
    r = run_cli("--server", comfy_core_server.url, "--workflow", wf, "--set", "1.width=-3", "--out", tmp_path)
    assert r.returncode == 4, r.stderr
    assert r.stderr.splitlines()[0].startswith("error: prompt rejected by the server: ")
    assert "  node 1 (EmptyImage): Value -3 smaller than min of 1: width" in r.stderr.splitlines()


def test_misspelt_input_exits_2_before_contacting_the_server(comfy_core_server, tmp_path):
    wf = write_workflow(tmp_path / "tiny_api.json", core_graphs.tiny_image())
    r = run_cli("--server", comfy_core_server.url, "--workflow", wf, "--set", "1.widht=8", "--out", tmp_path)
    assert r.returncode == 2
    assert "node 1 (EmptyImage) has no input 'widht' (did you mean 'width'?)" in r.stderr


def test_execution_error_exits_5_with_the_exception_message(comfy_core_server, tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"this is not audio" * 100)
    wf = write_workflow(tmp_path / "video_api.json", core_graphs.video_with_audio("x.wav"))
    r = run_cli("--server", comfy_core_server.url, "--workflow", wf, "--upload", f"2.audio={bad}", "--out", tmp_path)
    assert r.returncode == 5, r.stdout + r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: node 2 (LoadAudio) failed: ") and len(line) > 40, r.stderr
    assert comfy_core_server.alive()


def _as_a_foreground_job():
    """Ctrl-C reaches a command a user runs in a terminal; pytest itself may run with SIGINT ignored (a shell's
    background job inherits that), and an ignored signal stays ignored in every child."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_interrupts_the_run_on_the_server(comfy_core_server, tiny_upscale_model, tmp_path):
    wf = write_workflow(tmp_path / "slow_api.json", core_graphs.slow_upscale(tiny_upscale_model))
    proc = subprocess.Popen([sys.executable, str(RUN_API), "--server", comfy_core_server.url, "--workflow", str(wf),
                             "--out", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_as_a_foreground_job)
    try:
        prompt_id, seen = None, []
        for line in proc.stderr:  # wait until the upscale node reports progress (at 10 %)
            seen.append(f"{time.monotonic():.2f} {line.rstrip()}")
            if line.startswith("queued prompt "):
                prompt_id = line.split()[-1]
            if "ImageUpscaleWithModel" in line and " step " in line:
                break
        else:
            raise AssertionError(f"run_api.py ended (status {proc.wait()}) before the upscale reported progress")
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, "\n".join(seen) + f"\n{time.monotonic():.2f} ended\n" + err
    assert f"interrupted prompt {prompt_id} on the server" in err
    end = time.monotonic() + 30
    while not (entry := comfy_core_server.history(prompt_id)) and time.monotonic() < end:
        time.sleep(0.2)
    assert "execution_interrupted" in [m[0] for m in entry["status"]["messages"]]
    assert comfy_core_server.run(core_graphs.tiny_image(prefix="after_ctrl_c"), timeout=60)["status"] == "success"
