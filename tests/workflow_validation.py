"""Check shipped ComfyUI workflows without a ComfyUI: node types, inputs, links, and UI/API agreement.

Node specs are dicts in ComfyUI's /object_info format ({node_type: {"input": {"required", "optional"},
"input_order", "output", "output_node", ...}}): the core nodes come from tests/fixtures/comfy_core_nodes.json
(captured from a real server by tests/comfyui/extract_node_specs.py), ours from the pack's own /object_info.

Two workflow formats exist:
  API format  {"<id>": {"class_type", "inputs": {name: literal | ["<src id>", <output index>]}, "_meta"}}; what
              POST /prompt executes.
  UI format   the litegraph graph the frontend saves: {"nodes": [...], "links": [[id, from, from_slot, to, to_slot,
              type], ...], ...}; widget values are positional (`widgets_values`), UI-only nodes (Note,
              MarkdownNote, PrimitiveNode, Reroute) appear, muted (mode 2) and bypassed (mode 4) nodes stay.
`ui_to_api` turns the second into the first the way ComfyUI frontend 1.27's graphToPrompt does (bypassed nodes
pass a matching input through, PrimitiveNode values become literals, Reroutes are followed, muted nodes vanish),
so `compare_api_workflows` can check that a shipped UI/API pair describes the same graph. Written here because
no library does this offline (comfy-cli's converter needs a server's /object_info and is GPL).
Subgraphs (definitions.subgraphs) are not supported: a workflow using them is reported, not converted.

All check functions return a list of one-line problems; empty means valid.
"""
from __future__ import annotations

import json
from pathlib import Path

CORE_SPECS_PATH = Path(__file__).resolve().parent / "fixtures" / "comfy_core_nodes.json"
UI_ONLY_NODE_TYPES = frozenset({"Note", "MarkdownNote", "PrimitiveNode", "Reroute"})
# The canvas a shipped workflow opens fitted to: a 1600 x 1000 browser window less ComfyUI's side bar, menus and
# bottom panel (measured: 1536 x 779 in ComfyUI 0.3.64 with frontend 1.27).
VIEW_SIZE = (1500, 775)
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
CONTROL_MODES = frozenset({"fixed", "increment", "decrement", "randomize"})
UPLOAD_FLAGS = ("image_upload", "audio_upload", "video_upload", "animated_image_upload")
FILE_EXTENSIONS = frozenset({
    ".safetensors", ".sft", ".pt", ".pth", ".ckpt", ".bin", ".onnx", ".gguf", ".task", ".pkl",
    ".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".wav", ".mp3", ".flac", ".ogg", ".m4a", ".opus",
    ".mp4", ".webm", ".mov", ".mkv", ".avi", ".json", ".yaml",
})
MUTED, BYPASSED = 2, 4


class WorkflowError(ValueError):
    """The workflow cannot be read or converted at all."""


# ----------------------------------------------------------------------------------------------------------------
# loading


def _read(source) -> object:
    if isinstance(source, (dict, list)):
        return source
    try:
        return json.loads(Path(source).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise WorkflowError(f"{source}: cannot read JSON: {e}") from e


def load_ui_workflow(source) -> dict:
    """A UI-format workflow (path or dict); raises WorkflowError if it is not one."""
    data = _read(source)
    if not (isinstance(data, dict) and isinstance(data.get("nodes"), list) and isinstance(data.get("links", []), list)):
        raise WorkflowError(f"{source if not isinstance(source, dict) else 'workflow'}: not a UI-format workflow "
                            "(expected 'nodes' and 'links' lists)")
    return data


def load_api_workflow(source) -> dict:
    """An API-format workflow (path or dict; a saved /prompt body {"prompt": ...} is unwrapped)."""
    data = _read(source)
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]
    if not (isinstance(data, dict) and data and "nodes" not in data
            and all(isinstance(v, dict) and "class_type" in v for v in data.values())):
        raise WorkflowError(f"{source if not isinstance(source, dict) else 'workflow'}: not an API-format workflow "
                            "(expected {id: {class_type, inputs}})")
    return data


