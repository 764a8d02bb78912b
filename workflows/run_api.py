#!/usr/bin/env python3
"""Run an API-format workflow on a running ComfyUI: upload inputs, submit, follow progress, download the results.

    python workflows/run_api.py --server http://127.0.0.1:8188 --workflow workflows/api/NAME.json \\
        [--set NODE_ID.input=VALUE ...] [--upload FILE | --upload NODE_ID.input=FILE ...] [--out downloads/]

--set      changes one input of the workflow. The value keeps the type of the value it replaces (a string input stays a
           string, `--set 7.seed=42` gives an int); a new or linked input takes a JSON literal, else a string.
--upload   sends a file to the server's input folder (POST /upload/image accepts any file type there); with the
           NODE_ID.input= form that input is then set to the uploaded name (e.g. `--upload 3.audio=speech.wav`).
Progress (node, step value/max, progress text) is printed while it runs; Ctrl-C interrupts the run on the server.
Exit status: 0 success, 1 execution error or interrupted, 2 bad arguments or prompt rejected by the server,
3 timeout, 130 Ctrl-C.

Standard library only, so automation users need nothing besides Python: HTTP is urllib, and the progress channel
uses the small websocket client below (RFC 6455, client side, only what ComfyUI's /ws needs: text and binary
messages, fragmentation, ping/pong, close). The test suite imports `ComfyClient` and `WebSocket` from this file.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import ssl
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

# ----------------------------------------------------------------------------------------------------------------
# errors


class ComfyError(Exception):
    """Anything that went wrong talking to ComfyUI; the message is one line meant for the user."""


class PromptRejected(ComfyError):
    """POST /prompt answered 400, or queued the prompt with some outputs invalid (non-empty node_errors)."""

    def __init__(self, status: int, body: dict):
        self.status = status
        self.body = body
        super().__init__(format_prompt_error(body))


class ExecutionFailed(ComfyError):
    """The run ended with execution_error (data: the websocket event's data) or was interrupted."""

    def __init__(self, status: str, data: dict):
        self.status = status  # "error" | "interrupted"
        self.data = data
        if status == "error":
            msg = (f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                   f"{data.get('exception_type', 'error')}: {str(data.get('exception_message', '')).strip()}")
        else:
            msg = f"interrupted at node {data.get('node_id')} ({data.get('node_type')})"
        super().__init__(msg)


class ExecutionTimeout(ComfyError):
    pass


def format_prompt_error(body: dict) -> str:
    """One readable line (plus one per failing node) from a /prompt error body."""
    lines = []
    err = body.get("error")
    if isinstance(err, dict):
        lines.append(f"{err.get('message', 'prompt rejected')}: {err.get('details', '')}".rstrip(": "))
    elif err:
        lines.append(str(err))
    for node_id, ne in (body.get("node_errors") or {}).items():
        for e in ne.get("errors", []):
            lines.append(f"  node {node_id} ({ne.get('class_type')}): {e.get('message')}: {e.get('details', '')}")
    return "\n".join(lines) or "prompt rejected"


# ----------------------------------------------------------------------------------------------------------------
# websocket


class WebSocket:
    """Minimal RFC 6455 client. recv() returns str (text message) or bytes (binary message)."""

    frame_timeout = 120.0  # once a message has started, the rest of it must arrive within this

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._buf = b""
        self.closed = False

    @classmethod
    def connect(cls, url: str, timeout: float = 30.0, headers: dict | None = None) -> "WebSocket":
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("ws", "wss"):
            raise ValueError(f"not a websocket url: {url}")
        port = u.port or (443 if u.scheme == "wss" else 80)
        sock = socket.create_connection((u.hostname, port), timeout=timeout)
        if u.scheme == "wss":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=u.hostname)
        key = base64.b64encode(os.urandom(16)).decode()
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        host = u.hostname if u.port is None else f"{u.hostname}:{u.port}"
        req = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
               f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        req += [f"{k}: {v}" for k, v in (headers or {}).items()]
        sock.sendall(("\r\n".join(req) + "\r\n\r\n").encode())
        ws = cls(sock)
        head = ws._read_until(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        if " 101 " not in status + " ":
            sock.close()
            raise ComfyError(f"websocket handshake to {url} failed: {status}")
        return ws

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed during websocket handshake")
            self._buf += chunk
        head, self._buf = self._buf.split(marker, 1)
        return head

    def _read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                self.closed = True
                raise ConnectionError("websocket closed by the server")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        self.sock.sendall(head + mask + _mask_fast(payload, mask))

    def send_text(self, text: str) -> None:
        self._send_frame(0x1, text.encode("utf-8"))

    def recv(self, timeout: float | None = None) -> str | bytes:
        """Next complete message. Raises TimeoutError (socket.timeout) after `timeout` s without data; the timeout
        only applies before a message starts, so a timeout never leaves half a frame consumed."""
        if not self._buf:
            self.sock.settimeout(timeout)
            chunk = self.sock.recv(65536)
            if not chunk:
                self.closed = True
                raise ConnectionError("websocket closed by the server")
            self._buf += chunk
        self.sock.settimeout(self.frame_timeout)
        parts, msg_opcode = [], None
        while True:
            b0, b1 = self._read_exact(2)
            fin, opcode, n = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read_exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read_exact(8))[0]
            mask = self._read_exact(4) if b1 & 0x80 else None
            payload = self._read_exact(n)
            if mask:
                payload = _mask_fast(payload, mask)
            if opcode == 0x8:  # close: answer and report
                self.closed = True
                try:
                    self._send_frame(0x8, payload[:2])
                except OSError:
                    pass
                raise ConnectionError("websocket closed by the server")
            if opcode == 0x9:  # ping
                self._send_frame(0xA, payload)
                continue
            if opcode == 0xA:  # pong
                continue
            if opcode in (0x1, 0x2):
                msg_opcode, parts = opcode, [payload]
            elif opcode == 0x0:
                parts.append(payload)
            if fin and msg_opcode is not None:
                data = b"".join(parts)
                return data.decode("utf-8") if msg_opcode == 0x1 else data

    def close(self) -> None:
        if not self.closed:
            try:
                self._send_frame(0x8, struct.pack(">H", 1000))
            except OSError:
                pass
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


