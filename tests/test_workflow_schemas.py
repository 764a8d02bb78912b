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
    return "api/" + ui_key.split("/", 1)[1]


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
    assert name.startswith("api/") and "workflows/" + name.split("/", 1)[1] in FILES, \
        f"{name}: API workflows are workflows/api/<name>.json, twins of workflows/<name>.json"
