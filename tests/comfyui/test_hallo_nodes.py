"""The pack inside a real ComfyUI, on tiny models: node registration, every shipped API workflow, interrupting
DiTDenoise, bad prompts, and the UI workflows in the browser. Skipped (with the reason) without COMFYUI_PATH."""
from __future__ import annotations

import json
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import harness  # noqa: E402
from conftest import cut_audio  # noqa: E402  (tests/conftest.py)

REPO = harness.REPO
WORKFLOWS = REPO / "workflows"
PORTRAITS = REPO.parent / "shared" / "fixtures" / "portraits"
OUR_NODES = {
    "LoadHalloModel": "Load Hallo Model",
    "HalloAudioEncodeWav2Vec": "Hallo Audio Encode (wav2vec2)",
    "HalloIdentityReference": "Hallo Identity Reference",
    "HalloMotionFrameSampler": "Hallo Motion Frame Sampler",
    "HalloDiTDenoise": "Hallo3 DiT Denoise",
    "HalloVQTemporalUpscale4K": "Hallo2 VQ Temporal Upscale 4K",
}


@pytest.fixture(scope="module")
def hallo_server(comfyui_install, tmp_path_factory):
    from hallo_core.dev.tiny_models import make_tiny_comfyui_models

    models = tmp_path_factory.mktemp("hallo_models")
    make_tiny_comfyui_models(models)
    comfy, python = comfyui_install
    server = harness.ComfyServer.start(tmp_path_factory.mktemp("hallo_run"), comfy=comfy, python=python,
                                       pack_dir=REPO, models_root=models)
    audio = cut_audio(PORTRAITS / "0001.wav", 2.2, tmp_path_factory.mktemp("inputs") / "speech.wav")
    server.upload(PORTRAITS / "0001.jpg", "portrait.jpg")
    server.upload(audio, "speech.wav")
    server.speech_frames = _video_frames(audio)
    yield server
    server.stop()


def _video_frames(audio_path: Path) -> int:
    """Frames the official rule gives this speech: ceil(16 kHz samples / 16000 * 25)."""
    from hallo_core.audio import decode_audio, frame_count, speech_16k_mono

    return frame_count(len(speech_16k_mono(decode_audio(str(audio_path)))))


def _workflow(name: str, steps: int = 2) -> dict:
    prompt = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    for node in prompt.values():
        if node["class_type"] == "HalloDiTDenoise":
            node["inputs"]["steps"] = steps
            if node["inputs"]["start_seconds"] > 0:
                node["inputs"]["start_seconds"] = 1.88  # the 2.2 s test speech: segment 2 is its second clip
        if node["class_type"] == "HalloDiTDenoise" and node["inputs"]["duration_seconds"] > 0:
            node["inputs"]["duration_seconds"] = 1.88
        if node["class_type"] == "HalloVQTemporalUpscale4K":
            node["inputs"]["target"], node["inputs"]["scale"] = "scale", 2.0
    return prompt


def test_the_six_nodes_are_registered_with_their_inputs(hallo_server):
    assert not hallo_server.import_failures(), hallo_server.log_tail()
    info = hallo_server.object_info()
    for node_id, display in OUR_NODES.items():
        assert node_id in info, node_id
        assert info[node_id]["display_name"] == display
        assert info[node_id]["category"] == "Hallo"
    dit = info["HalloDiTDenoise"]["input"]
    assert set(dit["required"]) == {"model", "speech", "identity", "start_seconds", "duration_seconds", "steps",
                                    "cfg", "seed"}
    assert set(dit["optional"]) == {"motion"}
    assert info["HalloDiTDenoise"]["output"] == ["IMAGE", "AUDIO", "VIDEO", "HALLO_MOTION"]
    templates = hallo_server.client.get_json("/workflow_templates") if hasattr(hallo_server.client, "get_json") \
        else json.loads(urllib.request.urlopen(hallo_server.url + "/workflow_templates", timeout=30).read())
    shipped = {p.stem for p in WORKFLOWS.glob("*.json")}
    assert set(templates.get("hallo-nodes", [])) == shipped, templates  # the template browser: UI files only
    loader = info["LoadHalloModel"]["input"]["required"]
    assert "hallo3/hallo3_transformer_bf16.safetensors" in loader["transformer"][1]["options"]
    assert "t5-v1_1-xxl" in loader["text_encoder"][1]["options"]


@pytest.mark.parametrize("name", ["hallo3_portrait_to_video", "hallo3_long_video_segments", "hallo3_long_video_4k"])
def test_api_workflow_runs_on_tiny_models(hallo_server, tmp_path, name):
    from hallo_core.media.video import probe

    result = hallo_server.run(_workflow(name), timeout=1500)
    assert result["status"] == "success", json.dumps(result["data"])[:2000]
    files = hallo_server.download_outputs(result["history"], tmp_path)
    videos = [f for f in files if f.suffix == ".mp4" and "hallo_renders" not in f.parts]  # SaveVideo, not previews
    assert len(videos) == 1
    info = probe(videos[0])
    assert [s["codec"] for s in info["streams"]] == ["h264", "aac"]
    assert info["frames"] == hallo_server.speech_frames
    audio = next(s for s in info["streams"] if s["type"] == "audio")
    assert abs(audio["duration"] - info["frames"] / 25) <= 1 / 25 + 1e-6
    video = next(s for s in info["streams"] if s["type"] == "video")
    assert (video["width"], video["height"]) == ((128, 128) if name.endswith("4k") else (64, 64))


