import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"
GOLDEN = FIXTURES / "golden"
PORTRAITS = FIXTURES / "portraits"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        pytest.fail(f"golden fixtures missing at {GOLDEN}")
    return GOLDEN


@pytest.fixture(scope="session")
def portraits_dir() -> Path:
    if not PORTRAITS.is_dir():
        pytest.fail(f"portrait fixtures missing at {PORTRAITS}")
    return PORTRAITS


def python_env() -> dict:
    """Environment for subprocesses that import the repository's packages."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env
