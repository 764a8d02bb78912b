"""Drive a real ComfyUI from tests: start a server with our pack, run prompts over HTTP + websocket, open the UI.

The ComfyUI install is found through the environment (see docs/comfyui_testing.md):
    COMFYUI_PATH    a ComfyUI checkout (required; tests skip without it)
    COMFYUI_PYTHON  its interpreter (default: comfy-venv beside COMFYUI_PATH, else venv/.venv inside it)
    CHROMIUM        the browser for UI tests (default: chromium / chromium-browser / google-chrome on PATH)
    COMFYUI_FRONTEND_ROOT  optional: serve this unpacked frontend (a comfyui-frontend-package's static/ folder)
                    instead of the installed one, to check the workflows and the extension in a newer frontend

Each server runs in its own run directory (`--base-directory`, so nothing of the user's ComfyUI custom_nodes,
models, input or output is used): custom_nodes/<pack_name> is a symlink to the pack root, extra_model_paths.yaml
points every model folder at a models root, and the log is run_dir/comfy.log. HTTP and websocket calls go through
`ComfyClient` of workflows/run_api.py, the stdlib client our users get, so the tests exercise it too.
Only the standard library is used here; the browser is driven over the DevTools protocol with the same websocket.
"""
from __future__ import annotations

import atexit
import base64
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _load_run_api():
    spec = importlib.util.spec_from_file_location("hallo_run_api", REPO / "workflows" / "run_api.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


run_api = _load_run_api()
ComfyClient = run_api.ComfyClient
ComfyError = run_api.ComfyError
PromptRejected = run_api.PromptRejected
ExecutionTimeout = run_api.ExecutionTimeout
WebSocket = run_api.WebSocket

# Node types the frontend provides itself; they never reach /object_info or an API prompt.
UI_ONLY_NODE_TYPES = frozenset({"Note", "MarkdownNote", "PrimitiveNode", "Reroute"})

# ComfyUI's command-line flags for a test server (directories come from the run dir)
SERVER_FLAGS = ("--cpu", "--disable-auto-launch", "--preview-method", "auto")


# ----------------------------------------------------------------------------------------------------------------
# locating ComfyUI


def comfyui_path() -> Path | None:
    """COMFYUI_PATH if it is set and holds ComfyUI's main.py, else None."""
    p = os.environ.get("COMFYUI_PATH")
    if not p:
        return None
    p = Path(p).expanduser().resolve()
    if not (p / "main.py").is_file():
        raise FileNotFoundError(f"COMFYUI_PATH={p} has no main.py: point it at a ComfyUI checkout")
    return p


def comfyui_python(comfy: Path) -> Path:
    """COMFYUI_PYTHON, else the venv beside or inside the ComfyUI checkout."""
    if os.environ.get("COMFYUI_PYTHON"):
        return Path(os.environ["COMFYUI_PYTHON"]).expanduser()
    for cand in (comfy.parent / "comfy-venv", comfy / "venv", comfy / ".venv"):
        if (cand / "bin" / "python").exists():
            return cand / "bin" / "python"
    raise FileNotFoundError(f"no Python environment found for {comfy}: set COMFYUI_PYTHON "
                            "(tests/comfyui/setup_comfyui.sh creates comfy-venv beside it)")


def comfyui_commit(comfy: Path) -> str:
    """The ComfyUI commit: COMFYUI_COMMIT written by setup_comfyui.sh, else git, else 'unknown'."""
    f = comfy / "COMFYUI_COMMIT"
    if f.is_file():
        return f.read_text().strip()
    try:
        return subprocess.run(["git", "-C", str(comfy), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_extra_model_paths(path: Path, models_root: Path, extra: dict[str, list[str]] | None = None) -> None:
    """extra_model_paths.yaml with one section: every subfolder of models_root becomes the folder key of the
    same name (checkpoints, vae, diffusion_models, audio_encoders, upscale_models, insightface, ...), searched
    before ComfyUI's defaults. `extra` adds keys mapping to absolute or models_root-relative paths."""
    keys = {d.name: [d.name] for d in sorted(models_root.iterdir()) if d.is_dir()} if models_root.is_dir() else {}
    for k, paths in (extra or {}).items():
        keys.setdefault(k, []).extend(str(p) for p in paths)
    lines = ["hallo_tests:", f"    base_path: {json.dumps(str(models_root))}", "    is_default: true"]
    lines += [f"    {json.dumps(k)}: {json.dumps(chr(10).join(v))}" for k, v in keys.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------
# server


_RUNNING: list = []  # every server started by this process: stopped at exit whatever happens to the tests


def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop(timeout=5.0)


atexit.register(_stop_all)


def frontend_flags() -> list[str]:
    root = os.environ.get("COMFYUI_FRONTEND_ROOT")
    if not root:
        return []
    if not (Path(root) / "index.html").is_file():
        raise FileNotFoundError(f"COMFYUI_FRONTEND_ROOT={root} has no index.html: point it at the static/ folder of "
                                "an unpacked comfyui-frontend-package wheel")
    return ["--front-end-root", str(Path(root).resolve())]


class ComfyServer:
    """One ComfyUI server process. Use `ComfyServer.start(...)` (or as a context manager) and `stop()`."""

    def __init__(self, proc, run_dir: Path, port: int, comfy: Path, python: Path):
        self.proc, self.run_dir, self.port, self.comfy, self.python = proc, run_dir, port, comfy, python
        self.url = f"http://127.0.0.1:{port}"
        self.client = ComfyClient(self.url)
        self.log_path = run_dir / "comfy.log"
        self.input_dir, self.output_dir = run_dir / "input", run_dir / "output"
        self.startup_seconds = None

    @classmethod
    def start(cls, run_dir: str | Path, *, comfy: Path | None = None, python: Path | None = None,
              pack_dir: Path | None = REPO, pack_name: str = "hallo-nodes", models_root: Path | None = None,
              extra_model_paths: dict[str, list[str]] | None = None, extra_args: tuple = (),
              startup_timeout: float = 180.0, env: dict | None = None) -> "ComfyServer":
        """Start ComfyUI in run_dir (created) on a free loopback port and wait until it answers.
        pack_dir=None starts ComfyUI with core nodes only."""
        comfy = comfy or comfyui_path()
        if comfy is None:
            raise FileNotFoundError("COMFYUI_PATH is not set")
        python = python or comfyui_python(comfy)
        run_dir = Path(run_dir).resolve()
        for sub in ("custom_nodes", "input", "output", "temp", "models", "user/default"):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)
        if pack_dir is not None:
            link = run_dir / "custom_nodes" / pack_name
            if not link.exists():
                link.symlink_to(Path(pack_dir).resolve(), target_is_directory=True)
        settings = run_dir / "user" / "default" / "comfy.settings.json"
        if not settings.exists():  # no first-run tutorial dialog over the canvas
            settings.write_text(json.dumps({"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}))
        models_root = Path(models_root).resolve() if models_root else run_dir / "models"
        yaml_path = run_dir / "extra_model_paths.yaml"
        write_extra_model_paths(yaml_path, models_root, extra_model_paths)

        run_env = dict(os.environ)
        for k in ("VIRTUAL_ENV", "PYTHONHOME"):  # the test runner's venv must not leak into ComfyUI's
            run_env.pop(k, None)
        run_env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                        "DO_NOT_TRACK": "1", "HF_HUB_DISABLE_TELEMETRY": "1"})
        run_env.update(env or {})
        last_error = None
        for _attempt in range(3):  # the free port can be taken between free_port() and bind: retry
            port = free_port()
            cmd = [str(python), str(comfy / "main.py"), *SERVER_FLAGS, "--listen", "127.0.0.1", "--port", str(port),
                   "--base-directory", str(run_dir),
                   "--input-directory", str(run_dir / "input"), "--output-directory", str(run_dir / "output"),
                   "--temp-directory", str(run_dir / "temp"), "--user-directory", str(run_dir / "user"),
                   "--database-url", f"sqlite:///{run_dir / 'user' / 'comfyui.db'}",
                   "--extra-model-paths-config", str(yaml_path), *frontend_flags(), *map(str, extra_args)]
            log = open(run_dir / "comfy.log", "ab")
            log.write(f"\n$ {' '.join(cmd)}\n".encode())
            log.flush()
            t0 = time.monotonic()
            proc = subprocess.Popen(cmd, cwd=str(comfy), stdout=log, stderr=subprocess.STDOUT, env=run_env,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            log.close()
            server = cls(proc, run_dir, port, comfy, python)
            _RUNNING.append(server)
            try:
                server.wait_ready(startup_timeout)
                server.startup_seconds = time.monotonic() - t0
                return server
            except ComfyError as e:
                last_error = e
                server.stop()
                if "address already in use" not in server.log_tail(30).lower():
                    break
        raise last_error

    def wait_ready(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI exited with code {self.proc.returncode} during startup; "
                                 f"log {self.log_path}:\n{self.log_tail(60)}")
            try:
                with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                        self.url + "/system_stats", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise ComfyError(f"ComfyUI did not answer within {timeout} s; log {self.log_path}:\n{self.log_tail(60)}")

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            return False
        try:
            self.client.system_stats()
            return True
        except ComfyError:
            return False

    # -- API (thin wrappers over ComfyClient)
    def object_info(self, node_class: str | None = None) -> dict:
        return self.client.object_info(node_class)

    def submit(self, prompt: dict, extra_data: dict | None = None) -> dict:
        """POST /prompt -> {"prompt_id", "number", "node_errors"}; PromptRejected on HTTP 400."""
        return self.client.queue_prompt(prompt, extra_data=extra_data)

    def run(self, prompt: dict, timeout: float = 120.0, on_event=None, extra_data: dict | None = None,
            allow_partial: bool = False) -> dict:
        """Submit, follow the websocket, return {"prompt_id", "status", "data", "events", "history"}.
        A run that exceeds `timeout` is cancelled on the server, then ExecutionTimeout is raised."""
        ws = self.client.open_ws()
        try:
            answer = self.submit(prompt, extra_data=extra_data)
            prompt_id = answer["prompt_id"]
            if answer.get("node_errors") and not allow_partial:
                self.client.cancel(prompt_id)
                raise PromptRejected(200, answer)
            try:
                result = self.client.follow(ws, prompt_id, timeout=timeout, on_event=on_event)
            except ExecutionTimeout:
                self.client.cancel(prompt_id)
                raise
        finally:
            ws.close()
        result["prompt_id"] = prompt_id
        result["history"] = self.client._wait_history(prompt_id)
        return result

    def interrupt(self, prompt_id: str | None = None) -> None:
        self.client.interrupt(prompt_id)

    def history(self, prompt_id: str) -> dict | None:
        return self.client.history(prompt_id)

    def download_outputs(self, history_entry: dict, out_dir: str | Path, folder_types=("output",)) -> list[Path]:
        return self.client.download_outputs(history_entry, out_dir, folder_types)

    def upload(self, path: str | Path, name: str | None = None) -> str:
        """Upload into input/ (overwriting); returns the name to put into a LoadImage/LoadAudio input."""
        return self.client.upload(path, name=name)["name"]

    # -- log and shutdown
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 200) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def import_failures(self) -> list[str]:
        """Log lines of custom-node modules that failed to import."""
        return [ln for ln in self.log_text().splitlines() if "IMPORT FAILED" in ln or "Cannot import" in ln]

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (then SIGKILL) to the server's own process group; returns its exit code."""
        if self in _RUNNING:
            _RUNNING.remove(self)
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# ----------------------------------------------------------------------------------------------------------------
# headless Chromium over the DevTools protocol


def find_chromium() -> str | None:
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """A headless Chromium with one page, driven over the DevTools protocol (CDP)."""

    def __init__(self, binary: str | None = None, width: int = 1600, height: int = 1000, timeout: float = 60.0):
        self.binary = binary or find_chromium()
        if not self.binary:
            raise FileNotFoundError("no chromium found (Debian: apt-get install chromium; or set CHROMIUM)")
        self.profile = Path(tempfile.mkdtemp(prefix="hallo-chromium-"))
        self.log_path = self.profile / "chromium.log"
        cmd = [self.binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", "--no-default-browser-check", "--mute-audio", "--remote-debugging-port=0",
               "--remote-allow-origins=*", f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
               "about:blank"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self._id = 0
        self.console: list[str] = []  # console errors and uncaught exceptions of the page
        self.ws = None
        try:
            port = self._devtools_port(timeout)
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
            self.ws = WebSocket.connect(pages[0]["webSocketDebuggerUrl"], timeout=timeout)
            self.call("Page.enable")
            self.call("Runtime.enable")
        except Exception:
            self.close()
            raise

    def _devtools_port(self, timeout: float) -> int:
        f = self.profile / "DevToolsActivePort"
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if f.is_file():
                first = f.read_text().split("\n")[0].strip()
                if first.isdigit():
                    return int(first)
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    def call(self, method: str, params: dict | None = None, timeout: float = 60.0) -> dict:
        """Send one CDP command and wait for its answer (events seen meanwhile are recorded)."""
        self._id += 1
        my_id = self._id
        self.ws.send_text(json.dumps({"id": my_id, "method": method, "params": params or {}}))
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"CDP {method} timed out")
            msg = json.loads(self.ws.recv(timeout=left))
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"CDP {method}: {msg['error']}")
                return msg.get("result", {})
            self._on_event(msg)

    def _on_event(self, msg: dict) -> None:
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.console.append(f"exception: {d.get('text')} {(d.get('exception') or {}).get('description', '')}")
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.console.append("console.error: " + " ".join(str(a.get("value", a.get("description", "")))
                                                             for a in p.get("args", [])))

    def evaluate(self, expression: str, timeout: float = 60.0):
        """Evaluate JS in the page (promises awaited) and return its JSON value; JS exceptions raise."""
        r = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True,
                                           "timeout": int(timeout * 1000)}, timeout=timeout + 5)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise RuntimeError(f"JS error: {(d.get('exception') or {}).get('description') or d.get('text')}")
        return r.get("result", {}).get("value")

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})

    def wait_for(self, js_condition: str, timeout: float = 60.0, what: str = "condition") -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if self.evaluate(f"!!({js_condition})", timeout=10):
                    return
            except RuntimeError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"page: {what} not reached within {timeout} s ({'; '.join(self.console[-5:])})")

    def screenshot(self, path: str | Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_NODE_REPORT_JS = """(() => {
  const defs = window.__halloNodeDefs || {};
  const nodes = (app.graph._nodes || app.graph.nodes || []).map(n => ({
    id: n.id, type: n.type, title: n.title, mode: n.mode,
    has_errors: !!n.has_errors,
    backend: !!(n.constructor && n.constructor.nodeData),
    registered: (n.type in defs) || !!(n.constructor && n.constructor.nodeData) || %s.includes(n.type),
    widgets: (n.widgets || []).map(w => ({name: w.name, value: (typeof w.value === 'object') ? null : w.value})),
  }));
  return nodes;
})()"""


def open_ui(browser: Chromium, server_url: str, timeout: float = 90.0) -> list[str]:
    """Load ComfyUI's page and wait until the app and its node definitions are ready. Returns the page's console
    errors and uncaught exceptions so far. A broken web extension shows up with its script path
    (/extensions/<pack>/...) or as "Error calling extension '<registered name>' method ..."; frontend 1.27.10
    always adds one TypeError "reading 'id'" of its own while registering settings."""
    browser.console.clear()
    browser.navigate(server_url + "/")
    browser.wait_for("window.app && window.app.graph && window.app.canvas", timeout, "ComfyUI app ready")
    browser.evaluate("fetch('/object_info').then(r => r.json()).then(d => { window.__halloNodeDefs = d; "
                     "return Object.keys(d).length; })", timeout=timeout)
    return list(browser.console)


def load_workflow_in_ui(browser: Chromium, workflow: dict, screenshot: str | Path | None = None,
                        settle_seconds: float = 1.0) -> dict:
    """app.loadGraphData(workflow) in an open UI (see open_ui) and report what the frontend made of it:
    {"nodes": [{id, type, title, mode, has_errors, backend, registered, widgets}], "missing": [types not known to
    the server or the frontend], "errors": [ids of nodes drawn red], "console": [page errors], "screenshot": path}.
    """
    browser.console.clear()
    browser.evaluate(f"(async () => {{ await app.loadGraphData({json.dumps(workflow)}, true, true, null, "
                     "{showMissingNodesDialog: false, showMissingModelsDialog: false}); return true; })()")
    time.sleep(settle_seconds)  # let extensions' nodeCreated hooks and the canvas draw
    browser.evaluate("app.canvas.setDirty(true, true); app.canvas.draw(true, true); true")
    nodes = browser.evaluate(_NODE_REPORT_JS % json.dumps(sorted(UI_ONLY_NODE_TYPES)))
    report = {
        "nodes": nodes,
        "missing": sorted({n["type"] for n in nodes if not n["registered"]}),
        "errors": [n["id"] for n in nodes if n["has_errors"]],
        "console": list(browser.console),
        "screenshot": None,
    }
    if screenshot:
        report["screenshot"] = str(browser.screenshot(screenshot))
    return report


def graph_to_prompt(browser: Chromium) -> dict:
    """The API prompt the frontend builds from the loaded graph (what 'Queue' / 'Export (API)' send)."""
    return browser.evaluate("app.graphToPrompt().then(p => p.output)")
