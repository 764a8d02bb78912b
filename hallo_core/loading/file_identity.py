"""Cheap identity of model files, for render keys: a render directory is reused only with the same weights."""

from __future__ import annotations

import os


def file_identity(paths: dict[str, str | None]) -> dict:
    """Absolute path, size and modification time of each named file or folder (missing ones are left out)."""
    identity = {}
    for name, path in sorted(paths.items()):
        if path and os.path.exists(path):
            stat = os.stat(path)
            identity[name] = [os.path.abspath(path), stat.st_size, int(stat.st_mtime)]
    return identity
