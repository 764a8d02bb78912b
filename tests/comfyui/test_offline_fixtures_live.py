"""The data CI validates workflows with agrees with a live ComfyUI: the captured core node specs are current, and
tests/workflow_validation.py converts freshly built frontend graphs exactly as the frontend does.
Skipped without COMFYUI_PATH."""
from __future__ import annotations

import json
import sys

import capture_frontend_graphs
import extract_node_specs
import harness
import pytest

sys.path.insert(0, str(harness.REPO / "tests"))
import workflow_validation as wv  # noqa: E402


def test_core_node_fixture_matches_this_comfyui(comfy_core_server):
    fixture = json.loads(wv.CORE_SPECS_PATH.read_text())
    live = comfy_core_server.object_info()
    stale = [n for n, spec in fixture["nodes"].items()
             if n not in live or extract_node_specs.strip_file_choices(live[n]) != spec]
    assert not stale, (f"tests/fixtures/comfy_core_nodes.json differs from this ComfyUI for {stale}; if this ComfyUI "
                       "is the one to support, regenerate it with tests/comfyui/extract_node_specs.py")


@pytest.mark.parametrize("name", sorted(capture_frontend_graphs.GRAPHS))
def test_conversion_matches_the_live_frontend(comfy_core_server, chromium, name):
    harness.open_ui(chromium, comfy_core_server.url)
    pair = chromium.evaluate(capture_frontend_graphs.BUILD_JS % capture_frontend_graphs.GRAPHS[name])
    specs = comfy_core_server.object_info()
    assert wv.check_ui_api_pair(pair["ui"], pair["api"], specs) == []
