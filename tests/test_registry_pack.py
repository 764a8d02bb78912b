"""Registry packaging: `comfy node validate` passes and `comfy node pack` ships what the pack needs, nothing else."""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import REPO

COMFY = shutil.which("comfy", path=os.path.dirname(sys.executable)) or shutil.which("comfy")


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    if COMFY is None:
        pytest.fail("comfy-cli is missing: pip install -r requirements-dev.txt")
    clone = tmp_path_factory.mktemp("pack") / "hallo-nodes"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    # The working tree's uncommitted files too, so the test checks what is about to be committed.
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        if (REPO / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)
    subprocess.run(["git", "add", "-A"], cwd=clone, check=True)
    env = {**os.environ, "HOME": str(clone.parent / "home")}  # no user config, no telemetry prompt
    run = lambda *args: subprocess.run([COMFY, "--skip-prompt", *args], cwd=clone, env=env, capture_output=True,  # noqa: E731
                                       text=True, stdin=subprocess.DEVNULL, timeout=300)
    return clone, run


def test_comfy_node_validate_passes(packed):
    clone, run = packed
    result = run("node", "validate")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout + result.stderr


def test_comfy_node_pack_ships_the_runtime_and_nothing_else(packed):
    clone, run = packed
    result = run("node", "pack")
    assert result.returncode == 0, result.stdout + result.stderr
    with zipfile.ZipFile(clone / "node.zip") as archive:
        names = set(archive.namelist())
    for needed in ("__init__.py", "pyproject.toml", "requirements.txt", "LICENSE", "README.md", "web/hallo.js",
                   "nodes/__init__.py", "nodes/dit_denoise.py", "hallo_core/hallo3/backbone.py", "hallo_core/render/engine.py",
                   "hallo_core/hallo3/transformer.py", "workflows/Hallo3 - portrait and speech to talking video.json",
                   "workflows/api/hallo3_portrait_to_video.json", "workflows/run_api.py"):
        assert needed in names, needed
    assert not [n for n in names if n.startswith(("tests/", "bench/", ".ci/")) or "__pycache__" in n
                or n.endswith((".pyc", ".zip")) or n == "requirements-dev.txt"]
