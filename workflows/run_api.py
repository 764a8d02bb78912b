#!/usr/bin/env python3
"""Run an API-format workflow on a running ComfyUI: upload inputs, submit, follow progress, download the results.

    python workflows/run_api.py --workflow workflows/api/NAME.json --list
    python workflows/run_api.py --server http://127.0.0.1:8188 --workflow workflows/api/NAME.json \\
        [--set NODE_ID.input=VALUE ...] [--upload FILE | --upload NODE_ID.input=FILE ...] [--out downloads/]

--list     prints the workflow's nodes, one line each (`id  class_type  input=value ...`), and contacts no server.
--set      changes one input of the workflow. The node id and the input must exist in the workflow file (a typo is
           refused with the valid names, before anything is sent). The value keeps the type of the value it
           replaces: `--set 7.seed=42` gives an int, `7.cfg=4` a float, `7.compile=true` a bool, a string input
           stays a string; a linked input takes a JSON literal (`["3", 0]`).
--upload   sends a file to the server's input folder (POST /upload/image accepts any file type there); with the
           NODE_ID.input= form that input is then set to the uploaded name (e.g. `--upload 3.audio=speech.wav`).
Progress goes to stderr: on a terminal one line redrawn in place (node, step i/n, percent, the node's progress
text); in a log or pipe one line per node and per 10 % of its progress. The downloaded paths go to stdout, one a
line. Ctrl-C interrupts the run on the server. Exit status: see EXIT_CODES (also printed by --help).

Standard library only (Python >= 3.10, Linux, macOS, Windows), so automation users need nothing besides Python:
HTTP is urllib, and the progress channel uses the small websocket client below (RFC 6455, client side, only what
ComfyUI's /ws needs: text and binary messages, fragmentation, ping/pong, close). The test suite imports
`ComfyClient` and `WebSocket` from this file.
"""
from __future__ import annotations

import argparse
import base64
import difflib
import json
import math
import os
import shutil
import socket
import ssl
import struct
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

# ----------------------------------------------------------------------------------------------------------------
# exit status

EXIT_OK = 0
EXIT_FAILED = 1  # anything else: an unexpected answer from the server, a failed download, ...
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_REJECTED = 4
EXIT_EXECUTION = 5
EXIT_TIMEOUT = 6
EXIT_CTRL_C = 130

EXIT_CODES = (
    (EXIT_OK, "success: the run finished and its outputs were downloaded"),
    (EXIT_FAILED, "other failure: unexpected answer from the server, a download failed, no /history entry"),
    (EXIT_USAGE, ("bad arguments: usage error, unknown node id or input in --set/--upload, bad value, missing "
                  "file, not an API-format workflow (nothing was sent)")),
    (EXIT_UNREACHABLE, "cannot reach the server (or lost the connection to it)"),
    (EXIT_REJECTED, "prompt rejected by the server (validation error; one line per node error)"),
    (EXIT_EXECUTION, ("execution error: a node failed (node id, type, exception message), or the run was "
                      "interrupted on the server")),
    (EXIT_TIMEOUT, "--timeout expired (the prompt is cancelled on the server)"),
    (EXIT_CTRL_C, "Ctrl-C (the prompt is cancelled on the server)"),
)

# ----------------------------------------------------------------------------------------------------------------
# errors


class ComfyError(Exception):
    """Anything that went wrong talking to ComfyUI; the message is one line meant for the user."""


class ServerUnreachable(ComfyError):
    """No connection to the server, or it dropped."""


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
        where = (f"node {data.get('node_id')} ({data.get('node_type')})" if data.get("node_id") is not None
                 else "the run")
        if status == "error":
            text = one_line(data.get("exception_message", ""))
            msg = f"{where} failed: {data.get('exception_type') or 'error'}" + (f": {text}" if text else "")
            if data.get("node_id") is None and not text:
                msg = "the run failed on the server (no details in /history)"
        else:
            msg = f"interrupted on the server at {where}" if data.get("node_id") is not None else \
                "interrupted on the server"
        super().__init__(msg)


class ExecutionTimeout(ComfyError):
    pass


def one_line(text, limit: int | None = None) -> str:
    """`text` with its line breaks and runs of blanks made single spaces, cut to `limit` characters."""
    s = " ".join(str(text).split())
    return s if limit is None or len(s) <= limit else s[:limit - 3] + "..."


