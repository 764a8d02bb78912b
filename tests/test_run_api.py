"""workflows/run_api.py without a ComfyUI: argument handling, --set parsing, output listing, the websocket client
(against a small in-process server) and progress following. The live runs are in tests/comfyui/."""
from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import socket
import struct
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("run_api_under_test", REPO / "workflows" / "run_api.py")
run_api = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = run_api
_spec.loader.exec_module(run_api)

WORKFLOW = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "portrait.png"}, "_meta": {"title": "Portrait"}},
    "2": {"class_type": "LoadAudio", "inputs": {"audio": "speech.wav"}},
    "3": {"class_type": "HalloDiTDenoise", "inputs": {"seed": 42, "cfg": 4.5, "prompt": "a person", "tiled": False,
                                                      "image": ["1", 0]}},
    "4": {"class_type": "SaveVideo", "inputs": {"video": ["3", 0], "filename_prefix": "hallo"}},
}


# ------------------------------------------------------------------------------------------------ --set / --upload


@pytest.mark.parametrize("text, expected", [
    ("3.seed=7", ("3", "seed", "7")),
    ("3.prompt=a=b", ("3", "prompt", "a=b")),
    ("12:5.text=", ("12:5", "text", "")),
    (" 3 . seed =7", ("3", "seed", "7")),
])
def test_parse_assignment(text, expected):
    assert run_api.parse_assignment(text) == expected


@pytest.mark.parametrize("text", ["3seed=1", "=1", "3.=1", ".seed=1", "3.seed"])
def test_parse_assignment_rejects(text):
    with pytest.raises(ValueError, match="NODE_ID.input=VALUE"):
        run_api.parse_assignment(text)


@pytest.mark.parametrize("raw, current, expected", [
    ("43", 42, 43), ("0.5", 4.5, 0.5), ("7", 4.5, 7.0), ("123", "a person", "123"), ("true", False, True),
    ("0", True, False), ("[\"1\", 0]", None, ["1", 0]), ("1.5", None, 1.5), ("hello", None, "hello"),
    ("null", None, None), (" spaced ", "x", " spaced "),
])
def test_values_keep_the_type_they_replace(raw, current, expected):
    got = run_api.coerce_value(raw, current)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("raw, current, message", [
    ("4.5", 42, "not an integer"), ("abc", 1.0, "not a number"), ("maybe", True, "not a boolean")])
def test_bad_values_are_refused(raw, current, message):
    with pytest.raises(ValueError, match=message):
        run_api.coerce_value(raw, current)


def test_set_input_names_the_known_nodes_when_the_id_is_wrong():
    p = json.loads(json.dumps(WORKFLOW))
    run_api.set_input(p, "3", "seed", "5")
    run_api.set_input(p, "3", "steps", "4")
    run_api.set_input(p, "1", "image", "007", literal=True)
    assert p["3"]["inputs"]["seed"] == 5 and p["3"]["inputs"]["steps"] == 4 and p["1"]["inputs"]["image"] == "007"
    with pytest.raises(ValueError, match=r"node '9' is not in the workflow \(ids: 1, 2, 3, 4\)"):
        run_api.set_input(p, "9", "seed", "1")
    with pytest.raises(ValueError, match="3.seed: 'x' is not an integer"):
        run_api.set_input(p, "3", "seed", "x")


def test_parse_uploads(tmp_path):
    odd = tmp_path / "a.b=c.wav"
    odd.write_bytes(b"")
    assert run_api.parse_uploads(["2.audio=speech.wav", "portrait.png", str(odd)]) == [
        ("2", "audio", "speech.wav"), (None, None, "portrait.png"), (None, None, str(odd))]