def test_face_upsample_changes_the_face_and_needs_an_upscale_model(hallo_server, tmp_path):
    """VQTemporalUpscale4K alone on the portrait: face_upsample pastes a different (upsampled) face than the default,
    and without an UPSCALE_MODEL it is refused in one line."""
    from PIL import Image

    workflow = _workflow("hallo3_long_video_4k")
    upscale = next(n for n in workflow.values() if n["class_type"] == "HalloVQTemporalUpscale4K")
    outputs = {}
    for face_upsample in (False, True):
        prompt = {
            "1": {"class_type": "LoadImage", "inputs": {"image": "portrait.jpg"}},
            "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bilinear",
                                                         "width": 96, "height": 96, "crop": "center"}},
            "3": workflow["3"],
            "13": workflow["13"],
            "14": {"class_type": "HalloVQTemporalUpscale4K",
                   "inputs": {**upscale["inputs"], "images": ["2", 0], "face_upsample": face_upsample}},
            "15": {"class_type": "SaveImage", "inputs": {"images": ["14", 0],
                                                          "filename_prefix": f"face_upsample_{face_upsample}"}},
        }
        result = hallo_server.run(prompt, timeout=900)
        assert result["status"] == "success", json.dumps(result["data"])[:2000]
        (image,) = [f for f in hallo_server.download_outputs(result["history"], tmp_path / str(face_upsample))
                    if f.suffix == ".png"]
        outputs[face_upsample] = np.asarray(Image.open(image).convert("RGB"), dtype=np.int16)
    assert outputs[True].shape == outputs[False].shape == (192, 192, 3)
    assert (outputs[True] != outputs[False]).any(axis=-1).mean() > 0.01  # a face was found and pasted differently

    del prompt["14"]["inputs"]["upscale_model"]
    result = hallo_server.run(prompt, timeout=600)
    assert result["status"] == "error"
    message = result["data"]["exception_message"].strip()
    assert "face upsampling needs a super-resolution model" in message and "\n" not in message


def test_interrupt_stops_dit_denoise_within_a_step(hallo_server):
    prompt = _workflow("hallo3_portrait_to_video", steps=200)
    prompt["6"]["inputs"]["seed"] = 7  # not cached by an earlier test
    progress, interrupted = [], threading.Event()

    def on_event(kind, data):
        if kind == "progress" and str(data.get("node")) == "6":
            progress.append((interrupted.is_set(), data.get("value")))
            if not interrupted.is_set() and data.get("value", 0) >= 3:
                interrupted.set()
                hallo_server.interrupt()

    result = hallo_server.run(prompt, timeout=600, on_event=on_event)
    assert result["status"] == "interrupted", result["status"]
    after = [value for was_interrupted, value in progress if was_interrupted]
    assert len(after) <= 1, f"steps after the interrupt: {after}"
    assert hallo_server.alive()
    rerun = hallo_server.run(_workflow("hallo3_portrait_to_video"), timeout=600)
    assert rerun["status"] == "success"


def test_bad_prompts_are_refused_and_the_server_stays_up(hallo_server):
    base = _workflow("hallo3_portrait_to_video")
    traversal = json.loads(json.dumps(base))
    traversal["3"]["inputs"]["transformer"] = "../../../../etc/passwd"
    with pytest.raises(harness.PromptRejected) as rejected:
        hallo_server.run(traversal)
    assert "is not in ComfyUI's 'diffusion_models' model folders" in str(rejected.value)
    absolute = json.loads(json.dumps(base))
    absolute["3"]["inputs"]["text_encoder"] = "/etc"
    with pytest.raises(harness.PromptRejected):
        hallo_server.run(absolute)
    missing = json.loads(json.dumps(base))
    del missing["6"]["inputs"]["speech"]
    with pytest.raises(harness.PromptRejected):
        hallo_server.run(missing)
    official = json.loads(json.dumps(base))
    official["3"]["inputs"]["transformer"] = "(official pretrained_models)"
    result = hallo_server.run(official, timeout=300)
    assert result["status"] == "error"
    message = result["data"]["exception_message"].strip()
    assert "no official folder is selected" in message and "\n" not in message
    assert hallo_server.alive()


@pytest.mark.parametrize("name", ["hallo3_portrait_to_video", "hallo3_long_video_segments", "hallo3_long_video_4k"])
def test_ui_workflow_loads_in_the_browser(hallo_server, chromium, tmp_path, name):
    errors = harness.open_ui(chromium, hallo_server.url)
    report = harness.load_workflow_in_ui(chromium, json.loads((WORKFLOWS / f"{name}.json").read_text()),
                                         screenshot=tmp_path / f"{name}.png")
    assert report["missing"] == [] and report["errors"] == [], report
    ours = [e for e in report["console"] + errors if "/extensions/hallo-nodes/" in e or "hallo.nodes" in e]
    assert ours == []
    statuses = chromium.evaluate("Array.from(document.querySelectorAll('.hallo-status')).length")
    expected = sum(1 for n in report["nodes"] if n["type"] in ("HalloDiTDenoise", "HalloAudioEncodeWav2Vec"))
    assert statuses == expected > 0
    # The extension reads the connected speech's length and shows the frames and clips it will give.
    chromium.wait_for("Array.from(document.querySelectorAll('.hallo-status'))"
                      ".every(e => e.textContent.includes('frames'))", timeout=30, what="frame and clip counts")
    text = chromium.evaluate("document.querySelector('.hallo-status').textContent")
    assert f"{hallo_server.speech_frames} frames" in text, text
    chromium.screenshot(report["screenshot"])
    assert Path(report["screenshot"]).stat().st_size > 10_000
