"""workflows/run_api.py without a ComfyUI: argument handling, --set parsing, output listing, the websocket client
(against a small in-process server) and progress following. The live runs are in tests/comfyui/."""
from __future__ import annotations

import ast
import base64
import hashlib
import http.server
import importlib.util
import io
import itertools
import json
import re
import socket
import struct
import sys
import threading
import time
import urllib.parse
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
    ("null", None, None), (" spaced ", "x", " spaced "), ("7.0", 42, 7), ("1e3", 42, 1000), ("On", False, True),
    ("no", True, False), ("[\"4\", 1]", ["3", 0], ["4", 1]),
])
def test_values_keep_the_type_they_replace(raw, current, expected):
    got = run_api.coerce_value(raw, current)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("raw, current, message", [
    ("4.5", 42, "not an integer"), ("abc", 1.0, "not a number"), ("maybe", True, "not a boolean"),
    ("", 3, "not an integer"), ("nan", 1.0, "not a finite number"), ("inf", 3, "not an integer")])
def test_bad_values_are_refused(raw, current, message):
    with pytest.raises(ValueError, match=message):
        run_api.coerce_value(raw, current)


def test_set_input_names_the_known_nodes_and_inputs_when_one_is_wrong():
    p = json.loads(json.dumps(WORKFLOW))
    run_api.set_input(p, "3", "seed", "5")
    run_api.set_input(p, "3", "cfg", "4")
    run_api.set_input(p, "3", "tiled", "on")
    run_api.set_input(p, "1", "image", "007", literal=True)
    assert p["3"]["inputs"] == {"seed": 5, "cfg": 4.0, "prompt": "a person", "tiled": True, "image": ["1", 0]}
    assert p["1"]["inputs"]["image"] == "007"
    with pytest.raises(ValueError, match=r"^node '9' is not in the workflow; its node ids: 1 \(LoadImage\), "
                                         r"2 \(LoadAudio\), 3 \(HalloDiTDenoise\), 4 \(SaveVideo\)$"):
        run_api.set_input(p, "9", "seed", "1")
    with pytest.raises(ValueError, match=r"^node 3 \(HalloDiTDenoise\) has no input 'steps'; "
                                         r"its inputs: seed, cfg, prompt, tiled, image$"):
        run_api.set_input(p, "3", "steps", "4")  # absent from the workflow: refused, not added
    with pytest.raises(ValueError, match=r"has no input 'sed' \(did you mean 'seed'\?\)"):
        run_api.set_input(p, "3", "sed", "4")
    with pytest.raises(ValueError, match="3.seed: 'x' is not an integer"):
        run_api.set_input(p, "3", "seed", "x")
    assert p["3"]["inputs"]["seed"] == 5


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
    (["--upload", "8.audio=missing.wav"], "node '8' is not in the workflow"),
    (["--upload", "2.audio=missing.wav"], "upload file not found: missing.wav"),
    (["--upload", "2.sound=missing.wav"], "node 2 (LoadAudio) has no input 'sound'; its inputs: audio"),
    (["--set", "3.seed=1", "--timeout", "-4"], "expected a positive number of seconds"),
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


def test_unreachable_server_exits_3_with_the_address(workflow_file, capsys):
    port = closed_port()
    rc = run_api.main(["--server", f"127.0.0.1:{port}", "--workflow", str(workflow_file)])
    err = capsys.readouterr().err
    assert rc == run_api.EXIT_UNREACHABLE == 3
    (line,) = err.splitlines()
    assert line.startswith(f"error: cannot reach ComfyUI at http://127.0.0.1:{port}: ")


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

    def download(name, sub, kind, dest):
        dest.write_bytes(f"{sub}/{name}".encode())
        return dest
    monkeypatch.setattr(client, "download", download)
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


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def text_frame(node, text):
    """A /ws binary progress-text message (type 3)."""
    return struct.pack(">I", 3) + struct.pack(">I", len(node)) + node.encode() + text.encode()