def test_load_api_workflow_refuses_the_ui_format(tmp_path):
    (tmp_path / "ui.json").write_text(json.dumps({"nodes": [], "links": []}))
    (tmp_path / "body.json").write_text(json.dumps({"prompt": WORKFLOW, "client_id": "x"}))
    with pytest.raises(ValueError, match="not an API-format workflow"):
        run_api.load_api_workflow(tmp_path / "ui.json")
    assert run_api.load_api_workflow(tmp_path / "body.json") == WORKFLOW


# ---------------------------------------------------------------------------------------------- main() before a server


@pytest.fixture
def workflow_file(tmp_path):
    path = tmp_path / "wf_api.json"
    path.write_text(json.dumps(WORKFLOW))
    return path


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("extra, message", [
    (["--set", "3.seed=abc"], "3.seed: 'abc' is not an integer"),
    (["--set", "7.seed=1"], "node '7' is not in the workflow"),
    (["--set", "seed=1"], "expected NODE_ID.input=VALUE"),
    (["--upload", "missing.wav"], "upload file not found: missing.wav"),
    (["--upload", "8.audio=missing.wav"], "upload file not found"),
])
def test_argument_errors_exit_2_before_contacting_the_server(workflow_file, capsys, extra, message):
    rc = run_api.main(["--server", f"http://127.0.0.1:{closed_port()}", "--workflow", str(workflow_file), *extra])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_unknown_upload_target_exits_2(workflow_file, tmp_path, capsys):
    f = tmp_path / "speech.wav"
    f.write_bytes(b"RIFF")
    rc = run_api.main(["--workflow", str(workflow_file), "--upload", f"8.audio={f}"])
    assert rc == 2 and "node '8' is not in the workflow" in capsys.readouterr().err


def test_unreachable_server_exits_1_with_the_address(workflow_file, capsys):
    port = closed_port()
    rc = run_api.main(["--server", f"127.0.0.1:{port}", "--workflow", str(workflow_file)])
    err = capsys.readouterr().err
    assert rc == 1 and f"cannot reach ComfyUI at http://127.0.0.1:{port}" in err


def test_ui_workflow_exits_2(tmp_path, capsys):
    (tmp_path / "ui.json").write_text(json.dumps({"nodes": [], "links": []}))
    assert run_api.main(["--workflow", str(tmp_path / "ui.json")]) == 2
    assert "Export (API)" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ outputs and errors

HISTORY = {"outputs": {
    "4": {"images": [{"filename": "hallo_00001_.mp4", "subfolder": "video", "type": "output"}], "animated": [True]},
    "7": {"images": [{"filename": "ComfyUI_temp_x.png", "subfolder": "", "type": "temp"}]},
    "8": {"audio": [{"filename": "a.flac", "subfolder": "audio", "type": "output"}]},
    "9": {"videos": [{"filename": "b.mp4", "subfolder": "../../etc", "type": "output"}],
          "gifs": [{"filename": "c.webp", "type": "output"}], "text": ["not a file"]},
}}


def test_output_files_lists_every_kind_of_output_and_skips_previews():
    files = run_api.ComfyClient.output_files(HISTORY)
    assert [(f["node"], f["key"], f["filename"]) for f in files] == [
        ("4", "images", "hallo_00001_.mp4"), ("8", "audio", "a.flac"), ("9", "videos", "b.mp4"),
        ("9", "gifs", "c.webp")]
    with_temp = run_api.ComfyClient.output_files(HISTORY, ("output", "temp"))
    assert "ComfyUI_temp_x.png" in [f["filename"] for f in with_temp]


def test_download_outputs_stays_inside_the_output_folder(tmp_path, monkeypatch):
    client = run_api.ComfyClient("http://127.0.0.1:1")
    monkeypatch.setattr(client, "view", lambda name, sub, kind: f"{sub}/{name}".encode())
    paths = client.download_outputs(HISTORY, tmp_path / "dl")
    rel = sorted(str(p.relative_to(tmp_path / "dl")) for p in paths)
    assert rel == ["audio/a.flac", "c.webp", "etc/b.mp4", "video/hallo_00001_.mp4"]  # '..' parts dropped
    assert (tmp_path / "dl" / "video" / "hallo_00001_.mp4").read_bytes() == b"video/hallo_00001_.mp4"


