"""Every shipped workflow references only our nodes and ComfyUI core nodes, with valid inputs, and each UI-format
workflow `workflows/X.json` and its API-format twin `workflows/api/X.json` describe the same graph (the API files
live in a sub-folder so that ComfyUI's template browser lists only the UI workflows). Runs without ComfyUI (CI): the
node specs come from tests/fixtures/comfy_core_nodes.json and tests/fixtures/hallo_node_specs.json (capture both
with tests/comfyui/extract_node_specs.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import workflow_validation as wv

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_DIRS = (REPO / "workflows", REPO / "workflows" / "api")
OUR_SPECS = Path(__file__).resolve().parent / "fixtures" / "hallo_node_specs.json"


def _files():
    files = {}
    for d in WORKFLOW_DIRS:
        for f in sorted(d.glob("*.json")) if d.is_dir() else []:
            data = json.loads(f.read_text(encoding="utf-8"))
            files[f"{d.name}/{f.name}"] = (f, "ui" if isinstance(data, dict) and "nodes" in data else "api")
    return files


FILES = _files()
UI = sorted(k for k, (_, kind) in FILES.items() if kind == "ui")
API = sorted(k for k, (_, kind) in FILES.items() if kind == "api")


@pytest.fixture(scope="module")
def specs():
    if not OUR_SPECS.is_file():
        pytest.skip(f"{OUR_SPECS.name} missing: capture our node specs with "
                    "`COMFYUI_PATH=... python tests/comfyui/extract_node_specs.py --ours`")
    ours = json.loads(OUR_SPECS.read_text(encoding="utf-8"))["nodes"]
    return wv.merge_specs(wv.load_core_specs(), ours)


def _twin(ui_key: str) -> str:
    """The API twin a UI workflow names (`extra.hallo_api`; the UI files carry readable titles as names)."""
    return json.loads(FILES[ui_key][0].read_text(encoding="utf-8"))["extra"]["hallo_api"]


@pytest.mark.parametrize("name", UI)
def test_ui_workflow_is_valid(specs, name):
    assert wv.validate_ui_workflow(wv.load_ui_workflow(FILES[name][0]), specs) == []


@pytest.mark.parametrize("name", API)
def test_api_workflow_is_valid(specs, name):
    assert wv.validate_api_workflow(wv.load_api_workflow(FILES[name][0]), specs) == []


@pytest.mark.parametrize("name", UI)
def test_ui_workflow_has_an_api_twin_describing_the_same_graph(specs, name):
    twin = _twin(name)
    assert twin in FILES, f"{name} has no API-format twin {twin}"
    ui, api = wv.load_ui_workflow(FILES[name][0]), wv.load_api_workflow(FILES[twin][0])
    assert wv.check_ui_api_pair(ui, api, specs) == []


@pytest.mark.parametrize("name", API)
def test_api_workflow_has_a_ui_twin(name):
    assert name.startswith("api/") and name in {_twin(ui) for ui in UI}, \
        f"{name}: every API workflow (workflows/api/<name>.json) has a UI twin in workflows/ naming it"


@pytest.mark.parametrize("name", UI)
def test_ui_workflow_opens_on_the_whole_graph_with_a_thumbnail(name):
    """Groups with a note each, the view fitted to the graph, and a thumbnail for the template browser."""
    ui = json.loads(FILES[name][0].read_text(encoding="utf-8"))
    assert len(ui["groups"]) >= 4 and sum(n["type"] == "Note" for n in ui["nodes"]) == len(ui["groups"])
    scale, (dx, dy) = ui["extra"]["ds"]["scale"], ui["extra"]["ds"]["offset"]
    assert 0.6 <= scale <= 1.0  # below about 0.57 ComfyUI draws nodes without their text
    width, height = wv.VIEW_SIZE
    for group in ui["groups"]:  # every group inside the view it opens in
        x, y, w, h = group["bounding"]
        assert 0 <= (x + dx) * scale and (x + w + dx) * scale <= width and 0 <= (y + dy) * scale <= (y + h + dy) * \
            scale <= height, group["title"]
    assert FILES[name][0].with_suffix(".jpg").is_file()
