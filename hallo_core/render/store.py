"""The render directory: every finished clip is kept and verified, so a stopped render resumes where it stopped.

Layout:
    manifest.json             the format, a key over every input and option that changes a frame, and per clip the
                              size and SHA-256 of its two files
    clip_00000.mkv ...        each finished clip's new frames, lossless (FFV1), 8-bit as the MP4 gets them
    state_00000.safetensors   each finished clip's continuation: its last decoded frames (float) and whatever else the
                              backbone's next clip needs; kept for every clip, so any damaged clip can be redone exactly
    lock                      held while a render writes here

A clip counts as finished when both files exist and match their manifest record. Order of a save: the state file
(atomic), the clip file under a temporary name, the manifest record (atomic), then the clip file's rename; a render
stopped at any moment (interrupt, kill, crash, power cut after the page cache was written) leaves at most one
unfinished clip, which is rendered again. A damaged or missing file is detected when the clip would be reused, and the
clip is rendered again, with a note saying so. A directory with another key or an older format is cleared (only our
files) before reuse, never mixed. A second render into the same directory at the same time is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..errors import OutputError
from ..media.video import folder_writable, partial_path, read_clip_frames, write_clip_frames, write_failure
from .backbone import Continuation

FORMAT = 2
_OURS = re.compile(r"(clip_\d{5}\.mkv|state_\d{5}\.safetensors|motion_\d{5}\.safetensors|manifest\.json|segment\.mp4)"
                   r"|.*\.partial(\..*)?")


def file_digest(path: str) -> tuple[str, int]:
    """(SHA-256, size in bytes) of a file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def write_atomically(path: str, data: bytes) -> None:
    """`data` into `path` through a temporary file, synced and renamed: all of it or nothing under the name."""
    temporary = path + ".partial"
    try:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as error:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise write_failure(path, error) from None


