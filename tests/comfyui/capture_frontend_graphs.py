"""Build small graphs in ComfyUI's real frontend (headless Chromium) and record what it saves (UI format, the
frontend's `graph.serialize()`) and what it would queue (API format, `graphToPrompt`). The pairs exercise what
makes UI -> API conversion tricky: widget order, seed control values, upload widgets, PrimitiveNode, Reroute,
Note, bypassed and muted nodes, links into widget inputs.

    COMFYUI_PATH=/path/to/ComfyUI python tests/comfyui/capture_frontend_graphs.py   # writes the fixture

tests/fixtures/comfy_frontend_graphs.json lets CI check tests/workflow_validation.py's converter against the real
frontend; tests/comfyui/test_frontend_conversion.py repeats the comparison live.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness  # noqa: E402

OUT = HERE.parent / "fixtures" / "comfy_frontend_graphs.json"

# JS bodies run inside an async function with `LG` (LiteGraph) and `mk(type, [x, y])` available.
GRAPHS = {
    "video_with_audio": """
        const img = mk("EmptyImage", [0, 0]);
        img.widgets.find(w => w.name === "batch_size").value = 25;
        const audio = mk("LoadAudio", [0, 300]);
        audio.widgets.find(w => w.name === "audio").value = "speech.wav";
        const video = mk("CreateVideo", [350, 0]);
        video.widgets.find(w => w.name === "fps").value = 25;
        const save = mk("SaveVideo", [700, 0]);
        save.widgets.find(w => w.name === "filename_prefix").value = "video/hallo";
        img.connect(0, video, "images");
        audio.connect(0, video, "audio");
        video.connect(0, save, 0);
    """,
    "primitive_reroute_note": """
        const load = mk("LoadImage", [0, 0]);
        load.widgets.find(w => w.name === "image").value = "portrait.png";
        const rr = mk("Reroute", [300, 0]);
        const scale = mk("ImageScale", [450, 0]);
        scale.widgets.find(w => w.name === "upscale_method").value = "bicubic";
        const prev = mk("PreviewImage", [800, 0]);
        mk("Note", [0, 400]).widgets[0].value = "a note";
        mk("MarkdownNote", [300, 400]).widgets[0].value = "# markdown";
        load.connect(0, rr, 0);
        rr.connect(0, scale, 0);
        scale.connect(0, prev, 0);
        const prim = mk("PrimitiveNode", [0, 250]);
        prim.connect(0, scale, scale.inputs.findIndex(i => i.name === "width"));
        prim.widgets[0].value = 320;
        const seed = mk("PrimitiveInt", [0, 550]);
        seed.widgets[0].value = 240;
        seed.connect(0, scale, scale.inputs.findIndex(i => i.name === "height"));
    """,
    "bypass_and_mute": """
        const load = mk("LoadImage", [0, 0]);
        load.widgets.find(w => w.name === "image").value = "portrait.png";
        const by = mk("ImageScaleBy", [300, 0]);
        by.widgets.find(w => w.name === "scale_by").value = 2.0;
        const batch = mk("ImageBatch", [600, 0]);
        const muted = mk("EmptyImage", [300, 300]);
        const save = mk("SaveImage", [900, 0]);
        load.connect(0, by, 0);
        by.connect(0, batch, 0);
        muted.connect(0, batch, 1);
        batch.connect(0, save, 0);
        by.mode = 4;     // bypass: LoadImage's IMAGE passes through
        muted.mode = 2;  // mute: its link disappears
    """,
    "upscale_model": """
        const load = mk("LoadImage", [0, 0]);
        load.widgets.find(w => w.name === "image").value = "frame.png";
        const loader = mk("UpscaleModelLoader", [0, 350]);
        loader.widgets[0].value = "hallo2/realesrgan_x2.safetensors";
        const up = mk("ImageUpscaleWithModel", [350, 0]);
        const save = mk("SaveImage", [700, 0]);
        loader.connect(0, up, 0);
        load.connect(0, up, 1);
        up.connect(0, save, 0);
    """,
}

BUILD_JS = """(async () => {
  const LG = window.LiteGraph;
  app.graph.clear();
  const mk = (t, pos) => { const n = LG.createNode(t); if (!n) throw new Error("no node type " + t);
                           n.pos = pos; app.graph.add(n); return n; };
  %s
  await new Promise(r => setTimeout(r, 200));
  const ui = JSON.parse(JSON.stringify(app.graph.serialize()));
  const api = (await app.graphToPrompt()).output;
  return {ui, api};
})()"""


def capture(browser: harness.Chromium, server_url: str) -> dict:
    harness.open_ui(browser, server_url)
    return {name: browser.evaluate(BUILD_JS % body) for name, body in GRAPHS.items()}


def main() -> int:
    comfy = harness.comfyui_path()
    if comfy is None:
        raise SystemExit("set COMFYUI_PATH")
    with tempfile.TemporaryDirectory() as tmp, harness.ComfyServer.start(Path(tmp) / "run", pack_dir=None) as s, \
            harness.Chromium() as browser:
        graphs = capture(browser, s.url)
        stats = s.client.system_stats()["system"]
    data = {"comment": "UI/API pairs produced by ComfyUI's frontend; regenerate with "
                       "tests/comfyui/capture_frontend_graphs.py",
            "comfyui_commit": harness.comfyui_commit(comfy), "frontend_version": stats["required_frontend_version"],
            "graphs": graphs}
    OUT.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(graphs)} graphs to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