def test_prompt_errors_read_as_lines():
    body = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                      "details": ""},
            "node_errors": {"3": {"class_type": "HalloDiTDenoise", "errors": [
                {"type": "value_smaller_than_min", "message": "Value 0 smaller than min of 1", "details": "steps"}]}}}
    assert str(run_api.PromptRejected(400, body)) == (
        "Prompt outputs failed validation\n  node 3 (HalloDiTDenoise): Value 0 smaller than min of 1: steps")
    failed = run_api.ExecutionFailed("error", {"node_id": "3", "node_type": "HalloDiTDenoise",
                                               "exception_type": "hallo_core.errors.InputError",
                                               "exception_message": "no face found in the portrait\n"})
    assert str(failed) == ("node 3 (HalloDiTDenoise) failed: hallo_core.errors.InputError: "
                           "no face found in the portrait")


# ------------------------------------------------------------------------------------------------ websocket client

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def server_frame(opcode, payload, fin=True):
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([n])
    elif n < 1 << 16:
        head += bytes([126]) + struct.pack(">H", n)
    else:
        head += bytes([127]) + struct.pack(">Q", n)
    return head + payload


def read_client_frame(conn):
    def exact(n):
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            assert chunk, "client closed"
            buf += chunk
        return buf
    b0, b1 = exact(2)
    assert b1 & 0x80, "client frames must be masked"
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack(">H", exact(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", exact(8))[0]
    mask = exact(4)
    data = bytes(b ^ mask[i % 4] for i, b in enumerate(exact(n)))
    return b0 & 0x0F, data


def test_websocket_client_speaks_rfc6455():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    big = bytes(range(256)) * 300  # 76800 bytes: the 8-byte length form
    seen = {}

    def serve():
        conn, _ = srv.accept()
        with conn:
            req = b""
            while b"\r\n\r\n" not in req:
                req += conn.recv(4096)
            head = req.decode()
            seen["path"] = head.split(" ")[1]
            key = [ln.split(": ", 1)[1] for ln in head.split("\r\n") if ln.lower().startswith("sec-websocket-key")][0]
            accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
            # the first message arrives in the same packet as the handshake answer
            conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode()
                         + server_frame(1, b'{"type": "status", "data": {"sid": "abc"}}'))
            seen["client_text"] = read_client_frame(conn)
            conn.sendall(server_frame(1, b'{"type": "exe', fin=False) + server_frame(9, b"hi")
                         + server_frame(0, b'cuting", "data": {"node": "3"}}'))
            seen["pong"] = read_client_frame(conn)
            text = b"clip 2 of 5"
            conn.sendall(server_frame(2, struct.pack(">I", 3) + struct.pack(">I", 1) + b"3" + text))
            conn.sendall(server_frame(2, struct.pack(">I", 1) + big))
            conn.sendall(server_frame(8, struct.pack(">H", 1000)))
            seen["close"] = read_client_frame(conn)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    ws = run_api.WebSocket.connect(f"ws://127.0.0.1:{port}/ws?clientId=me", timeout=10)
    assert run_api.parse_ws_message(ws.recv(5)) == ("status", {"sid": "abc"})
    ws.send_text("x" * 300)  # a 2-byte length frame
    assert run_api.parse_ws_message(ws.recv(5)) == ("executing", {"node": "3"})
    assert run_api.parse_ws_message(ws.recv(5)) == ("progress_text", {"node": "3", "text": "clip 2 of 5"})
    assert run_api.parse_ws_message(ws.recv(5)) == ("preview", {"kind": 1, "bytes": len(big)})
    with pytest.raises(ConnectionError):
        ws.recv(5)
    ws.close()
    t.join(5)
    srv.close()
    assert seen["path"] == "/ws?clientId=me"
    assert seen["client_text"] == (1, b"x" * 300)
    assert seen["pong"] == (0xA, b"hi")
    assert seen["close"] == (8, struct.pack(">H", 1000))


def test_websocket_timeout_leaves_the_stream_intact():
    a, b = socket.socketpair()
    ws = run_api.WebSocket(a)
    with pytest.raises((socket.timeout, TimeoutError)):
        ws.recv(timeout=0.05)
    b.sendall(server_frame(1, b'{"type": "x", "data": {}}'))
    assert ws.recv(timeout=1) == '{"type": "x", "data": {}}'
    a.close()
    b.close()


# ------------------------------------------------------------------------------------------------ following a prompt


class FakeWS:
    def __init__(self, messages):
        self.messages = list(messages)

    def recv(self, timeout=None):
        if not self.messages:
            raise socket.timeout()
        return self.messages.pop(0)


def ev(kind, **data):
    return json.dumps({"type": kind, "data": data})


def test_follow_keeps_only_this_prompts_events():
    text = struct.pack(">I", 3) + struct.pack(">I", 1) + b"3" + b"clip 1 of 2"
    msgs = [ev("status", status={}), ev("executing", node="9", prompt_id="other"),
            struct.pack(">I", 3) + struct.pack(">I", 1) + b"9" + b"other prompt text",
            ev("execution_start", prompt_id="me"), ev("executing", node="3", prompt_id="me"),
            ev("progress", value=1, max=4, node="3", prompt_id="me"), text,
            ev("execution_success", prompt_id="me")]
    client = run_api.ComfyClient("http://127.0.0.1:1")
    seen = []
    result = client.follow(FakeWS(msgs), "me", timeout=5, on_event=lambda k, d: seen.append(k))
    assert result["status"] == "success"
    assert seen == ["execution_start", "executing", "progress", "progress_text", "execution_success"]


@pytest.mark.parametrize("terminal, status", [("execution_error", "error"), ("execution_interrupted", "interrupted")])
def test_follow_reports_failures(terminal, status):
    client = run_api.ComfyClient("http://127.0.0.1:1")
    data = {"prompt_id": "me", "node_id": "3", "node_type": "HalloDiTDenoise", "exception_message": "boom"}
    result = client.follow(FakeWS([json.dumps({"type": terminal, "data": data})]), "me", timeout=5)
    assert result["status"] == status and result["data"]["node_id"] == "3"


def test_follow_falls_back_to_history_and_times_out(monkeypatch):
    client = run_api.ComfyClient("http://127.0.0.1:1")
    entries = iter([None, {"status": {"status_str": "success", "completed": True, "messages": []}}])
    monkeypatch.setattr(client, "history", lambda pid: next(entries))
    assert client.follow(FakeWS([]), "me", timeout=5, poll_every=0.01)["status"] == "success"
    monkeypatch.setattr(client, "history", lambda pid: None)
    with pytest.raises(run_api.ExecutionTimeout, match="did not finish within 0.1 s"):
        client.follow(FakeWS([]), "me", timeout=0.1, poll_every=0.02)


def test_progress_printer_lines():
    out = io.StringIO()
    p = run_api.ProgressPrinter(WORKFLOW, stream=out)
    p("executing", {"node": "1"})
    p("executing", {"node": "3"})
    p("progress", {"node": "3", "value": 2, "max": 50})
    p("progress_text", {"node": "3", "text": "clip 1 of 4, 00:42 left"})
    p("execution_cached", {"nodes": ["2"]})
    p("progress_state", {"nodes": {}})
    assert out.getvalue().splitlines() == [
        "[1 LoadImage 'Portrait'] running", "[3 HalloDiTDenoise] running", "[3 HalloDiTDenoise] step 2/50",
        "[3 HalloDiTDenoise] clip 1 of 4, 00:42 left", "cached: 2"]
