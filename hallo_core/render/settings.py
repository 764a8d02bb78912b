"""Render settings: what is rendered with (steps, guidance, seed, motion frames), as opposed to how the engine runs
(runtime/options.py). Each backbone extends the common fields with its own and states its official values.

Every number is checked when settings are made (finite, in range), so a `nan` guidance or a negative step count is a
one-line error before anything loads, from the command line and the nodes alike.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

from ..errors import InputError
from ..runtime.options import check_integer, check_number
from .motion import MotionOptions


@dataclass(frozen=True)
class RenderSettings:
    steps: int = 50
    cfg_scale: float = 3.5
    seed: int = 42
    motion: MotionOptions = field(default_factory=MotionOptions)

    def __post_init__(self):
        check_integer("steps", self.steps, 1, 1000)
        check_number("cfg", self.cfg_scale, 0.0, 100.0)
        check_integer("seed", self.seed, 0, 2**63 - 1)
        if not isinstance(self.motion, MotionOptions):
            raise InputError("motion must be MotionOptions")

    def as_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, backbone: str, motion: dict | None = None, **values):
        """These settings with some values replaced; a name this backbone does not have is refused in one line."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(values) - known)
        if unknown:
            flags = ", ".join("--" + name.replace("_", "-") for name in unknown)
            raise InputError(f"{flags} {'is not an option' if len(unknown) == 1 else 'are not options'} of "
                             f"{backbone}")
        motion_options = dataclasses.replace(self.motion, **motion) if motion else self.motion
        return dataclasses.replace(self, motion=motion_options, **values)