class _DirectoryLock:
    """An exclusive lock on `<directory>/lock` for this process (fcntl on POSIX, msvcrt on Windows)."""

    def __init__(self, directory: str):
        self.path = os.path.join(directory, "lock")
        self.handle = open(self.path, "a+")
        try:
            if os.name == "nt":  # pragma: no cover - Windows
                import msvcrt

                msvcrt.locking(self.handle.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.close()
            raise OutputError(f"another render is writing into {directory} right now; wait for it to finish or "
                              "give this render another render folder") from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()

    def release(self) -> None:
        if not self.handle.closed:
            self.handle.close()  # closing the file releases the lock


class RenderStore:
    """`with RenderStore(directory, key) as store: ...`; `store.notes` says what was found and redone."""

    def __init__(self, directory: str | os.PathLike, key: str, description: dict | None = None):
        self.directory = os.path.abspath(os.fspath(directory))
        self.key = key
        self.notes: list[str] = []
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as error:
            raise write_failure(self.directory, error) from None
        if not folder_writable(self.directory):
            raise OutputError(f"cannot write into the render folder {self.directory}; choose a folder you can write "
                              "to")
        self._lock = _DirectoryLock(self.directory)
        self._manifest_path = os.path.join(self.directory, "manifest.json")
        manifest = self._read_manifest()
        if manifest is not None and manifest.get("format") != FORMAT:
            self.notes.append(f"{self.directory} was made by another version of the pack; its clips are rendered "
                              "again")
            self._clear_files()
            manifest = None
        elif manifest is not None and manifest.get("key") != key:
            self._clear_files()
            manifest = None
        self.resumed = manifest is not None
        self.records: dict[str, dict] = manifest.get("clips", {}) if manifest else {}
        self.description = description or {}
        if manifest is None:
            self._write_manifest()

    # --- context management -----------------------------------------------------------------------------------------
    def __enter__(self) -> "RenderStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._lock.release()

    # --- files ------------------------------------------------------------------------------------------------------
    def clip_path(self, clip: int) -> str:
        return os.path.join(self.directory, f"clip_{clip:05d}.mkv")

    def state_path(self, clip: int) -> str:
        return os.path.join(self.directory, f"state_{clip:05d}.safetensors")

    def _read_manifest(self) -> dict | None:
        if not os.path.isfile(self._manifest_path):
            leftovers = [n for n in os.listdir(self.directory) if n.startswith(("clip_", "state_", "motion_"))]
            if leftovers:  # clip files without a manifest: not ours to trust
                self.notes.append(f"{self.directory} held clips without a manifest; they are rendered again")
                self._clear_files()
            return None
        try:
            with open(self._manifest_path) as f:
                manifest = json.load(f)
        except (OSError, ValueError):
            manifest = None
        if not isinstance(manifest, dict):
            self.notes.append(f"the manifest of {self.directory} was damaged; its clips are rendered again")
            self._clear_files()
            return None
        return manifest

    def _write_manifest(self) -> None:
        data = {"format": FORMAT, "key": self.key, **self.description, "clips": self.records}
        write_atomically(self._manifest_path, json.dumps(data, indent=1, default=str).encode())

    # --- clips ------------------------------------------------------------------------------------------------------
    def verified(self, clip: int) -> bool:
        """Whether clip `clip` is finished and both its files are intact; a damaged clip's files are removed and a
        note says it will be rendered again."""
        record = self.records.get(str(clip))
        if record is None:
            return False
        damaged = []
        for path, digest_key, size_key in ((self.clip_path(clip), "sha256", "bytes"),
                                           (self.state_path(clip), "state_sha256", "state_bytes")):
            if not os.path.isfile(path):
                damaged.append(f"{os.path.basename(path)} is missing")
            elif file_digest(path) != (record.get(digest_key), record.get(size_key)):
                damaged.append(f"{os.path.basename(path)} is damaged")
        if damaged:
            self.notes.append(f"clip {clip} of {self.directory}: {' and '.join(damaged)}; it is rendered again")
            self.forget(clip)
            return False
        return True

    def forget(self, clip: int) -> None:
        self.records.pop(str(clip), None)
        self._write_manifest()
        for path in (self.clip_path(clip), self.state_path(clip)):
            if os.path.exists(path):
                os.remove(path)

    def save_clip(self, clip: int, frames: np.ndarray, continuation: Continuation) -> None:
        """frames: uint8 (n, h, w, 3) the clip contributes; continuation: what the next clip starts from."""
        state = {"frames": continuation.frames.detach().to("cpu", torch.float32).contiguous(),
                 "end_frame": torch.tensor([continuation.end_frame])}
        for name, tensor in continuation.tensors.items():
            state[f"tensor.{name}"] = tensor.detach().to("cpu").contiguous()
        state_path = self.state_path(clip)
        write_atomically(state_path, save(state))
        final = self.clip_path(clip)
        temporary = partial_path(final)
        write_clip_frames(temporary, frames)  # itself atomic: writes temporary's own partial, then renames
        sha, size = file_digest(temporary)
        state_sha, state_size = file_digest(state_path)
        self.records[str(clip)] = {"sha256": sha, "bytes": size, "frames": int(frames.shape[0]),
                                   "state_sha256": state_sha, "state_bytes": state_size}
        self._write_manifest()
        os.replace(temporary, final)

    def clip_frames(self, clip: int) -> np.ndarray:
        """uint8 (n, h, w, 3) frames of a finished clip."""
        frames = read_clip_frames(self.clip_path(clip))
        expected = self.records.get(str(clip), {}).get("frames")
        if expected is not None and frames.shape[0] != expected:
            raise OutputError(f"{self.clip_path(clip)} holds {frames.shape[0]} frames instead of {expected}; it was "
                              "changed while rendering; run the render again to redo it")
        return frames

    def continuation(self, clip: int) -> Continuation:
        """The continuation saved with finished clip `clip`."""
        try:
            state = load_file(self.state_path(clip))
        except (OSError, SafetensorError) as error:
            raise OutputError(f"{self.state_path(clip)} cannot be read ({error}); run the render again to redo "
                              "that clip") from None
        tensors = {name[len("tensor."):]: value for name, value in state.items() if name.startswith("tensor.")}
        return Continuation(state["frames"], int(state["end_frame"][0]), tensors)

    def finished_clips(self) -> list[int]:
        return sorted(int(index) for index in self.records)

    # --- clearing ---------------------------------------------------------------------------------------------------
    def _clear_files(self) -> None:
        for name in os.listdir(self.directory):
            if _OURS.fullmatch(name):
                os.remove(os.path.join(self.directory, name))
        self.records = {}

    def clear(self) -> None:
        """Remove this store's files and, if nothing else is left, the directory (a user folder given as render
        directory keeps its other files)."""
        self._clear_files()
        self.close()
        lock = os.path.join(self.directory, "lock")
        if os.path.exists(lock):
            os.remove(lock)
        if not os.listdir(self.directory):
            os.rmdir(self.directory)
