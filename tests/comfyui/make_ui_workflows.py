"""Make the UI-format twins of the shipped API workflows with ComfyUI's own frontend.

    COMFYUI_PATH=/path/to/ComfyUI python tests/comfyui/make_ui_workflows.py

For each workflows/api/<name>.json: start ComfyUI with the pack and tiny models, load the API graph in the real
frontend (headless Chromium, `app.loadApiJson`), let it arrange the nodes, and save `graph.serialize()` as
workflows/<name>.json, adding model download hints (`properties.models`) where a public file exists. Widget order
and values are the frontend's own, so the UI file loads exactly as a user's saved workflow would.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness  # noqa: E402

WORKFLOWS = harness.REPO / "workflows"
PACK = {"cnr_id": "hallo-nodes", "ver": "0.1.0"}
# Public files the frontend's "missing models" dialog can fetch (it only accepts Hugging Face/Civitai .safetensors).
DOWNLOADS = {
    "cogvideox_5b_i2v_vae_bf16.safetensors": {
        "url": "https://huggingface.co/THUDM/CogVideoX-5b-I2V/resolve/main/vae/diffusion_pytorch_model.safetensors",
        "directory": "vae",
    },
}
TITLES = {
    "hallo3_portrait_to_video": "Hallo3: portrait + speech -> talking video with sound",
    "hallo3_long_video_segments": "Hallo3: long video in chained segments, one prompt per segment",
    "hallo3_long_video_4k": "Hallo3: long video in segments, upscaled to 4K with Hallo2's VQ face upscaler",
    "hallo2_portrait_to_video": "Hallo2: portrait + speech -> talking video (8-16 GB GPUs)",
    "hallo2_long_video_4k": "Hallo2: long video in segments, upscaled to 4K (the official Hallo2 system)",
    "hallo_expression_control": "Hallo: how much the speech moves the head, the face and the lips",
}


def layout(ui: dict) -> dict:
    """Columns by graph depth (sources left), nodes stacked in each column without overlap."""
    incoming: dict[int, list[int]] = {}
    for link in ui["links"]:
        incoming.setdefault(link[3], []).append(link[1])
    depth: dict[int, int] = {}

    def node_depth(node_id: int) -> int:
        if node_id not in depth:
            depth[node_id] = 0  # guards against cycles
            depth[node_id] = 1 + max((node_depth(source) for source in incoming.get(node_id, [])), default=-1)
        return depth[node_id]

    columns: dict[int, float] = {}
    for node in sorted(ui["nodes"], key=lambda n: (node_depth(n["id"]), n["id"])):
        column = node_depth(node["id"])
        y = columns.get(column, 60.0)
        node["pos"] = [60.0 + 420.0 * column, y]
        preview = 220.0 if node["type"] in ("LoadImage", "LoadAudio") else 0.0  # previews grow these nodes
        columns[column] = y + float(node["size"][1]) + preview + 80.0
    return ui


def annotate(ui: dict) -> dict:
    for node in ui["nodes"]:
        if node["type"] in ("HalloDiTDenoise", "HalloUNetDenoise"):  # shipped workflows reproduce: the seed stays
            node["widgets_values"] = ["fixed" if v == "randomize" else v for v in node["widgets_values"]]
        properties = node.setdefault("properties", {})
        if node["type"].startswith(("Hallo", "LoadHallo")):
            properties.update(PACK)
        if node["type"] == "LoadHalloModel":
            hints = [{"name": value, **DOWNLOADS[value]} for value in node.get("widgets_values", [])
                     if isinstance(value, str) and value in DOWNLOADS]
            if hints:
                properties["models"] = hints
    return ui


def main() -> None:
    from hallo_core.dev.tiny_models import make_tiny_comfyui_models

    comfy = harness.comfyui_path()
    if comfy is None:
        raise SystemExit("set COMFYUI_PATH to a ComfyUI checkout (docs/comfyui_testing.md)")
    run = Path(tempfile.mkdtemp(prefix="hallo-ui-workflows-"))
    models = run / "models"
    make_tiny_comfyui_models(models)
    for folder in ("checkpoints", "vae", "text_encoders", "diffusion_models", "audio_encoders", "upscale_models"):
        (models / folder).mkdir(exist_ok=True)
    server = harness.ComfyServer.start(run / "server", comfy=comfy, python=harness.comfyui_python(comfy),
                                       pack_dir=harness.REPO, models_root=models)
    browser = harness.Chromium()
    try:
        for name in ("portrait.jpg", "speech.wav"):
            source = harness.REPO.parent / "shared" / "fixtures" / "portraits" / ("0001.jpg" if name.endswith("jpg")
                                                                                  else "0001.wav")
            server.upload(source, name)
        harness.open_ui(browser, server.url)
        for api_path in sorted((WORKFLOWS / "api").glob("*.json")):
            stem = api_path.stem
            api = json.loads(api_path.read_text())
            ui = browser.evaluate(
                f"(async () => {{ await app.loadApiJson({json.dumps(api)}, {json.dumps(stem)}); "
                "app.graph.arrange?.(); return app.graph.serialize(); })()")
            ui.setdefault("extra", {})["title"] = TITLES.get(stem, stem)
            (WORKFLOWS / f"{stem}.json").write_text(json.dumps(layout(annotate(ui)), indent=1) + "\n")
            print(f"wrote workflows/{stem}.json ({len(ui['nodes'])} nodes)")
    finally:
        browser.close()
        server.stop()


if __name__ == "__main__":
    sys.path.insert(0, str(harness.REPO))
    main()