def test_progress_in_a_log_is_one_line_per_node_and_per_10_percent():
    out, clock = io.StringIO(), FakeClock()
    p = run_api.ProgressPrinter(WORKFLOW, stream=out, tty=False, clock=clock)
    p("execution_start", {})
    p("execution_cached", {"nodes": ["2"]})
    p("executing", {"node": "1"})
    for i in range(1, 21):  # a node without progress text: each line is printed on the next event
        p("progress", {"node": "1", "value": i, "max": 20})
    p("executing", {"node": "3"})
    for i in range(1, 301):
        clock.t += 1
        p("progress", {"node": "3", "value": i, "max": 300})
        p("progress_text", {"node": "3", "text": f"clip {(i - 1) // 100 + 1}/3 \u00b7 step {i}/300"})
        p("preview", {"kind": 1, "bytes": 100})
        p("progress_state", {"nodes": {}})
    p("executing", {"node": "4"})
    p("executed", {"node": "4", "output": {}})
    p("execution_success", {})
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[:3] == ["0:00 cached: 2", "0:00 [1 LoadImage 'Portrait'] running",
                         "0:00 [1 LoadImage 'Portrait'] step 2/20 10%"]
    assert lines[11:14] == ["0:00 [1 LoadImage 'Portrait'] step 20/20 100%", "0:00 [3 HalloDiTDenoise] running",
                            "0:30 [3 HalloDiTDenoise] step 30/300 10% | clip 1/3 \u00b7 step 30/300"]
    assert lines[-2:] == ["5:00 [3 HalloDiTDenoise] step 300/300 100% | clip 3/3 \u00b7 step 300/300",
                          "5:00 [4 SaveVideo] running"]
    assert len(lines) == 1 + 11 + 11 + 1


def test_progress_on_a_terminal_is_one_line_redrawn_in_place():
    out, clock = io.StringIO(), FakeClock()
    p = run_api.ProgressPrinter(WORKFLOW, stream=out, tty=True, width=60, clock=clock)
    p("execution_cached", {"nodes": ["1", "2"]})
    p("executing", {"node": "3"})
    for i in range(1, 301):
        clock.t += 0.5
        p("progress", {"node": "3", "value": i, "max": 300})
        p("progress_text", {"node": "3", "text": f"clip {(i - 1) // 100 + 1}/3, about {300 - i} s left"})
    assert "\n" not in out.getvalue()
    p.message("a line of its own")
    p("executing", {"node": "4"})
    p.close()
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 2
    frames = text.replace("\n", "\r").split("\r")
    assert all(len(f) <= 59 for f in frames)
    assert "2:30 [3 HalloDiTDenoise] step 300/300 100% | clip 3/3, abou" in frames  # cut to the width
    assert "a line of its own" in frames
    assert frames[-2].rstrip() == "2:30 [4 SaveVideo] running"
    assert "0:00 cached: 1, 2" in frames
    assert "0:00 [3 HalloDiTDenoise] step 1/300 0%" in [f.rstrip() for f in frames]


def test_quiet_progress_prints_nothing():
    out = io.StringIO()
    p = run_api.ProgressPrinter(WORKFLOW, stream=out, quiet=True)
    p("executing", {"node": "3"})
    p("progress", {"node": "3", "value": 1, "max": 2})
    p.message("uploaded")
    p.close()
    assert out.getvalue() == ""


# ------------------------------------------------------------------------------------------------ a fake ComfyUI

PID = "p-123"