def load_core_specs(path=CORE_SPECS_PATH) -> dict:
    """Core node specs of the fixture, {node_type: spec}."""
    return json.loads(Path(path).read_text(encoding="utf-8"))["nodes"]


def merge_specs(core: dict, ours: dict) -> dict:
    """Core and our specs in one dict. Our ids must not collide with core ones (ComfyUI would ignore ours)."""
    clash = sorted(set(core) & set(ours))
    if clash:
        raise WorkflowError(f"node ids already used by ComfyUI core: {clash}")
    return {**core, **ours}


# ----------------------------------------------------------------------------------------------------------------
# input specs


class InputSpec:
    """One declared input: name, type ('COMBO' for combos), options dict, required, combo choices."""

    def __init__(self, name: str, raw, required: bool):
        self.name, self.required = name, required
        kind = raw[0] if isinstance(raw, (list, tuple)) and raw else raw
        self.options = raw[1] if isinstance(raw, (list, tuple)) and len(raw) > 1 and isinstance(raw[1], dict) else {}
        if isinstance(kind, list):  # V1 combo: [[choices], {opts}]
            self.type, self.choices = "COMBO", list(kind)
        else:
            self.type = str(kind)
            self.choices = list(self.options.get("options", [])) if self.type == "COMBO" else None

    @property
    def is_widget(self) -> bool:
        """Shown as a widget (its value lives in widgets_values), unless forced to be a socket."""
        return (self.type in WIDGET_TYPES and not self.options.get("forceInput")
                and not self.options.get("defaultInput"))

    @property
    def has_control(self) -> bool:
        """The frontend adds a 'control after generate' widget (an extra widgets_values entry) after it."""
        return self.is_widget and self.type in ("INT", "FLOAT", "COMBO") and (
            bool(self.options.get("control_after_generate")) or self.name in ("seed", "noise_seed"))

    @property
    def is_file_combo(self) -> bool:
        """A combo of file names (inputs, models): its choices depend on the installation, so any name is
        accepted. Upload combos, combos that declare their `model_folder`, combos that were empty when captured,
        and combos whose choices all look like file names count."""
        if self.type != "COMBO":
            return False
        if any(self.options.get(f) for f in UPLOAD_FLAGS) or self.options.get("model_folder") or not self.choices:
            return True
        return all(isinstance(c, str) and Path(c).suffix.lower() in FILE_EXTENSIONS for c in self.choices)

    def __repr__(self):
        return f"InputSpec({self.name!r}, {self.type!r}, required={self.required})"


def input_specs(spec: dict) -> dict[str, InputSpec]:
    """Declared inputs (required, then optional) in the server's order; hidden inputs excluded."""
    out = {}
    inputs = spec.get("input", {})
    order = spec.get("input_order", {})
    for group in ("required", "optional"):
        declared = inputs.get(group) or {}
        for name in order.get(group) or list(declared):
            if name in declared:
                out[name] = InputSpec(name, declared[name], group == "required")
    return out


def types_compatible(output_type, input_type) -> bool:
    """Whether an output of output_type may feed an input of input_type ('*' and 'A,B' unions allowed)."""
    if isinstance(input_type, list):  # V1 combo input: fed by a combo-typed output
        input_type = "COMBO"
    if isinstance(output_type, list):
        output_type = "COMBO"
    if not output_type or not input_type or output_type == input_type or "*" in (output_type, input_type):
        return True
    a = {t.strip().lower() for t in str(output_type).split(",")}
    b = {t.strip().lower() for t in str(input_type).split(",")}
    return bool(a & b)