def _mask_fast(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


# ----------------------------------------------------------------------------------------------------------------
# ComfyUI client

TERMINAL = ("execution_success", "execution_error", "execution_interrupted")


def parse_ws_message(msg: str | bytes) -> tuple[str, dict]:
    """(event type, data) from one /ws message. Binary frames: 4-byte big-endian type; 3 = progress text
    (4-byte node-id length, node id, utf-8 text); 1/2/4 = preview images (reported as `preview` with the size)."""
    if isinstance(msg, str):
        m = json.loads(msg)
        return m.get("type", ""), m.get("data") or {}
    kind = struct.unpack(">I", msg[:4])[0] if len(msg) >= 4 else -1
    if kind == 3:
        n = struct.unpack(">I", msg[4:8])[0]
        return "progress_text", {"node": msg[8:8 + n].decode("utf-8", "replace"),
                                 "text": msg[8 + n:].decode("utf-8", "replace")}
    return "preview", {"kind": kind, "bytes": len(msg) - 4}


class ComfyClient:
    """HTTP + websocket client for one ComfyUI server (e.g. "http://127.0.0.1:8188")."""

    def __init__(self, server: str, client_id: str | None = None, http_timeout: float = 60.0):
        if "://" not in server:
            server = "http://" + server
        self.base = server.rstrip("/")
        self.client_id = client_id or uuid.uuid4().hex
        self.http_timeout = http_timeout
        host = urllib.parse.urlsplit(self.base).hostname or ""
        # a loopback server is never reached through an http_proxy from the environment
        loopback = host in ("localhost", "::1") or host.startswith("127.")
        self._opener = urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if loopback else []))

    # -- HTTP
    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float | None = None) -> tuple[int, bytes, dict]:
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers or {})
        try:
            with self._opener.open(req, timeout=timeout or self.http_timeout) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers or {})
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ComfyError(f"cannot reach ComfyUI at {self.base}: {reason}") from e

    def get_json(self, path: str):
        status, data, _ = self.request("GET", path)
        if status != 200:
            raise ComfyError(f"GET {path} answered {status}: {data[:300]!r}")
        return json.loads(data)

    def post_json(self, path: str, obj) -> tuple[int, bytes]:
        status, data, _ = self.request("POST", path, json.dumps(obj).encode(), {"Content-Type": "application/json"})
        return status, data

    def system_stats(self) -> dict:
        return self.get_json("/system_stats")

    def object_info(self, node_class: str | None = None) -> dict:
        return self.get_json("/object_info" + (f"/{urllib.parse.quote(node_class)}" if node_class else ""))

    def upload(self, path: str | Path, name: str | None = None, subfolder: str = "", overwrite: bool = True,
               folder_type: str = "input") -> dict:
        """POST /upload/image (any file type) -> {"name", "subfolder", "type"}."""
        path = Path(path)
        boundary = uuid.uuid4().hex
        fields = {"type": folder_type, "subfolder": subfolder, "overwrite": "true" if overwrite else "false"}
        body = b""
        for k, v in fields.items():
            body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").encode()
        fname = (name or path.name).replace('"', "_")
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{fname}\"\r\n"
                 f"Content-Type: application/octet-stream\r\n\r\n").encode() + path.read_bytes() + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        status, data, _ = self.request("POST", "/upload/image", body,
                                       {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if status != 200:
            raise ComfyError(f"upload of {path} failed with HTTP {status}: {data[:300]!r}")
        return json.loads(data)

    def queue_prompt(self, prompt: dict, extra_data: dict | None = None, prompt_id: str | None = None) -> dict:
        """POST /prompt. Returns {"prompt_id", "number", "node_errors"}; raises PromptRejected on HTTP 400.
        A 200 with non-empty node_errors (only some outputs valid) is returned: the caller decides."""
        body = {"prompt": prompt, "client_id": self.client_id}
        if extra_data:
            body["extra_data"] = extra_data
        if prompt_id:
            body["prompt_id"] = prompt_id
        status, data = self.post_json("/prompt", body)
        try:
            answer = json.loads(data)
        except ValueError:
            answer = {"error": data.decode("utf-8", "replace")}
        if status != 200:
            raise PromptRejected(status, answer)
        return answer

    def interrupt(self, prompt_id: str | None = None) -> None:
        self.post_json("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def delete_queued(self, prompt_ids: list[str]) -> None:
        self.post_json("/queue", {"delete": list(prompt_ids)})

    def cancel(self, prompt_id: str) -> None:
        """Stop a prompt wherever it is: drop it from the queue and interrupt it if it is running."""
        self.delete_queued([prompt_id])
        self.interrupt(prompt_id)

    def history(self, prompt_id: str) -> dict | None:
        """The /history entry of a finished prompt, None while it is queued or running."""
        return self.get_json(f"/history/{urllib.parse.quote(prompt_id)}").get(prompt_id)

    def view(self, filename: str, subfolder: str = "", folder_type: str = "output") -> bytes:
        q = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": folder_type})
        status, data, _ = self.request("GET", f"/view?{q}")
        if status != 200:
            raise ComfyError(f"GET /view {filename!r} answered {status}")
        return data

    # -- websocket
    def open_ws(self, timeout: float = 30.0) -> WebSocket:
        u = urllib.parse.urlsplit(self.base)
        scheme = "wss" if u.scheme == "https" else "ws"
        try:
            return WebSocket.connect(f"{scheme}://{u.netloc}{u.path}/ws?clientId={self.client_id}", timeout=timeout)
        except OSError as e:
            raise ComfyError(f"cannot reach ComfyUI at {self.base}: {e}") from e

    def follow(self, ws: WebSocket, prompt_id: str, timeout: float | None = None, on_event=None,
               poll_every: float = 15.0) -> dict:
        """Read /ws events of `prompt_id` until it ends. Returns {"status": "success"|"error"|"interrupted",
        "data": terminal event data, "events": [(type, data), ...]}. `on_event(type, data)` sees every event of
        this prompt (progress, executing, executed, progress_text, preview, ...). When no message arrives for
        `poll_every` s, /history is checked, so a missed terminal message cannot hang the caller."""
        deadline = None if timeout is None else time.monotonic() + timeout
        events, current = [], None
        while True:
            wait = poll_every if deadline is None else max(0.05, min(poll_every, deadline - time.monotonic()))
            try:
                msg = ws.recv(timeout=wait)
            except (socket.timeout, TimeoutError):
                msg = None
            if msg is None:
                done = self._status_from_history(prompt_id)
                if done:
                    return {**done, "events": events}
                if deadline is not None and time.monotonic() >= deadline:
                    raise ExecutionTimeout(f"prompt {prompt_id} did not finish within {timeout} s")
                continue
            kind, data = parse_ws_message(msg)
            pid = data.get("prompt_id")
            if kind in ("progress_text", "preview"):
                if current != prompt_id:
                    continue  # binary events carry no prompt id: keep those seen while our prompt runs
            elif pid != prompt_id:
                continue  # other prompts' events, queue status, feature flags
            if kind == "execution_start":
                current = prompt_id
            events.append((kind, data))
            if on_event:
                on_event(kind, data)
            if kind in TERMINAL:
                status = {"execution_success": "success", "execution_error": "error"}.get(kind, "interrupted")
                return {"status": status, "data": data, "events": events}
            if kind == "executing" and data.get("node") is None and pid == prompt_id:
                done = self._status_from_history(prompt_id) or {"status": "success", "data": data}
                return {**done, "events": events}
            if deadline is not None and time.monotonic() >= deadline:
                raise ExecutionTimeout(f"prompt {prompt_id} did not finish within {timeout} s")

    def _status_from_history(self, prompt_id: str) -> dict | None:
        entry = self.history(prompt_id)
        if not entry:
            return None
        st = entry.get("status") or {}
        msgs = st.get("messages") or []
        for kind, data in msgs:
            if kind in ("execution_error", "execution_interrupted"):
                return {"status": "error" if kind == "execution_error" else "interrupted", "data": data}
        return {"status": "success" if st.get("status_str", "success") == "success" else "error", "data": {}}

    def run(self, prompt: dict, timeout: float | None = None, on_event=None, extra_data: dict | None = None,
            allow_partial: bool = False) -> dict:
        """Submit and wait. Returns {"prompt_id", "status", "data", "events", "history"}; raises PromptRejected
        (invalid prompt; a partially valid one is cancelled unless allow_partial) or ExecutionTimeout."""
        ws = self.open_ws()
        try:
            answer = self.queue_prompt(prompt, extra_data=extra_data)
            prompt_id = answer["prompt_id"]
            if answer.get("node_errors") and not allow_partial:
                self.cancel(prompt_id)
                raise PromptRejected(200, answer)
            result = self.follow(ws, prompt_id, timeout=timeout, on_event=on_event)
        finally:
            ws.close()
        result["prompt_id"] = prompt_id
        result["history"] = self._wait_history(prompt_id)
        return result

    def _wait_history(self, prompt_id: str, wait: float = 10.0) -> dict | None:
        end = time.monotonic() + wait
        while True:
            entry = self.history(prompt_id)
            if entry or time.monotonic() > end:
                return entry
            time.sleep(0.1)

    # -- outputs
    @staticmethod
    def output_files(history_entry: dict, folder_types=("output",)) -> list[dict]:
        """Every file listed in a history entry's outputs, whatever the key ('images', 'videos', 'gifs',
        'audio', ...; SaveVideo in ComfyUI 0.3.x reports its mp4 under 'images' with 'animated': [true]).
        Each: {"node", "key", "filename", "subfolder", "type"}. Previews have type 'temp'."""
        files = []
        for node_id, out in (history_entry.get("outputs") or {}).items():
            for key, items in out.items():
                if not isinstance(items, list):
                    continue
                for it in items:
                    if isinstance(it, dict) and "filename" in it and it.get("type", "output") in folder_types:
                        files.append({"node": node_id, "key": key, "filename": it["filename"],
                                      "subfolder": it.get("subfolder", ""), "type": it.get("type", "output")})
        return files

    def download_outputs(self, history_entry: dict, out_dir: str | Path, folder_types=("output",)) -> list[Path]:
        """Download every output file into out_dir/<subfolder>/<filename>."""
        out_dir = Path(out_dir)
        paths = []
        for f in self.output_files(history_entry, folder_types):
            sub = Path(*[p for p in f["subfolder"].replace("\\", "/").split("/") if p not in ("", ".", "..")])
            dest = out_dir / sub / Path(f["filename"]).name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(self.view(f["filename"], f["subfolder"], f["type"]))
            paths.append(dest)
        return paths


# ----------------------------------------------------------------------------------------------------------------
# command line


def parse_assignment(text: str) -> tuple[str, str, str]:
    """"NODE_ID.input=value" -> (node_id, input, value). Node ids never contain '.', so the first '.' splits."""
    target, sep, value = text.partition("=")
    node_id, dot, name = target.partition(".")
    if not sep or not dot or not node_id.strip() or not name.strip():
        raise ValueError(f"expected NODE_ID.input=VALUE, got {text!r}")
    return node_id.strip(), name.strip(), value


def coerce_value(raw: str, current=None):
    """The value for an input given as text, keeping the type of the value it replaces."""
    if isinstance(current, bool):
        low = raw.strip().lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"{raw!r} is not a boolean")
    if isinstance(current, int):
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not an integer") from None
    if isinstance(current, float):
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a number") from None
    if isinstance(current, str):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def set_input(prompt: dict, node_id: str, name: str, raw: str, *, literal: bool = False) -> None:
    """Set prompt[node_id]['inputs'][name] from text (literal=True: keep the text as a string)."""
    if node_id not in prompt:
        raise ValueError(f"node {node_id!r} is not in the workflow (ids: {', '.join(sorted(prompt, key=_id_key))})")
    inputs = prompt[node_id].setdefault("inputs", {})
    try:
        inputs[name] = raw if literal else coerce_value(raw, inputs.get(name))
    except ValueError as e:
        raise ValueError(f"{node_id}.{name}: {e}") from None


def _id_key(s: str):
    return (0, int(s), "") if s.isdigit() else (1, 0, s)


def load_api_workflow(path: str | Path) -> dict:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, dict) and "prompt" in data and isinstance(data["prompt"], dict):
        data = data["prompt"]  # a saved /prompt request body
    if not isinstance(data, dict) or "nodes" in data or not all(
            isinstance(v, dict) and "class_type" in v for v in data.values()):
        raise ValueError(f"{path} is not an API-format workflow (use ComfyUI's 'Export (API)'; "
                         "the UI format with 'nodes' and 'links' cannot be posted)")
    return data


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_api.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI address (default %(default)s)")
    p.add_argument("--workflow", required=True, help="API-format workflow JSON")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE_ID.input=VALUE",
                   help="change an input (repeatable)")
    p.add_argument("--upload", dest="uploads", action="append", default=[], metavar="[NODE_ID.input=]FILE",
                   help="upload a file to the input folder, optionally setting an input to its name (repeatable)")
    p.add_argument("--out", default="downloads", help="folder for the downloaded outputs (default %(default)s)")
    p.add_argument("--timeout", type=float, default=None, help="give up (and interrupt) after this many seconds")
    p.add_argument("--include-previews", action="store_true", help="also download temp previews")
    p.add_argument("--quiet", action="store_true", help="print only errors and the downloaded paths")
    return p