class FakeComfy:
    """HTTP + /ws on one port, like ComfyUI: POST /prompt answers `prompt_answer` (status, body); once a prompt
    is queued, /ws sends `events`; then /history/PID serves `history`, and /view serves `files`."""

    def __init__(self, events=(), history=None, files=None, prompt_answer=None):
        self.events, self.history, self.files = list(events), history, dict(files or {})
        self.prompt_answer = prompt_answer or (200, {"prompt_id": PID, "number": 1, "node_errors": {}})
        self.requests, self.prompts, self.uploads, self.views = [], [], [], []
        self.queued, self.sent = threading.Event(), threading.Event()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def answer(self, status, body, ctype="application/json"):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                fake.requests.append(("GET", url.path))
                if url.path == "/ws":
                    return self.websocket()
                if url.path == f"/history/{PID}":
                    done = fake.sent.is_set() and fake.history is not None
                    return self.answer(200, {PID: fake.history} if done else {})
                if url.path == "/view":
                    q = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
                    key = (q.get("filename"), q.get("subfolder"), q.get("type"))
                    fake.views.append(key)
                    if key[0] in fake.files:
                        return self.answer(200, fake.files[key[0]], "application/octet-stream")
                    return self.answer(404, b"404: Not Found", "text/plain")
                self.answer(404, b"404: Not Found", "text/plain")

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake.requests.append(("POST", self.path))
                if self.path == "/prompt":
                    fake.prompts.append(json.loads(body))
                    status, answer = fake.prompt_answer
                    if status == 200:
                        fake.queued.set()
                    return self.answer(status, answer)
                if self.path == "/upload/image":
                    name = re.search(rb'name="image"; filename="([^"]+)"', body).group(1).decode()
                    fake.uploads.append((name, body))
                    return self.answer(200, {"name": name, "subfolder": "", "type": "input"})
                self.answer(200, {})  # /queue, /interrupt

            def websocket(self):
                key = self.headers["Sec-WebSocket-Key"]
                accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
                self.send_response(101, "Switching Protocols")
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept", accept)
                self.end_headers()
                self.close_connection = True
                conn = self.connection
                try:
                    conn.sendall(server_frame(1, json.dumps({"type": "status", "data": {"sid": "x"}}).encode()))
                    if fake.queued.wait(10):
                        conn.sendall(b"".join(server_frame(2 if isinstance(m, bytes) else 1,
                                                           m if isinstance(m, bytes) else m.encode())
                                              for m in fake.events))
                        fake.sent.set()
                    conn.settimeout(10)
                    while conn.recv(65536):  # until the client closes
                        pass
                except OSError:
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.queued.set()
        self.server.shutdown()
        self.server.server_close()

    def cancelled(self) -> bool:
        return ("POST", "/queue") in self.requests and ("POST", "/interrupt") in self.requests


def pev(kind, **data):
    return ev(kind, prompt_id=PID, **data)


def render_events(steps=300, node="3"):
    msgs = [pev("execution_start"), pev("execution_cached", nodes=["1", "2"]), pev("executing", node=node)]
    for i in range(1, steps + 1):
        msgs += [pev("progress", value=i, max=steps, node=node),
                 text_frame(node, f"clip {(i - 1) * 3 // steps + 1}/3 \u00b7 step {i}/{steps}"),
                 struct.pack(">I", 1) + b"\xff\xd8jpeg"]
    return msgs + [pev("executing", node="4"), pev("executed", node="4", output={}), pev("execution_success"),
                   pev("executing", node=None)]


MP4 = {"filename": "hallo_00001_.mp4", "subfolder": "hallo", "type": "output"}


def run_main(fake, workflow_file, *extra):
    return run_api.main(["--server", fake.url, "--workflow", str(workflow_file), *map(str, extra)])