def check_value(node_label: str, inp: InputSpec, value) -> list[str]:
    """Problems with a literal value for one input."""
    where = f"{node_label}: input '{inp.name}'"
    t = inp.type
    if isinstance(value, dict) and set(value) == {"__value__"}:  # multiselect / list values from the frontend
        value = value["__value__"]
    if t == "INT":
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            return [f"{where}: {value!r} is not an integer"]
    elif t == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return [f"{where}: {value!r} is not a number"]
    elif t == "BOOLEAN":
        if not isinstance(value, bool):
            return [f"{where}: {value!r} is not a boolean"]
    elif t == "STRING":
        if not isinstance(value, str):
            return [f"{where}: {value!r} is not a string"]
    elif t == "COMBO":
        values = value if isinstance(value, list) and inp.options.get("multiselect") else [value]
        for v in values:
            if not isinstance(v, str) and not (inp.choices and v in inp.choices):
                return [f"{where}: {v!r} is not a string"]
            if inp.is_file_combo:
                if isinstance(v, str) and "\\" in v:
                    return [f"{where}: {v!r} uses backslashes; write '/' so the workflow works on every OS"]
                if isinstance(v, str) and (v.startswith("/") or ".." in v.split("/") or (len(v) > 1 and v[1] == ":")):
                    return [f"{where}: {v!r} is not a plain relative file name"]
            elif v not in inp.choices:
                return [f"{where}: {v!r} is not one of {inp.choices}"]
        return []
    else:
        return [f"{where}: a literal cannot feed a {t} input (it needs a link)"]
    if t in ("INT", "FLOAT"):
        lo, hi = inp.options.get("min"), inp.options.get("max")
        if lo is not None and value < lo:
            return [f"{where}: {value} is below the minimum {lo}"]
        if hi is not None and value > hi:
            return [f"{where}: {value} is above the maximum {hi}"]
    return []


# ----------------------------------------------------------------------------------------------------------------
# API format


def validate_api_workflow(prompt: dict, specs: dict, *, require_output: bool = True,
                          ignore_inputs: frozenset = frozenset({"audioUI", "upload"})) -> list[str]:
    """Node types known, required inputs linked or set, literal values valid (file-name combos excepted: they
    depend on installed files, but must be plain relative names), links to existing outputs of matching type,
    no undeclared inputs (the frontend-only `ignore_inputs` excepted), no cycles, at least one output node."""
    problems = []
    for nid, node in prompt.items():
        kind = node.get("class_type")
        label = f"node {nid} ({kind})"
        if kind in UI_ONLY_NODE_TYPES:
            problems.append(f"{label}: UI-only node in an API workflow")
            continue
        spec = specs.get(kind)
        if spec is None:
            problems.append(f"{label}: unknown node type (neither ours nor ComfyUI core)")
            continue
        declared = input_specs(spec)
        given = node.get("inputs") or {}
        for name, value in given.items():
            inp = declared.get(name)
            if inp is None:
                if name not in ignore_inputs:
                    problems.append(f"{label}: '{name}' is not an input of {kind}")
                continue
            if _is_link(value):
                src_id, slot = str(value[0]), value[1]
                src = prompt.get(src_id)
                if src is None:
                    problems.append(f"{label}: input '{name}' links to missing node {src_id}")
                    continue
                src_spec = specs.get(src.get("class_type"))
                if src_spec is None:
                    continue  # reported on the source node
                outs = src_spec.get("output") or []
                if not 0 <= slot < len(outs):
                    problems.append(f"{label}: input '{name}' links to output {slot} of node {src_id}, "
                                    f"which has {len(outs)} outputs")
                elif not types_compatible(outs[slot], inp.type):
                    problems.append(f"{label}: input '{name}' ({inp.type}) is linked to a {outs[slot]} output "
                                    f"of node {src_id} ({src.get('class_type')})")
            else:
                problems += check_value(label, inp, value)
        for name, inp in declared.items():
            if inp.required and name not in given:
                problems.append(f"{label}: required input '{name}' is neither linked nor set")
    problems += _cycle_problems(prompt)
    if require_output and not any((specs.get(n.get("class_type")) or {}).get("output_node") for n in prompt.values()):
        problems.append("no output node (SaveVideo, SaveImage, PreviewImage, ...): ComfyUI would refuse to run it")
    return problems


