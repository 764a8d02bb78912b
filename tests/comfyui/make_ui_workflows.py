"""Make the UI-format twins of the shipped API workflows with ComfyUI's own frontend, laid out to read at a glance.

    COMFYUI_PATH=/path/to/ComfyUI python tests/comfyui/make_ui_workflows.py

For each workflows/api/<name>.json: start ComfyUI with the pack and tiny models, load the API graph in the real
frontend (headless Chromium, `app.loadApiJson`), then lay it out left to right in groups (portrait and speech, model,
prepare, render, save), each with a short note, size the nodes for their widgets, and open the view on the whole
graph at a readable zoom. The frontend serialises it (`graph.serialize()`, so widget order and values are its own)
to `workflows/<title>.json`, with model download hints (`properties.models`) where a public file exists and the API
twin's name in `extra.hallo_api`; a screenshot of the graph becomes `workflows/<title>.jpg`, the template browser's
thumbnail. The template browser shows file names as titles, hence the readable names.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness  # noqa: E402

sys.path.insert(0, str(HERE.parent))
import workflow_validation as wv  # noqa: E402

WORKFLOWS = harness.REPO / "workflows"
PACK = {"cnr_id": "hallo-nodes", "ver": "0.1.0"}
# Public files the frontend's "missing models" dialog can fetch (it only accepts Hugging Face/Civitai .safetensors).
DOWNLOADS = {
    "cogvideox_5b_i2v_vae_bf16.safetensors": {
        "url": "https://huggingface.co/THUDM/CogVideoX-5b-I2V/resolve/main/vae/diffusion_pytorch_model.safetensors",
        "directory": "vae",
    },
    "sd_vae_ft_mse_fp16.safetensors": {
        "url": "https://huggingface.co/stabilityai/sd-vae-ft-mse/resolve/main/diffusion_pytorch_model.safetensors",
        "directory": "vae",
    },
}
TITLES = {  # file names in the template browser
    "hallo3_portrait_to_video": "Hallo3 - portrait and speech to talking video",
    "hallo3_long_video_segments": "Hallo3 - long video in segments, a prompt per segment",
    "hallo3_long_video_4k": "Hallo3 - long video upscaled to 4K",
    "hallo2_portrait_to_video": "Hallo2 - portrait and speech to talking video (8-16 GB GPUs)",
    "hallo2_long_video_4k": "Hallo2 - long video upscaled to 4K (the official Hallo2 system)",
    "hallo_expression_control": "Hallo - calm head, strong lips (pose, expression and lip weights)",
}
# Columns left to right: (group title, note, node types).
COLUMNS = [
    ("1 · Portrait and speech", "Pick a portrait (face clearly visible) and a speech. The video is as long as the "
     "speech.", ("LoadImage", "LoadAudio")),
    ("2 · Model", "Pick the model files (docs: README, 'Models'). One loader serves every node.",
     ("LoadHalloModel", "UpscaleModelLoader")),
    ("3 · Prepare", "Speech features and the portrait, computed once. The status line shows the frames and clips "
     "the speech gives.", ("HalloAudioEncodeWav2Vec", "HalloIdentityReference")),
    ("4 · Render", "Renders clip after clip, with progress and time left. Stopped? Queue again: finished clips are "
     "kept.", ("HalloDiTDenoise", "HalloUNetDenoise", "HalloMotionFrameSampler")),
    ("5 · Save", "The video travels as a file, never as frames in memory, whatever its length.",
     ("HalloJoinVideos", "HalloVQTemporalUpscale4K", "SaveVideo")),
]
WIDTHS = {"LoadHalloModel": 470, "HalloDiTDenoise": 380, "HalloUNetDenoise": 380, "HalloIdentityReference": 360,
          "HalloVQTemporalUpscale4K": 380, "LoadImage": 320, "LoadAudio": 320}
DEFAULT_WIDTH = 340
PREVIEW_HEIGHT = {"LoadImage": 220, "LoadAudio": 70, "HalloIdentityReference": 120, "HalloDiTDenoise": 80,
                  "HalloUNetDenoise": 80, "HalloVQTemporalUpscale4K": 140, "SaveVideo": 160}
GAP, NOTE_HEIGHT, TITLE, NODE_TITLE = 40, 76, 46, 30
VIEW = wv.VIEW_SIZE  # the canvas of a 1600 x 1000 browser window, less ComfyUI's side bar and menus


def layout(browser: harness.Chromium) -> None:
    """Place the loaded graph's nodes in the column groups, with a note at the top of each group (in the page)."""
    script = """
((columns, widths, defaultWidth, previews, gap, noteHeight, title, nodeTitle) => {
  const graph = app.graph;
  for (const group of [...(graph._groups || [])]) graph.remove(group);
  let x = 40;
  for (const [name, note, types] of columns) {
    const nodes = graph._nodes.filter((n) => types.includes(n.type)).sort((a, b) => a.id - b.id);
    if (!nodes.length) continue;
    const width = Math.max(...nodes.map((n) => widths[n.type] ?? defaultWidth));
    const noteTop = 40 + title + nodeTitle;  // a node's pos is the top of its body, below its title bar
    let y = noteTop + noteHeight + gap / 2 + nodeTitle;
    for (const node of nodes) {
      node.size = [widths[node.type] ?? defaultWidth, node.computeSize()[1] + (previews[node.type] ?? 0)];
      node.pos = [x + 15, y];
      y += node.size[1] + gap;
    }
    const text = LiteGraph.createNode("Note");
    text.widgets[0].value = note;
    text.size = [width, noteHeight];
    text.pos = [x + 15, noteTop];
    graph.add(text);
    const group = new LiteGraph.LGraphGroup(name);
    group.pos = [x, 40];
    group.size = [width + 30, y - 40 - gap / 2];
    graph.add(group);
    x += width + 30 + gap;
  }
  app.canvas.setDirty(true, true);
  return true;
})""" + f"({json.dumps(COLUMNS)}, {json.dumps(WIDTHS)}, {DEFAULT_WIDTH}, {json.dumps(PREVIEW_HEIGHT)}, {GAP}, " \
        f"{NOTE_HEIGHT}, {TITLE}, {NODE_TITLE})"
    browser.evaluate(script)