def test_a_300_step_render_prints_a_bounded_log_and_downloads_each_file_once(workflow_file, tmp_path, capsys):
    wav = tmp_path / "speech.wav"
    wav.write_bytes(b"RIFF....WAVE")
    history = {"outputs": {"4": {"images": [MP4], "videos": [dict(MP4)], "animated": [True]},
                           "5": {"gifs": [dict(MP4)], "audio": [{"filename": "a.flac", "subfolder": "", "type": "output"}]},
                           "6": {"images": [{"filename": "prev.png", "subfolder": "", "type": "temp"}]}},
               "status": {"status_str": "success", "completed": True, "messages": []}}
    files = {"hallo_00001_.mp4": b"mp4 bytes", "a.flac": b"flac", "prev.png": b"png"}
    with FakeComfy(render_events(), history, files) as fake:
        rc = run_main(fake, workflow_file, "--upload", f"2.audio={wav}", "--set", "3.seed=7", "--set", "3.cfg=5",
                      "--set", "3.tiled=yes", "--out", tmp_path / "dl")
    out, err = capsys.readouterr()
    assert rc == 0, err
    inputs = fake.prompts[0]["prompt"]
    assert inputs["2"]["inputs"]["audio"] == "speech.wav" and fake.uploads[0][0] == "speech.wav"
    assert inputs["3"]["inputs"] == {"seed": 7, "cfg": 5.0, "prompt": "a person", "tiled": True, "image": ["1", 0]}
    lines = err.splitlines()
    assert len(lines) <= 20, err  # not 600 (a line per progress message and per progress text)
    steps = [ln for ln in lines if " step " in ln]
    assert 10 <= len(steps) <= 11 and steps[-1].endswith("[3 HalloDiTDenoise] step 300/300 100% | clip 3/3 \u00b7 "
                                                          "step 300/300")
    assert lines[0] == f"uploaded {wav} -> input/speech.wav" and lines[1] == f"queued prompt {PID}"
    assert lines[-1] == "done in 0:00: 2 output files:"
    assert sorted(fake.views) == [("a.flac", "", "output"), ("hallo_00001_.mp4", "hallo", "output")]  # once each
    assert out.splitlines() == [str(tmp_path / "dl" / "hallo" / "hallo_00001_.mp4"), str(tmp_path / "dl" / "a.flac")]
    assert (tmp_path / "dl" / "hallo" / "hallo_00001_.mp4").read_bytes() == b"mp4 bytes"
    assert sorted(p.name for p in (tmp_path / "dl").rglob("*")) == ["a.flac", "hallo", "hallo_00001_.mp4"]


def test_output_files_are_listed_once_whatever_key_names_them():
    entry = {"outputs": {"4": {"images": [MP4], "videos": [dict(MP4)]}, "5": {"gifs": [dict(MP4, subfolder="x")]},
                         "7": {"audio": [dict(MP4, type="temp")]}}}
    files = run_api.ComfyClient.output_files(entry, ("output", "temp"))
    assert [(f["node"], f["key"], f["subfolder"], f["type"]) for f in files] == [
        ("4", "images", "hallo", "output"), ("5", "gifs", "x", "output"), ("7", "audio", "hallo", "temp")]


def test_unknown_ids_and_inputs_are_refused_before_anything_is_sent(workflow_file, capsys):
    with FakeComfy() as fake:
        rc = run_main(fake, workflow_file, "--set", "3.sed=2", "--set", "9.seed=1", "--set", "3.seed=4")
    err = capsys.readouterr().err
    assert rc == run_api.EXIT_USAGE == 2 and fake.requests == []
    assert err.splitlines() == [
        ("error: --set 3.sed=2: node 3 (HalloDiTDenoise) has no input 'sed' (did you mean 'seed'?); "
         "its inputs: seed, cfg, prompt, tiled, image"),
        ("error: --set 9.seed=1: node '9' is not in the workflow; its node ids: 1 (LoadImage), 2 (LoadAudio), "
         "3 (HalloDiTDenoise), 4 (SaveVideo)")]


def test_the_reported_misspelling_is_refused_in_the_shipped_workflows(capsys):
    for path in sorted((REPO / "workflows" / "api").glob("*.json")):
        prompt = json.loads(path.read_text())
        node_id = next(k for k, v in prompt.items() if "steps" in v["inputs"])  # ids are read, not assumed
        rc = run_api.main(["--server", f"127.0.0.1:{closed_port()}", "--workflow", str(path),
                           "--set", f"{node_id}.step=2"])
        (line,) = capsys.readouterr().err.splitlines()
        assert rc == 2 and "has no input 'step' (did you mean 'steps'?); its inputs: " in line, line