def _is_link(value) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def _cycle_problems(prompt: dict) -> list[str]:
    state = {}

    def visit(nid, path):
        if state.get(nid) == 1:
            return path[path.index(nid):] + [nid]
        if state.get(nid) == 2 or nid not in prompt:
            return None
        state[nid] = 1
        for v in (prompt[nid].get("inputs") or {}).values():
            if _is_link(v):
                cyc = visit(str(v[0]), path + [nid])
                if cyc:
                    return cyc
        state[nid] = 2
        return None

    for nid in prompt:
        cyc = visit(nid, [])
        if cyc:
            return [f"cycle: {' -> '.join(cyc)}"]
    return []


# ----------------------------------------------------------------------------------------------------------------
# UI format


def _links_by_id(ui: dict) -> dict:
    links = {}
    for link in ui.get("links") or []:
        if isinstance(link, dict):  # newer serialisations
            link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                    link.get("type")]
        links[link[0]] = link
    return links


def widget_values(node: dict, spec: dict) -> tuple[dict, list[str]]:
    """{input name: value} for the node's widgets, and problems. The widget order is the order of the node's
    `inputs` entries that carry a `widget` (frontend >= 1.16 serialises every widget that way, including
    frontend-only ones such as 'upload'); a 'control after generate' value follows seeds and inputs with
    control_after_generate. Without widget entries the declared widget inputs are used, in spec order."""
    values = node.get("widgets_values")
    declared = input_specs(spec)
    label = f"node {node.get('id')} ({node.get('type')})"
    if isinstance(values, dict):
        return {k: v for k, v in values.items() if k in declared}, []
    values = list(values or [])
    names = [i["name"] for i in node.get("inputs") or [] if isinstance(i, dict) and i.get("widget")]
    if not names:
        names = [n for n, s in declared.items() if s.is_widget]
        for n, s in list(declared.items()):
            if s.is_widget and any(s.options.get(f) for f in UPLOAD_FLAGS):
                names.insert(names.index(n) + 1, "upload")
    out, i = {}, 0
    for name in names:
        if i >= len(values):
            break
        out[name] = values[i]
        i += 1
        inp = declared.get(name)
        if inp is not None and inp.has_control and i < len(values) and values[i] in CONTROL_MODES:
            i += 1
    needed = len(names) + sum(1 for n in names if n in declared and declared[n].has_control)
    problems = []
    if len(values) != needed:
        problems.append(f"{label}: widgets_values has {len(values)} values, its widgets "
                        f"({', '.join(names) or 'none'}, with control values) take {needed}")
    return {k: v for k, v in out.items() if k in declared}, problems