def fit_view(ui: dict) -> dict:
    """Open on the whole graph: the zoom and offset that fit every group into the view (zoom at most 1)."""
    boxes = [(g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2],
              g["bounding"][1] + g["bounding"][3]) for g in ui.get("groups", [])]
    boxes += [(n["pos"][0], n["pos"][1], n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
              for n in ui["nodes"]]
    left, top = min(b[0] for b in boxes), min(b[1] for b in boxes)
    right, bottom = max(b[2] for b in boxes), max(b[3] for b in boxes)
    top_pad, pad = 60, 20  # screen pixels; newer frontends float their toolbars over the top of the canvas
    scale = min(1.0, (VIEW[0] - 2 * pad) / (right - left), (VIEW[1] - top_pad - pad) / (bottom - top))
    offset = [(VIEW[0] / scale - (right - left)) / 2 - left, top_pad / scale - top]
    ui.setdefault("extra", {})["ds"] = {"scale": round(scale, 3), "offset": [round(o, 1) for o in offset]}
    return ui


def annotate(ui: dict, api_name: str) -> dict:
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
    ui.setdefault("extra", {})["hallo_api"] = f"api/{api_name}.json"
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
    browser = harness.Chromium(width=1600, height=1000)
    try:
        for name in ("portrait.jpg", "speech.wav"):
            source = harness.REPO.parent / "shared" / "fixtures" / "portraits" / ("0001.jpg" if name.endswith("jpg")
                                                                                  else "0001.wav")
            server.upload(source, name)
        harness.open_ui(browser, server.url)
        for stale in list(WORKFLOWS.glob("*.json")) + list(WORKFLOWS.glob("*.jpg")):
            stale.unlink()
        for api_path in sorted((WORKFLOWS / "api").glob("*.json")):
            stem = api_path.stem
            api = json.loads(api_path.read_text())
            browser.evaluate(f"(async () => {{ await app.loadApiJson({json.dumps(api)}, {json.dumps(stem)}); "
                             "return true; })()")
            time.sleep(1.0)  # extensions add their widgets
            layout(browser)
            ui = fit_view(annotate(browser.evaluate("app.graph.serialize()"), stem))
            title = TITLES.get(stem, stem)
            path = WORKFLOWS / f"{title}.json"
            path.write_text(json.dumps(ui, indent=1) + "\n")
            harness.load_workflow_in_ui(browser, ui, screenshot=WORKFLOWS / f"{title}.png", settle_seconds=2.0)
            canvas = browser.evaluate("(() => { const r = app.canvas.canvas.getBoundingClientRect(); "
                                      "return [r.left, r.top, r.right, r.bottom]; })()")
            _to_jpeg(WORKFLOWS / f"{title}.png", WORKFLOWS / f"{title}.jpg", canvas)
            print(f"wrote workflows/{path.name} ({len(ui['nodes'])} nodes) and its thumbnail")
    finally:
        browser.close()
        server.stop()


def _to_jpeg(png: Path, jpg: Path, canvas: list[float], width: int = 800) -> None:
    """The screenshot's canvas (the graph, without ComfyUI's menus), as the template browser's JPEG thumbnail."""
    from PIL import Image

    with Image.open(png) as image:
        image = image.convert("RGB").crop(tuple(int(round(v)) for v in canvas))
        image.thumbnail((width, width))
        image.save(jpg, quality=85)
    png.unlink()


if __name__ == "__main__":
    sys.path.insert(0, str(harness.REPO))
    main()
