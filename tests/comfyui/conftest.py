"""Fixtures for tests against a real ComfyUI server; everything here skips (with the reason shown by -ra) when
COMFYUI_PATH is not set, which is the case in CI. Setup: tests/comfyui/setup_comfyui.sh, docs/comfyui_testing.md.

Session fixtures:
  comfyui_install     (path, python) of the ComfyUI to use
  comfy_models_root   models folder every server searches first (subfolders become folder keys); override this
                      fixture in a conftest to point servers at real tiny models
  comfy_core_server   ComfyUI with core nodes only (harness proofs, core-node schema extraction)
  comfy_server        ComfyUI with our pack symlinked into custom_nodes
  chromium            a headless Chromium (skips when none is installed)
  tiny_upscale_model  file name of a random-weight RealESRGAN-Compact model in upscale_models (slow enough to
                      interrupt: ~32 ms per 512-px tile on 2 cores, 13.6 s for core_graphs.slow_upscale)
A failing test that used a server gets the tail of that server's log in its report.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import core_graphs  # noqa: E402
import harness  # noqa: E402

SKIP_REASON = ("COMFYUI_PATH is not set: real-ComfyUI tests skipped "
               "(set up one with tests/comfyui/setup_comfyui.sh, see docs/comfyui_testing.md)")
SHARED = harness.REPO.parent / "shared" / "fixtures"
MODEL_FOLDERS = ("checkpoints", "vae", "text_encoders", "diffusion_models", "audio_encoders", "upscale_models")


@pytest.fixture(scope="session")
def comfyui_install() -> tuple[Path, Path]:
    try:
        path = harness.comfyui_path()
    except FileNotFoundError as e:
        pytest.fail(str(e))
    if path is None:
        pytest.skip(SKIP_REASON)
    if not SHARED.is_dir():
        pytest.skip(f"the shared fixtures are missing ({SHARED}): real-ComfyUI tests need the portraits beside the "
                    "repository")
    try:
        python = harness.comfyui_python(path)
    except FileNotFoundError as e:
        pytest.fail(str(e))
    return path, python


@pytest.fixture(scope="session")
def comfy_models_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("comfy_models")
    for sub in MODEL_FOLDERS:
        (root / sub).mkdir()
    return root


def pytest_sessionfinish(session, exitstatus):
    harness._stop_all()  # a server whose fixture never got to its teardown


def _start(install, models_root, run_dir, pack_dir):
    comfy, python = install
    return harness.ComfyServer.start(run_dir, comfy=comfy, python=python, pack_dir=pack_dir, models_root=models_root)


@pytest.fixture(scope="session")
def comfy_core_server(comfyui_install, comfy_models_root, tmp_path_factory):
    server = _start(comfyui_install, comfy_models_root, tmp_path_factory.mktemp("comfy_core_run"), None)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def comfy_server(comfyui_install, comfy_models_root, tmp_path_factory):
    server = _start(comfyui_install, comfy_models_root, tmp_path_factory.mktemp("comfy_run"), harness.REPO)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def chromium():
    if harness.find_chromium() is None:
        pytest.skip("no chromium installed: browser-UI tests skipped (Debian: apt-get install chromium)")
    browser = harness.Chromium()
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def tiny_upscale_model(comfy_models_root) -> str:
    return core_graphs.write_tiny_upscale_model(comfy_models_root / "upscale_models")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        for name in ("comfy_server", "comfy_core_server"):
            server = getattr(item, "funcargs", {}).get(name)
            if server is not None:
                rep.sections.append((f"ComfyUI log tail ({server.log_path})", server.log_tail(150)))
