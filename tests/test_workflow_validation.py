"""tests/workflow_validation.py on synthetic workflows and on UI/API pairs recorded from ComfyUI's frontend."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import workflow_validation as wv

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CORE = wv.load_core_specs()
FRONTEND = json.loads((FIXTURES / "comfy_frontend_graphs.json").read_text())

# A node of ours as /object_info would describe it (V3 schema): custom types, a seed with control_after_generate,
# a V3 combo, an optional socket, a forced socket.
OURS = {
    "HalloDiTDenoise": {
        "input": {
            "required": {
                "model": ["HALLO_MODEL", {}],
                "image": ["IMAGE", {}],
                "seed": ["INT", {"default": 42, "min": 0, "max": 2 ** 64 - 1, "control_after_generate": True}],
                "steps": ["INT", {"default": 50, "min": 1, "max": 200}],
                "cfg": ["FLOAT", {"default": 4.5, "min": 0.0, "max": 20.0}],
                "sampler": ["COMBO", {"options": ["sat_ddim", "ddim"], "default": "sat_ddim"}],
                "prompt": ["STRING", {"multiline": True, "default": ""}],
            },
            "optional": {
                "motion": ["HALLO_MOTION", {}],
                "start_seconds": ["FLOAT", {"default": 0.0, "min": 0.0, "forceInput": True}],
            },
        },
        "input_order": {"required": ["model", "image", "seed", "steps", "cfg", "sampler", "prompt"],
                        "optional": ["motion", "start_seconds"]},
        "output": ["IMAGE", "AUDIO"], "output_name": ["frames", "audio"], "output_node": False,
        "python_module": "custom_nodes.hallo-nodes",
    },
    "LoadHalloModel": {
        "input": {"required": {"transformer": ["COMBO", {"options": ["hallo3/tiny.safetensors"]}],
                               "dtype": ["COMBO", {"options": ["bf16", "fp8_e4m3fn"]}]}},
        "input_order": {"required": ["transformer", "dtype"]},
        "output": ["HALLO_MODEL"], "output_node": False, "python_module": "custom_nodes.hallo-nodes",
    },
}
SPECS = wv.merge_specs(CORE, OURS)


def api_graph():
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "portrait.png"}},
        "2": {"class_type": "LoadHalloModel", "inputs": {"transformer": "hallo3/tiny.safetensors", "dtype": "bf16"}},
        "3": {"class_type": "HalloDiTDenoise",
              "inputs": {"model": ["2", 0], "image": ["1", 0], "seed": 42, "steps": 4, "cfg": 4.5,
                         "sampler": "sat_ddim", "prompt": "a person talking"}},
        "4": {"class_type": "LoadAudio", "inputs": {"audio": "speech.wav"}},
        "5": {"class_type": "CreateVideo", "inputs": {"images": ["3", 0], "fps": 25.0, "audio": ["3", 1]}},
        "6": {"class_type": "SaveVideo",
              "inputs": {"video": ["5", 0], "filename_prefix": "hallo", "format": "auto", "codec": "auto"}},
    }


def ui_node(nid, kind, inputs=(), outputs=(), widgets=None, mode=0, **extra):
    node = {"id": nid, "type": kind, "pos": [0, 0], "size": [200, 100], "flags": {}, "order": nid, "mode": mode,
            "inputs": [dict(i) for i in inputs], "outputs": [dict(o) for o in outputs], "properties": {}}
    if widgets is not None:
        node["widgets_values"] = widgets
    node.update(extra)
    return node


def ui_graph():
    """The UI twin of api_graph(), written like the frontend writes it."""
    w = lambda name, t: {"name": name, "type": t, "widget": {"name": name}, "link": None}  # noqa: E731
    nodes = [
        ui_node(1, "LoadImage", [w("image", "COMBO"), w("upload", "IMAGEUPLOAD")],
                [{"name": "IMAGE", "type": "IMAGE", "links": [2]}, {"name": "MASK", "type": "MASK", "links": None}],
                ["portrait.png", "image"]),
        ui_node(2, "LoadHalloModel", [w("transformer", "COMBO"), w("dtype", "COMBO")],
                [{"name": "HALLO_MODEL", "type": "HALLO_MODEL", "links": [1]}], ["hallo3/tiny.safetensors", "bf16"]),
        ui_node(3, "HalloDiTDenoise",
                [{"name": "model", "type": "HALLO_MODEL", "link": 1}, {"name": "image", "type": "IMAGE", "link": 2},
                 {"name": "motion", "type": "HALLO_MOTION", "link": None},
                 {"name": "start_seconds", "type": "FLOAT", "link": None},
                 w("seed", "INT"), w("steps", "INT"), w("cfg", "FLOAT"), w("sampler", "COMBO"), w("prompt", "STRING")],
                [{"name": "frames", "type": "IMAGE", "links": [3]}, {"name": "audio", "type": "AUDIO", "links": [4]}],
                [42, "randomize", 4, 4.5, "sat_ddim", "a person talking"]),
        ui_node(4, "LoadAudio", [w("audio", "COMBO"), w("audioUI", "AUDIO_UI"), w("upload", "AUDIOUPLOAD")],
                [{"name": "AUDIO", "type": "AUDIO", "links": []}], ["speech.wav", None, ""]),
        ui_node(5, "CreateVideo",
                [{"name": "images", "type": "IMAGE", "link": 3}, {"name": "audio", "type": "AUDIO", "link": 4},
                 w("fps", "FLOAT")], [{"name": "VIDEO", "type": "VIDEO", "links": [5]}], [25]),
        ui_node(6, "SaveVideo",
                [{"name": "video", "type": "VIDEO", "link": 5}, w("filename_prefix", "STRING"), w("format", "COMBO"),
                 w("codec", "COMBO")], [], ["hallo", "auto", "auto"]),
        ui_node(7, "MarkdownNote", [], [], ["# How to use"]),
    ]
    links = [[1, 2, 0, 3, 0, "HALLO_MODEL"], [2, 1, 0, 3, 1, "IMAGE"], [3, 3, 0, 5, 0, "IMAGE"],
             [4, 3, 1, 5, 1, "AUDIO"], [5, 5, 0, 6, 0, "VIDEO"]]
    return {"last_node_id": 7, "last_link_id": 5, "nodes": nodes, "links": links, "groups": [], "config": {},
            "extra": {}, "version": 0.4}


def problems_with(graph_change, **kw):
    g = api_graph()
    graph_change(g)
    return wv.validate_api_workflow(g, SPECS, **kw)


# ------------------------------------------------------------------------------------------------ fixtures / loading


def test_core_fixture_records_the_comfyui_it_came_from():
    data = json.loads(wv.CORE_SPECS_PATH.read_text())
    assert len(data["comfyui_commit"]) == 40 and data["comfyui_version"]
    for n in ("LoadImage", "LoadAudio", "CreateVideo", "SaveVideo", "PreviewImage", "SaveImage", "ImageScale",
              "UpscaleModelLoader", "ImageUpscaleWithModel"):
        assert n in CORE
    assert set(data["ui_only_nodes"]) == wv.UI_ONLY_NODE_TYPES
    # installation-dependent choices are not baked into the fixture
    assert CORE["LoadImage"]["input"]["required"]["image"][0] == []
    assert CORE["UpscaleModelLoader"]["input"]["required"]["model_name"][1]["options"] == []


def test_loaders_tell_the_formats_apart(tmp_path):
    (tmp_path / "ui.json").write_text(json.dumps(ui_graph()))
    (tmp_path / "api.json").write_text(json.dumps({"prompt": api_graph()}))
    assert wv.load_ui_workflow(tmp_path / "ui.json")["nodes"]
    assert wv.load_api_workflow(tmp_path / "api.json") == api_graph()
    with pytest.raises(wv.WorkflowError, match="not an API-format"):
        wv.load_api_workflow(tmp_path / "ui.json")
    with pytest.raises(wv.WorkflowError, match="not a UI-format"):
        wv.load_ui_workflow(tmp_path / "api.json")


def test_our_node_ids_may_not_shadow_core_ones():
    with pytest.raises(wv.WorkflowError, match="SaveVideo"):
        wv.merge_specs(CORE, {"SaveVideo": OURS["LoadHalloModel"]})


# ------------------------------------------------------------------------------------------------ API checks


def test_a_valid_api_workflow_passes():
    assert wv.validate_api_workflow(api_graph(), SPECS) == []


@pytest.mark.parametrize("change, expected", [
    (lambda g: g["3"].update(class_type="HalloDenoise"), "node 3 (HalloDenoise): unknown node type"),
    (lambda g: g["3"]["inputs"].pop("steps"), "node 3 (HalloDiTDenoise): required input 'steps' is neither"),
    (lambda g: g["3"]["inputs"].update(steps=0), "input 'steps': 0 is below the minimum 1"),
    (lambda g: g["3"]["inputs"].update(steps=4.5), "input 'steps': 4.5 is not an integer"),
    (lambda g: g["3"]["inputs"].update(steps=True), "input 'steps': True is not an integer"),
    (lambda g: g["3"]["inputs"].update(cfg="4.5"), "input 'cfg': '4.5' is not a number"),
    (lambda g: g["3"]["inputs"].update(cfg=25.0), "input 'cfg': 25.0 is above the maximum 20.0"),
    (lambda g: g["3"]["inputs"].update(prompt=7), "input 'prompt': 7 is not a string"),
    (lambda g: g["3"]["inputs"].update(sampler="euler"), "input 'sampler': 'euler' is not one of"),
    (lambda g: g["2"]["inputs"].update(dtype="fp16"), "input 'dtype': 'fp16' is not one of"),
    (lambda g: g["3"]["inputs"].update(model=["1", 0]), "input 'model' (HALLO_MODEL) is linked to a IMAGE output"),
    (lambda g: g["3"]["inputs"].update(image=["9", 0]), "input 'image' links to missing node 9"),
    (lambda g: g["5"]["inputs"].update(audio=["3", 2]), "links to output 2 of node 3, which has 2 outputs"),
    (lambda g: g["3"]["inputs"].update(motion=5), "a literal cannot feed a HALLO_MOTION input"),
    (lambda g: g["3"]["inputs"].update(guidance=2), "'guidance' is not an input of HalloDiTDenoise"),
    (lambda g: g["1"]["inputs"].update(image="../../etc/passwd"), "is not a plain relative file name"),
    (lambda g: g["1"]["inputs"].update(image="/etc/passwd"), "is not a plain relative file name"),
    (lambda g: g["4"]["inputs"].update(audio="C:/speech.wav"), "is not a plain relative file name"),
    (lambda g: g["2"]["inputs"].update(transformer="hallo3\\tiny.safetensors"), "uses backslashes"),
    (lambda g: g.pop("6"), "no output node"),
    (lambda g: g["2"].update(class_type="Note"), "node 2 (Note): UI-only node in an API workflow"),
])
def test_api_problems_are_reported_with_node_and_input(change, expected):
    problems = problems_with(change)
    assert any(expected in p for p in problems), problems


def test_file_combos_accept_any_installed_name_but_fixed_combos_do_not():
    # model/input lists depend on the installation: any plain relative name passes
    assert problems_with(lambda g: g["1"]["inputs"].update(image="sub/other portrait.webp")) == []
    assert problems_with(lambda g: g["2"]["inputs"].update(transformer="hallo3/other.safetensors")) == []
    assert problems_with(lambda g: g["3"]["inputs"].update(sampler="ddim")) == []


def test_ints_may_feed_floats_and_the_frontend_extras_are_ignored():
    assert problems_with(lambda g: g["5"]["inputs"].update(fps=25)) == []
    assert problems_with(lambda g: g["4"]["inputs"].update(audioUI="")) == []


def test_cycles_are_found():
    g = api_graph()
    g["7"] = {"class_type": "ImageBatch", "inputs": {"image1": ["8", 0], "image2": ["1", 0]}}
    g["8"] = {"class_type": "ImageScaleBy", "inputs": {"image": ["7", 0], "upscale_method": "bicubic",
                                                         "scale_by": 1.0}}
    assert [p for p in wv.validate_api_workflow(g, SPECS) if p.startswith("cycle")] == ["cycle: 7 -> 8 -> 7"]


@pytest.mark.parametrize("out_type, in_type, ok", [
    ("IMAGE", "IMAGE", True), ("IMAGE", "MASK", False), ("*", "VIDEO", True), ("IMAGE", "*", True),
    ("INT,FLOAT", "FLOAT", True), ("STRING", "INT,FLOAT", False), ("COMBO", ["a", "b"], True),
])
def test_types_compatible(out_type, in_type, ok):
    assert wv.types_compatible(out_type, in_type) is ok


# ------------------------------------------------------------------------------------------------ UI checks


def test_a_valid_ui_workflow_converts_to_its_api_twin():
    assert wv.validate_ui_workflow(ui_graph(), SPECS) == []
    api = wv.ui_to_api(ui_graph(), SPECS)
    assert "7" not in api  # the note is UI-only
    assert api["3"]["inputs"] == api_graph()["3"]["inputs"]  # seed's control value was skipped
    assert api["3"]["_meta"] == {"title": "HalloDiTDenoise"}
    assert wv.check_ui_api_pair(ui_graph(), api_graph(), SPECS) == []


def test_ui_problems_are_reported():
    g = ui_graph()
    g["nodes"][2]["widgets_values"] = [42, 4, 4.5, "sat_ddim", "x"]  # control value lost: everything shifts
    problems = wv.validate_ui_workflow(g, SPECS)
    assert any("node 3 (HalloDiTDenoise): widgets_values has 5 values" in p and "take 6" in p for p in problems)

    g = ui_graph()
    g["links"][0][5] = "IMAGE"  # a link typed IMAGE into the HALLO_MODEL input
    assert any("link 1: a IMAGE link feeds node 3 (HalloDiTDenoise) input 'model'" in p
               for p in wv.validate_ui_workflow(g, SPECS))

    g = ui_graph()
    g["nodes"][5]["inputs"][0]["link"] = None  # SaveVideo no longer lists link 5
    problems = wv.validate_ui_workflow(g, SPECS)
    assert any("link 5: nodes 5 and 6 do not list it" in p for p in problems)
    assert any("node 6 (SaveVideo): required input 'video' is neither linked nor set" in p for p in problems)

    g = ui_graph()
    g["nodes"][1]["type"] = "LoadHalloModelV2"
    assert any("node 2 (LoadHalloModelV2): unknown node type" in p for p in wv.validate_ui_workflow(g, SPECS))

    g = ui_graph()
    g["definitions"] = {"subgraphs": [{"id": "x"}]}
    assert any("subgraphs" in p for p in wv.validate_ui_workflow(g, SPECS))


def test_ui_and_api_differences_are_named():
    api = api_graph()
    api["3"]["inputs"]["steps"] = 8
    api["5"]["inputs"]["audio"] = ["4", 0]
    del api["1"]
    assert wv.check_ui_api_pair(ui_graph(), api, SPECS) == [
        "node 1: only in the first workflow",
        "node 3 (HalloDiTDenoise) input 'steps': 4 vs 8",
        "node 5 (CreateVideo) input 'audio': link from node 3 output 1 vs link from node 4 output 0",
    ]
    assert wv.check_ui_api_pair(ui_graph(), api, SPECS, ignore_inputs={"steps", "audio"}) == [
        "node 1: only in the first workflow"]


def test_bypassed_nodes_pass_through_and_muted_nodes_vanish():
    g = ui_graph()
    # bypass the denoiser: CreateVideo.images gets the IMAGE input of node 3 (LoadImage's), audio finds no AUDIO
    # input on node 3 and disappears
    g["nodes"][2]["mode"] = wv.BYPASSED
    api = wv.ui_to_api(g, SPECS)
    assert "3" not in api and api["5"]["inputs"]["images"] == ["1", 0] and "audio" not in api["5"]["inputs"]
    g["nodes"][0]["mode"] = wv.MUTED  # mute LoadImage too: nothing reaches CreateVideo.images
    api = wv.ui_to_api(g, SPECS)
    assert "1" not in api and "images" not in api["5"]["inputs"]


# ------------------------------------------------------------------------------------------------ real frontend


@pytest.mark.parametrize("name", sorted(FRONTEND["graphs"]))
def test_conversion_matches_comfyui_frontend(name):
    """UI/API pairs recorded from ComfyUI's frontend (tests/comfyui/capture_frontend_graphs.py): our conversion of
    the saved UI graph equals what the frontend queued, and both validate."""
    pair = FRONTEND["graphs"][name]
    assert wv.check_ui_api_pair(pair["ui"], pair["api"], CORE) == []
    # muting the EmptyImage leaves ImageBatch without its second image: ComfyUI would refuse that prompt too
    expected = ["node 3 (ImageBatch): required input 'image2' is neither linked nor set"] \
        if name == "bypass_and_mute" else []
    assert wv.validate_ui_workflow(pair["ui"], CORE) == expected
    assert wv.validate_api_workflow(pair["api"], CORE) == expected


def test_frontend_pairs_cover_the_tricky_cases():
    graphs = FRONTEND["graphs"]
    ui = graphs["primitive_reroute_note"]["ui"]
    kinds = {n["type"] for n in ui["nodes"]}
    assert {"Reroute", "PrimitiveNode", "Note", "MarkdownNote", "PrimitiveInt"} <= kinds
    api = graphs["primitive_reroute_note"]["api"]
    assert api["3"]["inputs"]["width"] == 320 and api["3"]["inputs"]["height"] == ["8", 0]
    modes = {n["type"]: n["mode"] for n in graphs["bypass_and_mute"]["ui"]["nodes"]}
    assert modes["ImageScaleBy"] == wv.BYPASSED and modes["EmptyImage"] == wv.MUTED
    assert graphs["bypass_and_mute"]["api"]["3"]["inputs"] == {"image1": ["1", 0]}


def test_a_wrong_pair_from_the_frontend_is_caught():
    pair = copy.deepcopy(FRONTEND["graphs"]["video_with_audio"])
    pair["api"]["1"]["inputs"]["batch_size"] = 24
    assert wv.check_ui_api_pair(pair["ui"], pair["api"], CORE) == [
        "node 1 (EmptyImage) input 'batch_size': 25 vs 24"]
