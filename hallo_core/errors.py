"""Errors a user can fix.

Every problem caused by an input (a model file, an image, an audio file, a command-line option) is raised as a
`HalloError` whose message is one line that says what is wrong and how to fix it. The command line prints that line
and exits non-zero; the ComfyUI nodes show it in the UI. Anything else is a bug and keeps its traceback.
"""


class HalloError(Exception):
    """A user-fixable problem; `str(error)` is a single line that names the fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class ModelFileError(HalloError):
    """A model file is missing, unreadable, or does not hold what it should."""


class UnsafeCheckpointError(ModelFileError):
    """A checkpoint would need to run code to load; it is refused."""


class InputError(HalloError):
    """An input image, audio file or option cannot be used as given."""


class OutputError(HalloError):
    """An output file or folder cannot be written (missing or read-only folder, full disk, a busy render folder)."""


class RenderCancelled(HalloError):
    """The user (or ComfyUI) cancelled a render; finished clips are kept."""


class OutOfMemory(HalloError):
    """The device ran out of memory; the message names a lighter setting."""