def parse_uploads(items: list[str]) -> list[tuple[str | None, str | None, str]]:
    """'[NODE_ID.input=]FILE' -> (node_id|None, input|None, file)."""
    out = []
    for it in items:
        target, sep, path = it.partition("=")
        if sep and "." in target and not os.path.exists(it):
            node_id, name, _ = parse_assignment(it)
            out.append((node_id, name, path))
        else:
            out.append((None, None, it))
    return out


class ProgressPrinter:
    def __init__(self, prompt: dict, stream=sys.stdout, quiet: bool = False):
        self.prompt, self.stream, self.quiet = prompt, stream, quiet
        self.last_step = {}

    def label(self, node_id) -> str:
        node = self.prompt.get(str(node_id)) or {}
        title = (node.get("_meta") or {}).get("title")
        kind = node.get("class_type", "?")
        return f"{node_id} {kind}" + (f" '{title}'" if title and title != kind else "")

    def __call__(self, kind: str, data: dict) -> None:
        if self.quiet:
            return
        line = None
        if kind == "executing" and data.get("node") is not None:
            line = f"[{self.label(data['node'])}] running"
        elif kind == "execution_cached" and data.get("nodes"):
            line = f"cached: {', '.join(map(str, data['nodes']))}"
        elif kind == "progress":
            line = f"[{self.label(data.get('node'))}] step {data.get('value')}/{data.get('max')}"
        elif kind == "progress_text":
            line = f"[{self.label(data.get('node'))}] {data.get('text')}"
        elif kind == "executed":
            line = f"[{self.label(data.get('node'))}] done"
        if line:
            print(line, file=self.stream, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    err = sys.stderr
    try:
        prompt = load_api_workflow(args.workflow)
        uploads = parse_uploads(args.uploads)
        for path in (u[2] for u in uploads):
            if not Path(path).is_file():
                raise ValueError(f"upload file not found: {path}")
        sets = [parse_assignment(s) for s in args.sets]
        for node_id, name, raw in sets:  # check before touching the server
            set_input(prompt, node_id, name, raw)
        for node_id, _name, _ in uploads:
            if node_id is not None and node_id not in prompt:
                raise ValueError(f"node {node_id!r} is not in the workflow")
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=err)
        return 2

    client = ComfyClient(args.server)
    printer = ProgressPrinter(prompt, quiet=args.quiet)
    prompt_id = None
    try:
        for node_id, name, path in uploads:
            info = client.upload(path)
            stored = f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]
            if not args.quiet:
                print(f"uploaded {path} -> input/{stored}", flush=True)
            if node_id is not None:
                set_input(prompt, node_id, name, stored, literal=True)
        ws = client.open_ws()
        try:
            answer = client.queue_prompt(prompt)
            prompt_id = answer["prompt_id"]
            if answer.get("node_errors"):
                client.cancel(prompt_id)
                raise PromptRejected(200, answer)
            if not args.quiet:
                print(f"queued prompt {prompt_id}", flush=True)
            result = client.follow(ws, prompt_id, timeout=args.timeout, on_event=printer)
        finally:
            ws.close()
        if result["status"] != "success":
            raise ExecutionFailed(result["status"], result["data"])
        entry = client._wait_history(prompt_id)
        if not entry:
            raise ComfyError(f"prompt {prompt_id} finished but /history has no entry for it")
        types = ("output", "temp") if args.include_previews else ("output",)
        paths = client.download_outputs(entry, args.out, types)
        for p in paths:
            print(p, flush=True)
        if not paths:
            print("warning: the workflow produced no output files", file=err)
        return 0
    except PromptRejected as e:
        print(f"error: prompt rejected by the server:\n{e}", file=err)
        return 2
    except ExecutionFailed as e:
        print(f"error: {e}", file=err)
        return 1
    except ExecutionTimeout as e:
        if prompt_id:
            client.cancel(prompt_id)
        print(f"error: {e}; interrupted it", file=err)
        return 3
    except KeyboardInterrupt:
        if prompt_id:
            try:
                client.cancel(prompt_id)
                print(f"\ninterrupted prompt {prompt_id} on the server", file=err)
            except ComfyError as e:
                print(f"\ncould not interrupt prompt {prompt_id}: {e}", file=err)
        return 130
    except ComfyError as e:
        print(f"error: {e}", file=err)
        return 1
    except OSError as e:  # the connection dropped mid-run (server stopped or crashed)
        print(f"error: lost the connection to ComfyUI at {client.base}: {e}", file=err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