def ui_to_api(ui: dict, specs: dict) -> dict:
    """The API prompt for a UI-format workflow, as ComfyUI's frontend would queue it. Raises WorkflowError
    (listing every problem) when a node type is unknown, a link is dangling or widget values do not fit."""
    ui = load_ui_workflow(ui)
    if (ui.get("definitions") or {}).get("subgraphs"):
        raise WorkflowError("workflow uses subgraphs, which this converter does not support")
    nodes = {n["id"]: n for n in ui["nodes"]}
    links = _links_by_id(ui)
    problems, prompt = [], {}

    def resolve(link_id, want_type, seen=()):
        """('link', src_id, slot) | ('value', v) | None (nothing arrives: muted source, no bypass match)."""
        link = links.get(link_id)
        if link is None:
            raise WorkflowError(f"link {link_id} does not exist")
        if link_id in seen:
            raise WorkflowError(f"link {link_id} is part of a loop of reroutes/bypassed nodes")
        src = nodes.get(link[1])
        if src is None:
            raise WorkflowError(f"link {link_id} comes from missing node {link[1]}")
        slot, seen = link[2], seen + (link_id,)
        if src["type"] == "Reroute":
            inp = (src.get("inputs") or [{}])[0]
            return resolve(inp["link"], want_type, seen) if inp.get("link") is not None else None
        if src["type"] == "PrimitiveNode":
            vals = src.get("widgets_values") or []
            return ("value", vals[0]) if vals else None
        if src.get("mode") == MUTED:
            return None
        if src.get("mode") == BYPASSED:
            idx = _bypass_input(src, slot, want_type)
            if idx < 0 or src["inputs"][idx].get("link") is None:
                return None
            return resolve(src["inputs"][idx]["link"], want_type, seen)
        return ("link", str(src["id"]), slot)

    for node in ui["nodes"]:
        kind = node.get("type")
        if kind in UI_ONLY_NODE_TYPES or node.get("mode") in (MUTED, BYPASSED):
            continue
        label = f"node {node.get('id')} ({kind})"
        spec = specs.get(kind)
        if spec is None:
            problems.append(f"{label}: unknown node type (neither ours nor ComfyUI core)")
            continue
        declared = input_specs(spec)
        widget_vals, wp = widget_values(node, spec)
        problems += wp
        inputs = {name: ({"__value__": v} if isinstance(v, list) else v) for name, v in widget_vals.items()}
        for inp in node.get("inputs") or []:
            if inp.get("link") is None:
                continue
            try:
                got = resolve(inp["link"], inp.get("type"))
            except WorkflowError as e:
                problems.append(f"{label}: input '{inp.get('name')}': {e}")
                continue
            name = inp.get("name")
            if name not in declared:
                problems.append(f"{label}: linked input '{name}' is not an input of {kind}")
            elif got is None:
                pass  # nothing arrives (muted source): a widget keeps its own value, a socket stays unset
            elif got[0] == "value":
                inputs[name] = got[1]
            else:
                inputs[name] = [got[1], got[2]]
        prompt[str(node["id"])] = {"class_type": kind, "inputs": inputs,
                                   "_meta": {"title": node.get("title") or spec.get("display_name") or kind}}
    # like the frontend: drop links to nodes that are not in the prompt
    for node in prompt.values():
        for name, v in list(node["inputs"].items()):
            if _is_link(v) and v[0] not in prompt:
                del node["inputs"][name]
    if problems:
        raise WorkflowError("; ".join(problems))
    return prompt


def _bypass_input(node: dict, slot: int, want_type) -> int:
    """Which input of a bypassed node passes through to output `slot` (frontend's #getBypassSlotIndex)."""
    inputs = node.get("inputs") or []
    outputs = node.get("outputs") or []
    out_type = outputs[slot].get("type") if slot < len(outputs) else None
    if want_type in ("*", "", None):
        return slot if len(inputs) > slot else (0 if inputs else -1)
    if slot < len(inputs) and types_compatible(inputs[slot].get("type"), out_type) and types_compatible(
            inputs[slot].get("type"), want_type):
        return slot
    for i, inp in enumerate(inputs):
        if inp.get("type") == want_type:
            return i
    for i, inp in enumerate(inputs):
        if types_compatible(inp.get("type"), out_type) and types_compatible(inp.get("type"), want_type):
            return i
    return -1