def format_prompt_error(body: dict) -> str:
    """A headline, then one line per node error, from a /prompt error body."""
    lines = []
    err = body.get("error")
    if isinstance(err, dict):
        lines.append(one_line(f"{err.get('message', 'prompt rejected')}: {err.get('details') or ''}".rstrip(": ")))
    elif err:
        lines.append(one_line(err, 500))
    elif body.get("node_errors"):
        lines.append("some outputs failed validation")
    for node_id, ne in (body.get("node_errors") or {}).items():
        for e in ne.get("errors", []) or [{"message": "invalid"}]:
            details = one_line(e.get("details") or "", 300)
            lines.append(f"  node {node_id} ({ne.get('class_type')}): {one_line(e.get('message'))}"
                         + (f": {details}" if details else ""))
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
    def connect(cls, url: str, timeout: float = 30.0, headers: dict | None = None) -> WebSocket:
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


def _network_error(e: BaseException) -> bool:
    return isinstance(e, (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError, socket.gaierror,
                          ssl.SSLError))


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

    def _unreachable(self, e: BaseException) -> ServerUnreachable:
        reason = getattr(e, "reason", None) or e
        return ServerUnreachable(f"cannot reach ComfyUI at {self.base}: {reason}")

    # -- HTTP
    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float | None = None) -> tuple[int, bytes, dict]:
        """(status, body, headers) of any answer; ServerUnreachable when there is none."""
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers or {})
        try:
            with self._opener.open(req, timeout=timeout or self.http_timeout) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers or {})
        except (urllib.error.URLError, OSError) as e:
            raise self._unreachable(e) from e

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
        """POST /prompt. Returns {"prompt_id", "number", "node_errors"}; raises PromptRejected when the server
        refuses the prompt (HTTP 400 with an error body). A 200 with non-empty node_errors (only some outputs
        valid) is returned: the caller decides."""
        body = {"prompt": prompt, "client_id": self.client_id}
        if extra_data:
            body["extra_data"] = extra_data
        if prompt_id:
            body["prompt_id"] = prompt_id
        status, data = self.post_json("/prompt", body)
        try:
            answer = json.loads(data)
        except ValueError:
            answer = None
        if status == 200 and isinstance(answer, dict) and "prompt_id" in answer:
            return answer
        if 400 <= status < 500 and isinstance(answer, dict) and ("error" in answer or "node_errors" in answer):
            raise PromptRejected(status, answer)
        raise ComfyError(f"POST /prompt answered {status}: {data[:300]!r} (is {self.base} a ComfyUI server?)")

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

    def download(self, filename: str, subfolder: str, folder_type: str, dest: str | Path) -> Path:
        """GET /view streamed into `dest` (through dest.part, so a failed download leaves no partial file)."""
        dest = Path(dest)
        q = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": folder_type})
        part = dest.with_name(dest.name + ".part")
        try:
            with self._opener.open(urllib.request.Request(f"{self.base}/view?{q}"),
                                   timeout=self.http_timeout) as r, open(part, "wb") as f:
                shutil.copyfileobj(r, f, 1 << 20)
            os.replace(part, dest)
        except urllib.error.HTTPError as e:
            raise ComfyError(f"GET /view {filename!r} answered {e.code}") from e
        except OSError as e:
            if _network_error(e):
                raise self._unreachable(e) from e
            raise ComfyError(f"cannot write {dest}: {e}") from e
        finally:
            if part.exists():
                part.unlink()
        return dest

    # -- websocket
    def open_ws(self, timeout: float = 30.0) -> WebSocket:
        u = urllib.parse.urlsplit(self.base)
        scheme = "wss" if u.scheme == "https" else "ws"
        try:
            return WebSocket.connect(f"{scheme}://{u.netloc}{u.path}/ws?clientId={self.client_id}", timeout=timeout)
        except OSError as e:
            raise self._unreachable(e) from e

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
            except TimeoutError:  # socket.timeout is TimeoutError since 3.10
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
        'audio', ...; SaveVideo in ComfyUI 0.3.x reports its mp4 under 'images' with 'animated': [true]), once:
        a file named again (same filename, subfolder and type, under another key or node) is left out.
        Each: {"node", "key", "filename", "subfolder", "type"}. Previews have type 'temp'."""
        files, seen = [], set()
        for node_id, out in (history_entry.get("outputs") or {}).items():
            for key, items in (out or {}).items():
                if not isinstance(items, list):
                    continue
                for it in items:
                    if not (isinstance(it, dict) and "filename" in it and it.get("type", "output") in folder_types):
                        continue
                    f = {"node": node_id, "key": key, "filename": it["filename"],
                         "subfolder": it.get("subfolder") or "", "type": it.get("type", "output")}
                    ident = (f["filename"], f["subfolder"], f["type"])
                    if ident not in seen:
                        seen.add(ident)
                        files.append(f)
        return files

    @staticmethod
    def local_path(out_dir: str | Path, f: dict) -> Path:
        """Where an output file goes: out_dir/<subfolder>/<filename>, with '..', '.' and absolute parts dropped."""
        parts = [p for p in f["subfolder"].replace("\\", "/").split("/") if p not in ("", ".", "..")]
        return Path(out_dir).joinpath(*[p.replace(":", "_") for p in parts]) / Path(f["filename"].replace("\\", "/")).name

    def download_outputs(self, history_entry: dict, out_dir: str | Path, folder_types=("output",)) -> list[Path]:
        """Download every output file (each once) into out_dir/<subfolder>/<filename>."""
        paths = []
        for f in self.output_files(history_entry, folder_types):
            dest = self.local_path(out_dir, f)
            dest.parent.mkdir(parents=True, exist_ok=True)
            paths.append(self.download(f["filename"], f["subfolder"], f["type"], dest))
        return paths


# ----------------------------------------------------------------------------------------------------------------
# the workflow: --set, --upload, --list


def parse_assignment(text: str) -> tuple[str, str, str]:
    """"NODE_ID.input=value" -> (node_id, input, value). Node ids never contain '.', so the first '.' splits."""
    target, sep, value = text.partition("=")
    node_id, dot, name = target.partition(".")
    if not sep or not dot or not node_id.strip() or not name.strip():
        raise ValueError(f"expected NODE_ID.input=VALUE, got {text!r}")
    return node_id.strip(), name.strip(), value


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def coerce_value(raw: str, current=None):
    """The value for an input given as text, keeping the type of the value it replaces: bool (true/false, 1/0,
    yes/no, on/off), int ("7", also "7.0" or "1e3"), float (finite), str (as given); anything else (a link, a
    list, null) takes a JSON literal, or the text itself when it is not JSON."""
    if isinstance(current, bool):
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"{raw!r} is not a boolean (true/false)")
    if isinstance(current, int):
        try:
            return int(raw)
        except ValueError:
            pass
        try:
            f = float(raw)
        except ValueError:
            f = math.nan
        if math.isfinite(f) and f.is_integer():
            return int(f)
        raise ValueError(f"{raw!r} is not an integer")
    if isinstance(current, float):
        try:
            f = float(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a number") from None
        if not math.isfinite(f):
            raise ValueError(f"{raw!r} is not a finite number")
        return f
    if isinstance(current, str):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _id_key(s: str):
    return (0, int(s), "") if s.isdigit() else (1, 0, s)


def node_ids(prompt: dict) -> list[str]:
    return sorted(prompt, key=_id_key)


def check_target(prompt: dict, node_id: str, name: str) -> None:
    """ValueError (one line, naming the valid choices) unless `name` is an input of node `node_id` in the
    workflow file."""
    if node_id not in prompt:
        ids = ", ".join(f"{k} ({prompt[k].get('class_type')})" for k in node_ids(prompt))
        raise ValueError(f"node {node_id!r} is not in the workflow; its node ids: {ids}")
    node = prompt[node_id]
    inputs = list(node.get("inputs") or {})
    if name not in inputs:
        close = difflib.get_close_matches(name, inputs, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"node {node_id} ({node.get('class_type')}) has no input {name!r}{hint}; "
                         f"its inputs: {', '.join(inputs) if inputs else '(none)'}")


def set_input(prompt: dict, node_id: str, name: str, raw: str, *, literal: bool = False) -> None:
    """Set prompt[node_id]['inputs'][name] from text (literal=True: keep the text as a string). The node and
    the input must exist in the workflow (ValueError naming the valid ones otherwise)."""
    check_target(prompt, node_id, name)
    inputs = prompt[node_id]["inputs"]
    try:
        inputs[name] = raw if literal else coerce_value(raw, inputs.get(name))
    except ValueError as e:
        raise ValueError(f"{node_id}.{name}: {e}") from None


def load_api_workflow(path: str | Path) -> dict:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, dict) and "prompt" in data and isinstance(data["prompt"], dict):
        data = data["prompt"]  # a saved /prompt request body
    if not isinstance(data, dict) or not data or "nodes" in data or not all(
            isinstance(v, dict) and "class_type" in v for v in data.values()):
        raise ValueError(f"{path} is not an API-format workflow (use ComfyUI's 'Export (API)'; "
                         "the UI format with 'nodes' and 'links' cannot be posted)")
    return data


def is_link(value) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def format_value(value) -> str:
    """An input value as --list shows it: a link as <NODE:OUTPUT>, anything else as compact JSON."""
    if is_link(value):
        return f"<{value[0]}:{value[1]}>"
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def list_nodes(prompt: dict) -> list[str]:
    """One line per node: `id  class_type  input=value ...` (and `# title` when the title says more)."""
    ids = node_ids(prompt)
    w_id = max(len(k) for k in ids)
    w_cls = max(len(str(prompt[k].get("class_type"))) for k in ids)
    lines = []
    for k in ids:
        node = prompt[k]
        cls = str(node.get("class_type"))
        ins = " ".join(f"{n}={format_value(v)}" for n, v in (node.get("inputs") or {}).items())
        title = (node.get("_meta") or {}).get("title")
        lines.append(f"{k:<{w_id}}  {cls:<{w_cls}}  {ins}".rstrip()
                     + (f"  # {title}" if title and title != cls else ""))
    return lines


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


# ----------------------------------------------------------------------------------------------------------------
# progress


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class ProgressPrinter:
    """The `on_event` of ComfyClient.follow that shows progress on `stream` (stderr by default).

    On a terminal (tty=True): one line, redrawn in place with a carriage return (no terminal control codes, so
    it works in any Windows console): elapsed time, node, step i/n, percent, the node's latest progress text.
    Otherwise (a log, a pipe): one line when a node starts and one each time its progress passes a multiple of
    10 %, carrying the latest progress text; so a 300-step render prints about 11 lines, not 600.
    `message(text)` prints a line of its own; `close()` ends the live line."""

    def __init__(self, prompt: dict, stream=None, quiet: bool = False, tty: bool | None = None,
                 width: int | None = None, clock=time.monotonic):
        self.prompt, self.quiet, self.clock = prompt, quiet, clock
        self.stream = stream if stream is not None else sys.stderr
        self.tty = _isatty(self.stream) if tty is None else tty
        self.width = width
        self.start = clock()
        self.node = None  # the node running now
        self.progress = {}  # node -> (value, max)
        self.text = {}  # node -> latest progress text
        self.note = ""  # shown when no node runs (cached nodes)
        self._bucket = {}  # node -> last 10 % step printed (log mode)
        self._pending = None  # node whose progress line waits for its progress text (log mode)
        self._live = 0  # characters of the live line on the terminal

    def label(self, node_id) -> str:
        node = self.prompt.get(str(node_id)) or {}
        title = (node.get("_meta") or {}).get("title")
        kind = node.get("class_type", "?")
        return f"{node_id} {kind}" + (f" '{title}'" if title and title != kind else "")

    def render(self, node=None) -> str:
        node = self.node if node is None else node
        head = _clock(self.clock() - self.start)
        if node is None:
            return f"{head} {self.note}".rstrip()
        line = f"{head} [{self.label(node)}]"
        if node in self.progress:
            value, top = self.progress[node]
            pct = int(100 * value / top) if top else 0
            line += f" step {value}/{top} {pct}%"
        else:
            line += " running"
        text = one_line(self.text.get(node, ""))
        return line + (f" | {text}" if text else "")

    # -- output
    def _write(self, s: str) -> None:
        try:
            self.stream.write(s)
            self.stream.flush()
        except UnicodeEncodeError:  # a console that cannot show some character of a progress text
            enc = getattr(self.stream, "encoding", None) or "ascii"
            self.stream.write(s.encode(enc, "replace").decode(enc))
            self.stream.flush()

    def _columns(self) -> int:
        if self.width:
            return self.width
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
        return columns if columns > 0 else 100  # a pseudo terminal may report 0 columns

    def _draw(self) -> None:
        line = self.render()[:max(20, self._columns() - 1)]
        self._write("\r" + line + " " * max(0, self._live - len(line)))
        self._live = len(line)

    def _clear(self) -> None:
        if self._live:
            self._write("\r" + " " * self._live + "\r")
            self._live = 0

    def _flush_pending(self) -> None:
        if self._pending is not None:
            node, self._pending = self._pending, None
            self._write(self.render(node) + "\n")

    def message(self, text: str) -> None:
        """A line of its own (above the live line on a terminal)."""
        if self.quiet:
            return
        self._flush_pending()
        if self.tty and self._live:
            self._clear()
            self._write(text + "\n")
            self._draw()
        else:
            self._write(text + "\n")

    def close(self) -> None:
        """End the progress display (the live line stays on screen)."""
        if self.quiet:
            return
        self._flush_pending()
        if self._live:
            self._write("\n")
            self._live = 0

    # -- events
    def __call__(self, kind: str, data: dict) -> None:
        if self.quiet:
            return
        node = data.get("node")
        node = None if node is None else str(node)
        if not (kind == "progress_text" and node == self._pending):
            self._flush_pending()
        changed = False
        if kind == "executing" and node is not None:
            self.node, changed = node, True
            self.progress.pop(node, None)
            self.text.pop(node, None)
            self._bucket.pop(node, None)
            if not self.tty:
                self._write(self.render() + "\n")
        elif kind == "execution_cached" and data.get("nodes"):
            self.note, changed = f"cached: {', '.join(map(str, data['nodes']))}", True
            if not self.tty:
                self._write(f"{_clock(self.clock() - self.start)} {self.note}\n")
        elif kind == "progress" and node is not None:
            value, top = data.get("value") or 0, data.get("max") or 0
            last = self.progress.get(node)
            self.progress[node] = (value, top)
            self.node, changed = node, True
            bucket = int(10 * value / top) if top else 0
            if last is not None and (value < last[0] or top != last[1]):  # a new bar: count from here
                self._bucket[node] = bucket
            elif bucket > self._bucket.get(node, 0):
                self._bucket[node] = bucket
                if not self.tty:
                    self._pending = node  # printed with the progress text that follows, or on the next event
        elif kind == "progress_text" and node is not None:
            self.text[node] = data.get("text") or ""
            changed = node == self.node
            if node == self._pending:
                self._flush_pending()
        elif kind in ("execution_success", "execution_error", "execution_interrupted") or (
                kind == "executing" and node is None):
            self._flush_pending()
        if self.tty and changed:
            self._draw()


# ----------------------------------------------------------------------------------------------------------------
# command line

EPILOG = """\
examples:
  # the node ids and inputs of a workflow (no server needed)
  python workflows/run_api.py --workflow workflows/api/hallo3_portrait_to_video.json --list
  # run it: ID is a node id from that list (a LoadImage, a LoadAudio, the HalloDiTDenoise)
  python workflows/run_api.py --server http://127.0.0.1:8188 \\
      --workflow workflows/api/hallo3_portrait_to_video.json \\
      --upload ID.image=portrait.jpg --upload ID.audio=speech.wav --set ID.steps=30 --out downloads/

