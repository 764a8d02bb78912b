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

    def front_end_files(self) -> dict[str, str | None]:
        """The speech and face front-end files every backbone's layout shares, as file-set fields."""
        return {
            "wav2vec": self.need("wav2vec/wav2vec2-base-960h", "wav2vec2 audio encoder", is_dir=True),
            "face_models": self.need("face_analysis/models", "InsightFace face models", is_dir=True),
            "vocal_separator": self.optional("audio_separator/Kim_Vocal_2.onnx"),
            "face_landmarker": self.optional("face_analysis/models/face_landmarker_v2_with_blendshapes.task"),
        }


def require_vocal_separator(path: str | None, download_hint: str | None = None) -> str:
    """The vocal separator's file, or the one-line error saying where it goes and how to do without it."""
    if path is None or not os.path.isfile(path):
        where = f" (download with: {download_hint})" if download_hint else ""
        raise ModelFileError(f"vocal separation needs audio_separator/Kim_Vocal_2.onnx in the models folder{where}, "
                             "or turn it off with --no-vocal-separation")
    return path