def validate_ui_workflow(ui: dict, specs: dict, *, require_output: bool = True) -> list[str]:
    """Structure (links agree with the node slots they join, slot types match the specs), node types known or
    UI-only, then everything validate_api_workflow checks on the converted graph."""
    try:
        ui = load_ui_workflow(ui)
    except WorkflowError as e:
        return [str(e)]
    problems = []
    nodes = {n.get("id"): n for n in ui["nodes"]}
    if len(nodes) != len(ui["nodes"]):
        problems.append("duplicate node ids")
    for lid, (_, src_id, src_slot, dst_id, dst_slot, ltype) in _links_by_id(ui).items():
        src, dst = nodes.get(src_id), nodes.get(dst_id)
        if src is None or dst is None:
            problems.append(f"link {lid}: joins missing node {src_id if src is None else dst_id}")
            continue
        outs, ins = src.get("outputs") or [], dst.get("inputs") or []
        if src_slot >= len(outs) or dst_slot >= len(ins):
            problems.append(f"link {lid}: slot out of range ({src_id}:{src_slot} -> {dst_id}:{dst_slot})")
            continue
        if ins[dst_slot].get("link") != lid or lid not in (outs[src_slot].get("links") or []):
            problems.append(f"link {lid}: nodes {src_id} and {dst_id} do not list it on the slots it joins")
        src_spec, dst_spec = specs.get(src.get("type")), specs.get(dst.get("type"))
        if src_spec and src_slot < len(src_spec.get("output") or []):
            declared_out = src_spec["output"][src_slot]
            if not types_compatible(declared_out, outs[src_slot].get("type")):
                problems.append(f"link {lid}: node {src_id} ({src['type']}) output {src_slot} is {declared_out}, "
                                f"the workflow says {outs[src_slot].get('type')}")
        if dst_spec:
            inp = input_specs(dst_spec).get(ins[dst_slot].get("name"))
            if inp and not types_compatible(ltype, inp.type):
                problems.append(f"link {lid}: a {ltype} link feeds node {dst_id} ({dst['type']}) input "
                                f"'{inp.name}' of type {inp.type}")
    try:
        prompt = ui_to_api(ui, specs)
    except WorkflowError as e:
        return problems + str(e).split("; ")
    return problems + validate_api_workflow(prompt, specs, require_output=require_output)


# ----------------------------------------------------------------------------------------------------------------
# UI vs API


def compare_api_workflows(a: dict, b: dict, specs: dict | None = None, *, ignore_inputs=()) -> list[str]:
    """Differences between two API prompts (node ids, class types, links, literal values). Inputs a node spec
    does not declare (frontend extras such as 'audioUI') and `ignore_inputs` names are not compared; a list
    value and its {"__value__": list} form are equal."""
    problems = []
    for nid in sorted(set(a) | set(b), key=_id_key):
        if nid not in a or nid not in b:
            problems.append(f"node {nid}: only in the {'second' if nid not in a else 'first'} workflow")
            continue
        ka, kb = a[nid].get("class_type"), b[nid].get("class_type")
        if ka != kb:
            problems.append(f"node {nid}: {ka} vs {kb}")
            continue
        declared = set(input_specs(specs[ka])) if specs and ka in specs else None
        ia, ib = a[nid].get("inputs") or {}, b[nid].get("inputs") or {}
        for name in sorted(set(ia) | set(ib)):
            if name in ignore_inputs or (declared is not None and name not in declared):
                continue
            va, vb = _norm(ia.get(name, _MISSING)), _norm(ib.get(name, _MISSING))
            if va != vb:
                problems.append(f"node {nid} ({ka}) input '{name}': {_show(va)} vs {_show(vb)}")
    return problems


def check_ui_api_pair(ui: dict, api: dict, specs: dict, *, ignore_inputs=()) -> list[str]:
    """Whether a UI-format workflow and its API-format twin describe the same graph."""
    try:
        converted = ui_to_api(ui, specs)
    except WorkflowError as e:
        return [f"UI workflow: {p}" for p in str(e).split("; ")]
    return compare_api_workflows(converted, load_api_workflow(api), specs, ignore_inputs=ignore_inputs)


class _Missing:
    def __repr__(self):
        return "<missing>"


_MISSING = _Missing()


def _norm(v):
    if isinstance(v, dict) and set(v) == {"__value__"}:
        v = v["__value__"]
    if _is_link(v):
        return ("link", str(v[0]), v[1])
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _show(v):
    return f"link from node {v[1]} output {v[2]}" if isinstance(v, tuple) and v[:1] == ("link",) else repr(v)


def _id_key(s):
    s = str(s)
    return (0, int(s), "") if s.isdigit() else (1, 0, s)