def test_list_prints_each_node_without_a_server(workflow_file, capsys):
    rc = run_api.main(["--server", f"127.0.0.1:{closed_port()}", "--workflow", str(workflow_file), "--list",
                       "--set", "3.seed=9", "--upload", "1.image=not-there.png"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.splitlines() == [
        '1  LoadImage        image="portrait.png"  # Portrait',
        '2  LoadAudio        audio="speech.wav"',
        '3  HalloDiTDenoise  seed=9 cfg=4.5 prompt="a person" tiled=false image=<1:0>',
        '4  SaveVideo        video=<3:0> filename_prefix="hallo"']


def test_list_covers_every_shipped_workflow(capsys):
    for path in sorted((REPO / "workflows" / "api").glob("*.json")):
        prompt = json.loads(path.read_text())
        assert run_api.main(["--workflow", str(path), "--list"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [ln.split()[:2] for ln in lines] == [[k, prompt[k]["class_type"]]
                                                    for k in sorted(prompt, key=run_api._id_key)]


def test_help_shows_an_example_and_every_exit_code(capsys):
    assert run_api.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--list" in out and "--workflow workflows/api/" in out and "--upload ID.image=" in out
    for code, _ in run_api.EXIT_CODES:
        assert re.search(rf"^  {code} +\S", out, re.MULTILINE), code
    assert len({code for code, _ in run_api.EXIT_CODES}) == len(run_api.EXIT_CODES) == 8
    assert run_api.main(["--workflow"]) == 2 and "expected one argument" in capsys.readouterr().err
    assert run_api.main([]) == 2


REJECTED = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                      "details": "", "extra_info": {}},
            "node_errors": {
                "3": {"class_type": "HalloDiTDenoise", "dependent_outputs": ["4"], "errors": [
                    {"type": "value_smaller_than_min", "message": "Value 0 smaller than min of 1",
                     "details": "seed", "extra_info": {"input_name": "seed"}},
                    {"type": "value_not_in_list", "message": "Value not in list",
                     "details": "prompt: 'x'\nnot in ['a', 'b']", "extra_info": {}}]},
                "1": {"class_type": "LoadImage", "dependent_outputs": ["4"], "errors": [
                    {"type": "custom_validation_failed", "message": "Custom validation failed for node",
                     "details": "image - Invalid image file: portrait.png", "extra_info": {}}]}}}


def test_a_rejected_prompt_exits_4_with_one_line_per_node_error(workflow_file, capsys):
    with FakeComfy(prompt_answer=(400, REJECTED)) as fake:
        rc = run_main(fake, workflow_file)
    err = capsys.readouterr().err
    assert rc == run_api.EXIT_REJECTED == 4
    assert err.splitlines() == [
        "error: prompt rejected by the server: Prompt outputs failed validation",
        "  node 3 (HalloDiTDenoise): Value 0 smaller than min of 1: seed",
        "  node 3 (HalloDiTDenoise): Value not in list: prompt: 'x' not in ['a', 'b']",
        "  node 1 (LoadImage): Custom validation failed for node: image - Invalid image file: portrait.png"]


def test_a_partly_valid_prompt_is_cancelled_and_exits_4(workflow_file, capsys):
    answer = {"prompt_id": PID, "number": 3, "node_errors": {"1": REJECTED["node_errors"]["1"]}}
    with FakeComfy(prompt_answer=(200, answer)) as fake:
        rc = run_main(fake, workflow_file)
    err = capsys.readouterr().err
    assert rc == 4 and fake.cancelled()
    assert err.splitlines() == ["error: prompt rejected by the server: some outputs failed validation",
                                ("  node 1 (LoadImage): Custom validation failed for node: image - Invalid image "
                                 "file: portrait.png")]


def test_an_execution_error_exits_5_naming_the_node_its_type_and_the_message(workflow_file, capsys):
    error = pev("execution_error", node_id="3", node_type="HalloDiTDenoise", executed=["1", "2"],
                exception_type="hallo_core.errors.InputError", exception_message="no face found in the portrait\n",
                traceback=["..."], current_inputs={}, current_outputs={})
    with FakeComfy([pev("execution_start"), pev("executing", node="3"),
                    pev("progress", node="3", value=1, max=50), error]) as fake:
        rc = run_main(fake, workflow_file)
    err = capsys.readouterr().err
    assert rc == run_api.EXIT_EXECUTION == 5 and ("GET", "/view") not in fake.requests
    assert err.splitlines()[-1] == ("error: node 3 (HalloDiTDenoise) failed: hallo_core.errors.InputError: "
                                    "no face found in the portrait")


def test_a_run_interrupted_on_the_server_exits_5(workflow_file, capsys):
    with FakeComfy([pev("execution_start"), pev("execution_interrupted", node_id="3", node_type="HalloDiTDenoise",
                                                executed=[])]) as fake:
        rc = run_main(fake, workflow_file)
    assert rc == 5
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: interrupted on the server at node 3 (HalloDiTDenoise)")


def test_a_timeout_exits_6_and_cancels_the_prompt(workflow_file, capsys):
    with FakeComfy([pev("execution_start"), pev("executing", node="3")]) as fake:
        start = time.monotonic()
        rc = run_main(fake, workflow_file, "--timeout", "0.5")
        took = time.monotonic() - start
    err = capsys.readouterr().err
    assert rc == run_api.EXIT_TIMEOUT == 6 and took < 5 and fake.cancelled()
    assert err.splitlines()[-1] == f"error: prompt {PID} did not finish within 0.5 s; cancelled prompt {PID} on the server"


def test_a_failed_download_exits_1(workflow_file, tmp_path, capsys):
    history = {"outputs": {"4": {"images": [MP4]}}, "status": {"status_str": "success", "messages": []}}
    with FakeComfy([pev("execution_start"), pev("execution_success")], history, files={}) as fake:
        rc = run_main(fake, workflow_file, "--out", tmp_path / "dl")
    assert rc == run_api.EXIT_FAILED == 1
    assert capsys.readouterr().err.splitlines()[-1] == "error: GET /view 'hallo_00001_.mp4' answered 404"
    assert not list((tmp_path / "dl").rglob("*.part")) and not list((tmp_path / "dl").rglob("*.mp4"))


def test_a_server_that_is_not_comfyui_exits_1(workflow_file, capsys):
    with FakeComfy(prompt_answer=(404, {"message": "no such route"})) as fake:
        rc = run_main(fake, workflow_file)
    assert rc == 1 and "POST /prompt answered 404" in capsys.readouterr().err


def test_the_script_needs_only_the_standard_library():
    tree = ast.parse((REPO / "workflows" / "run_api.py").read_text())
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert mods <= set(sys.stdlib_module_names) - {"termios", "tty", "fcntl", "pty", "curses", "readline",
                                                   "msvcrt", "resource", "pwd", "grp"}, mods


@pytest.mark.parametrize("doc", ["README.md", "docs/comfyui_testing.md"])
def test_documented_commands_name_nodes_and_inputs_that_exist(doc):
    text = (REPO / doc).read_text(encoding="utf-8").replace("\\\n", " ")
    commands = [ln for ln in text.splitlines() if "run_api.py" in ln and "--workflow workflows/api/" in ln]
    assert commands
    for cmd in commands:
        args = cmd.split()
        prompt = run_api.load_api_workflow(REPO / args[args.index("--workflow") + 1])
        for opt, value in itertools.pairwise(args):
            if opt in ("--set", "--upload") and "=" in value:
                node_id, name, _ = run_api.parse_assignment(value)
                run_api.check_target(prompt, node_id, name)  # raises, naming the valid ones, when stale
