"""An official `pretrained_models/` download: the files each backbone's layout holds, found or refused in one line."""

from __future__ import annotations

import os

from ..errors import ModelFileError


class OfficialFolder:
    """`need` a file or folder of the layout (a one-line error naming the download command when it is missing) or
    take an `optional` one."""

    def __init__(self, root: str | os.PathLike, download_hint: str):
        self.root = os.fspath(root)
        self.hint = download_hint
        if not os.path.isdir(self.root):
            raise ModelFileError(f"models folder not found: {self.root} (download with: {download_hint})")

    def need(self, relative: str, what: str, is_dir: bool = False) -> str:
        path = os.path.join(self.root, relative)
        if not (os.path.isdir(path) if is_dir else os.path.isfile(path)):
            raise ModelFileError(f"{what} missing: expected {path} (download with: {self.hint})")
        return path

    def optional(self, relative: str) -> str | None:
        path = os.path.join(self.root, relative)
        return path if os.path.exists(path) else None
