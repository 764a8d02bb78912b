"""Capture node specs from a real ComfyUI's /object_info so CI can validate workflows without one
(tests/workflow_validation.py):

    COMFYUI_PATH=/path/to/ComfyUI python tests/comfyui/extract_node_specs.py          # core nodes
    COMFYUI_PATH=/path/to/ComfyUI python tests/comfyui/extract_node_specs.py --ours   # our pack's nodes

The first writes tests/fixtures/comfy_core_nodes.json (the core nodes our workflows may use, --nodes to change
the list), the second tests/fixtures/hallo_node_specs.json (every node the pack registers). Without --server a
ComfyUI is started in a temporary directory (with the pack for --ours). File-name combos (uploads, model lists)
are emptied: their choices depend on the installation, and the validator accepts any plain relative name there.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import harness  # noqa: E402
import workflow_validation as wv  # noqa: E402

OUT = HERE.parent / "fixtures" / "comfy_core_nodes.json"
OUT_OURS = HERE.parent / "fixtures" / "hallo_node_specs.json"
NODES = (
    # the shipped workflows' core nodes
    "LoadImage", "LoadAudio", "CreateVideo", "SaveVideo", "PreviewImage", "SaveImage", "ImageScale",
    "UpscaleModelLoader", "ImageUpscaleWithModel",
    # likely companions (video in/out, audio preview, batching, typed primitives)
    "ImageScaleBy", "LoadVideo", "GetVideoComponents", "PreviewAudio", "SaveAudio", "EmptyImage", "ImageBatch",
    "PrimitiveInt", "PrimitiveFloat", "PrimitiveString", "PrimitiveStringMultiline", "PrimitiveBoolean",
)


def strip_file_choices(spec: dict) -> dict:
    spec = json.loads(json.dumps(spec))
    for group in ("required", "optional"):
        for name, raw in (spec.get("input", {}).get(group) or {}).items():
            inp = wv.InputSpec(name, raw, group == "required")
            if inp.type == "COMBO" and inp.is_file_combo:
                if isinstance(raw[0], list):
                    raw[0] = []
                else:
                    raw[1]["options"] = []
    return spec


def pack_nodes(info: dict) -> list[str]:
    """Nodes registered by custom-node packs (python_module 'custom_nodes.<folder>'); here only ours is loaded."""
    return sorted(n for n, spec in info.items() if str(spec.get("python_module", "")).startswith("custom_nodes."))


def extract(info: dict, nodes, commit: str, stats: dict, what: str = "ComfyUI core") -> dict:
    missing = [n for n in nodes if n not in info]
    if missing:
        raise SystemExit(f"not in this ComfyUI's /object_info: {missing}")
    if not nodes:
        raise SystemExit("no nodes to capture (is the pack's __init__.py importable? see the server log)")
    return {
        "comment": f"{what} node specs (/object_info) for validating workflows offline; regenerate with "
                   "tests/comfyui/extract_node_specs.py. File-name combo choices are emptied on purpose.",
        "comfyui_commit": commit,
        "comfyui_version": stats["system"].get("comfyui_version"),
        "frontend_version": stats["system"].get("required_frontend_version"),
        "ui_only_nodes": sorted(wv.UI_ONLY_NODE_TYPES),
        "nodes": {n: strip_file_choices(info[n]) for n in sorted(nodes)},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", help="use a running ComfyUI instead of starting one (its commit is then taken "
                                     "from COMFYUI_PATH when set)")
    ap.add_argument("--nodes", nargs="+", default=list(NODES))
    ap.add_argument("--ours", action="store_true", help="capture the pack's nodes instead of core ones")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    out = args.out or (OUT_OURS if args.ours else OUT)
    comfy = harness.comfyui_path()
    commit = harness.comfyui_commit(comfy) if comfy else "unknown"

    def build(info, stats):
        if args.ours:
            return extract(info, pack_nodes(info), commit, stats, "Hallo pack")
        return extract(info, args.nodes, commit, stats)

    if args.server:
        client = harness.ComfyClient(args.server)
        data = build(client.object_info(), client.system_stats())
    else:
        if comfy is None:
            raise SystemExit("set COMFYUI_PATH (or pass --server)")
        with tempfile.TemporaryDirectory() as tmp, harness.ComfyServer.start(
                Path(tmp) / "run", pack_dir=harness.REPO if args.ours else None) as s:
            data = build(s.object_info(), s.client.system_stats())
    args.out = out
    args.out.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    print(f"wrote {len(data['nodes'])} node specs of ComfyUI {data['comfyui_version']} ({commit[:12]}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