--list shows links as <NODE:OUTPUT> and strings in quotes; give --set a string without the quotes.
Progress goes to stderr; the downloaded files' paths go to stdout, one a line.

exit status:
""" + "\n".join(textwrap.fill(text, 100, initial_indent=f"  {code:<4} ", subsequent_indent=" " * 7)
                for code, text in EXIT_CODES)


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_api.py", description=__doc__.split("\n\n")[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI address (default %(default)s)")
    p.add_argument("--workflow", required=True, help="API-format workflow JSON (ComfyUI's 'Export (API)')")
    p.add_argument("--list", action="store_true",
                   help="print the workflow's nodes (id, class_type, input=value ...) after any --set, and exit "
                        "without contacting the server")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE_ID.input=VALUE",
                   help="change an input that the workflow has; the value keeps its type (repeatable)")
    p.add_argument("--upload", dest="uploads", action="append", default=[], metavar="[NODE_ID.input=]FILE",
                   help="upload a file to the input folder, optionally setting an input to its name (repeatable)")
    p.add_argument("--out", default="downloads", help="folder for the downloaded outputs (default %(default)s)")
    p.add_argument("--timeout", type=_positive, default=None, metavar="SECONDS",
                   help="give up (and cancel the prompt) after this many seconds from submitting it")
    p.add_argument("--include-previews", action="store_true", help="also download temp previews")
    p.add_argument("--quiet", action="store_true", help="print only errors and the downloaded paths")
    return p


def _prepare(args) -> tuple[dict, list, list[str]]:
    """The workflow with --set applied, the parsed uploads, and the argument errors (one line each)."""
    prompt = load_api_workflow(args.workflow)
    errors = []
    for text in args.sets:
        try:
            node_id, name, raw = parse_assignment(text)
            set_input(prompt, node_id, name, raw)
        except ValueError as e:
            errors.append(f"--set {text}: {e}")
    uploads = []
    for text in args.uploads:
        try:
            (node_id, name, path), = parse_uploads([text])
            if node_id is not None:
                check_target(prompt, node_id, name)
            if not args.list and not Path(path).is_file():
                raise ValueError(f"upload file not found: {path}")
            uploads.append((node_id, name, path))
        except ValueError as e:
            errors.append(f"--upload {text}: {e}")
    return prompt, uploads, errors


def _cancel_quietly(client: ComfyClient, prompt_id: str | None) -> str:
    if not prompt_id:
        return ""
    try:
        client.cancel(prompt_id)
        return f"; cancelled prompt {prompt_id} on the server"
    except ComfyError as e:
        return f"; could not cancel prompt {prompt_id}: {e}"


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    err = sys.stderr
    try:
        prompt, uploads, errors = _prepare(args)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=err)
        return EXIT_USAGE
    if errors:
        for line in errors:  # nothing was sent
            print(f"error: {line}", file=err)
        return EXIT_USAGE
    if args.list:
        for line in list_nodes(prompt):
            print(line)
        return EXIT_OK

    client = ComfyClient(args.server)
    printer = ProgressPrinter(prompt, stream=err, quiet=args.quiet)
    say = printer.message
    started = time.monotonic()
    prompt_id = None
    try:
        for node_id, name, path in uploads:
            info = client.upload(path)
            stored = f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]
            say(f"uploaded {path} -> input/{stored}")
            if node_id is not None:
                set_input(prompt, node_id, name, stored, literal=True)
        ws = client.open_ws()
        try:
            answer = client.queue_prompt(prompt)
            prompt_id = answer["prompt_id"]
            if answer.get("node_errors"):  # queued with only some outputs valid: not what the user asked for
                _cancel_quietly(client, prompt_id)
                prompt_id = None
                raise PromptRejected(200, answer)
            say(f"queued prompt {prompt_id}")
            result = client.follow(ws, prompt_id, timeout=args.timeout, on_event=printer)
        finally:
            ws.close()
        printer.close()
        if result["status"] != "success":
            prompt_id = None  # finished: nothing to cancel
            raise ExecutionFailed(result["status"], result["data"])
        entry = client._wait_history(prompt_id)
        prompt_id = None
        if not entry:
            raise ComfyError("the prompt finished but /history has no entry for it")
        types = ("output", "temp") if args.include_previews else ("output",)
        paths = client.download_outputs(entry, args.out, types)
        if not args.quiet:
            n = len(paths)
            print(f"done in {_clock(time.monotonic() - started)}: {n} output file{'' if n == 1 else 's'}"
                  + (":" if n else ""), file=err, flush=True)
        for p in paths:
            print(p, flush=True)
        if not paths:
            print("warning: the workflow produced no output files", file=err)
        return EXIT_OK
    except PromptRejected as e:
        printer.close()
        head, *lines = str(e).splitlines()
        print(f"error: prompt rejected by the server: {head}", file=err)
        for line in lines:
            print(line, file=err)
        return EXIT_REJECTED
    except ExecutionFailed as e:
        printer.close()
        print(f"error: {e}", file=err)
        return EXIT_EXECUTION
    except ExecutionTimeout as e:
        printer.close()
        print(f"error: {e}{_cancel_quietly(client, prompt_id)}", file=err)
        return EXIT_TIMEOUT
    except KeyboardInterrupt:
        printer.close()
        if prompt_id:
            try:
                client.cancel(prompt_id)
                print(f"\ninterrupted prompt {prompt_id} on the server", file=err)
            except ComfyError as e:
                print(f"\ncould not interrupt prompt {prompt_id}: {e}", file=err)
        return EXIT_CTRL_C
    except ServerUnreachable as e:
        printer.close()
        print(f"error: {e}", file=err)
        return EXIT_UNREACHABLE
    except ComfyError as e:
        printer.close()
        print(f"error: {e}", file=err)
        return EXIT_FAILED
    except OSError as e:  # the connection dropped mid-run (server stopped or crashed)
        printer.close()
        if not _network_error(e):
            print(f"error: {e}", file=err)
            return EXIT_FAILED
        print(f"error: lost the connection to ComfyUI at {client.base}: {e}", file=err)
        return EXIT_UNREACHABLE


if __name__ == "__main__":
    for _stream in (sys.stdout, sys.stderr):  # a progress text the console's code page lacks must not crash us
        try:
            _stream.reconfigure(errors="replace")
        except (AttributeError, ValueError):
            pass
    sys.exit(main())
