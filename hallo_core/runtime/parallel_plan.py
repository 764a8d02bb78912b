"""How one video is split across processes (`--parallel`), resolved once from the options and torchrun's variables.

Modes (docs/options.md, "One video on several GPUs"):
* `cfg`: the guidance branches of each step (official [uncond, cond]; the separate guidance's 3 or 4) computed on as
  many process groups, one branch each;
* `ulysses`: the video tokens of every transformer call split across `ulysses_degree` processes, attention computed
  on a share of the heads after an all-to-all (hallo_core/parallel/ulysses.py); Hallo3 only.
Both together: `branches x ulysses_degree` processes. The processes are the ones `torchrun` starts; `WORLD_SIZE`,
`RANK` and `LOCAL_RANK` say which one this is. What depends on the model and the settings (the number of branches,
the heads) is checked by `hallo_core.parallel.check_plan` before any model loads.

Nothing here imports torch.distributed: a plan is plain numbers, and the default (no `--parallel`, no torchrun) is
`ParallelPlan()`, a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from ..errors import InputError

PARALLEL_MODES = ("cfg", "ulysses")
LAUNCH = "torchrun --nproc-per-node N -m hallo_core generate ..."


@dataclass(frozen=True)
class ParallelPlan:
    """The split of one render: modes, this process's place among `world_size` processes, the Ulysses degree.

    `ulysses` is the Ulysses degree (1: off); `ulysses_requested` the degree the user gave (None: derived from the
    world size and the guidance's branches by `with_branches`)."""

    cfg: bool = False
    ulysses: int = 1
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1  # processes on this machine (torchrun's LOCAL_WORLD_SIZE)
    use_ulysses: bool = False
    ulysses_requested: int | None = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def leader(self) -> bool:
        """Rank 0: the only process that prepares inputs, runs the VAE and front-ends, writes files and prints."""
        return self.rank == 0

    @property
    def cfg_degree(self) -> int:
        return self.world_size // self.ulysses

    @property
    def cfg_rank(self) -> int:
        """Which guidance branch this process computes (0 without `cfg`)."""
        return self.rank // self.ulysses

    @property
    def ulysses_rank(self) -> int:
        """This process's share of the video tokens and heads (0 without `ulysses`)."""
        return self.rank % self.ulysses

    def describe(self) -> str:
        modes = [m for m, on in (("cfg", self.cfg), ("ulysses", self.use_ulysses)) if on]
        return f"{','.join(modes)} on {self.world_size} processes (cfg {self.cfg_degree} x ulysses {self.ulysses})"

    @classmethod
    def resolve(cls, parallel: str | None = None, ulysses_degree: int | None = None,
                environ: Mapping[str, str] | None = None) -> "ParallelPlan":
        """`--parallel cfg|ulysses|cfg,ulysses` and `--ulysses-degree` against torchrun's `WORLD_SIZE`/`RANK`/
        `LOCAL_RANK`. Refuses, in one line, what cannot run: an unknown mode, a degree without `ulysses`, several
        processes without `--parallel` (each would render the whole video into the same folder), `--parallel`
        without torchrun."""
        environ = os.environ if environ is None else environ
        world = _integer(environ, "WORLD_SIZE", 1)
        rank, local_rank = _integer(environ, "RANK", 0), _integer(environ, "LOCAL_RANK", 0)
        local_world = _integer(environ, "LOCAL_WORLD_SIZE", world)
        if not parallel:
            if ulysses_degree is not None:
                raise InputError("--ulysses-degree needs --parallel ulysses (or cfg,ulysses)")
            if world > 1:
                raise InputError(f"{world} processes were started (torchrun) but --parallel was not given; add "
                                 "--parallel cfg, ulysses or cfg,ulysses, or run one process")
            return cls()
        modes = [m.strip() for m in parallel.split(",") if m.strip()]
        unknown = [m for m in modes if m not in PARALLEL_MODES]
        if unknown or not modes or len(set(modes)) != len(modes):
            raise InputError(f"--parallel takes cfg, ulysses or cfg,ulysses, got {parallel!r}")
        use_ulysses = "ulysses" in modes
        if ulysses_degree is not None:
            if not use_ulysses:
                raise InputError("--ulysses-degree needs --parallel ulysses (or cfg,ulysses)")
            if isinstance(ulysses_degree, bool) or not isinstance(ulysses_degree, int) or ulysses_degree < 2:
                raise InputError(f"--ulysses-degree must be a whole number of at least 2, got {ulysses_degree}")
        if world < 2:
            raise InputError(f"--parallel {parallel} splits one video across several processes; start them with "
                             f"{LAUNCH} (N = 2 or more)")
        if not 0 <= rank < world:
            raise InputError(f"RANK={rank} is outside WORLD_SIZE={world}; start the processes with torchrun")
        return cls(cfg="cfg" in modes, world_size=world, rank=rank, local_rank=local_rank,
                   local_world_size=local_world, use_ulysses=use_ulysses, ulysses_requested=ulysses_degree)

    def with_branches(self, branches: int, heads: int | None) -> "ParallelPlan":
        """The degrees for guidance with `branches` branches and a transformer with `heads` attention heads (None:
        no Ulysses split possible). One-line refusals for a world size that does not fit."""
        import dataclasses

        world = self.world_size
        if not self.active:
            return self
        if self.cfg and branches < 2:
            raise InputError("--parallel cfg computes the guidance branches side by side, and this render has one "
                             "(cfg scale 1); drop cfg from --parallel or use a cfg scale other than 1")
        if self.use_ulysses and heads is None:
            raise InputError("--parallel ulysses splits Hallo3's transformer; Hallo and Hallo2 split their guidance "
                             "only: use --parallel cfg")
        if not self.use_ulysses:
            if world != branches:
                raise InputError(f"--parallel cfg runs one guidance branch per process and this guidance has "
                                 f"{branches} branches: start {branches} processes, not {world} (or add ulysses)")
            return self
        degree = self.ulysses_requested
        if degree is None:
            if self.cfg and world % branches:
                raise InputError(f"--parallel cfg,ulysses needs a multiple of the {branches} guidance branches "
                                 f"processes, got {world}")
            degree = world // branches if self.cfg else world
        expected = degree * (branches if self.cfg else 1)
        if expected != world:
            what = f"{branches} branches x ulysses degree {degree}" if self.cfg else f"ulysses degree {degree}"
            raise InputError(f"--parallel {'cfg,' if self.cfg else ''}ulysses with {what} needs {expected} "
                             f"processes, not {world}")
        if heads % degree:
            divisors = [d for d in range(2, heads + 1) if heads % d == 0]
            raise InputError(f"ulysses degree {degree} does not divide the transformer's {heads} attention heads; "
                             f"use one of {', '.join(map(str, divisors[:8]))}")
        return dataclasses.replace(self, ulysses=degree)


def _integer(environ: Mapping[str, str], name: str, default: int) -> int:
    value = environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"the environment variable {name}={value!r} is not a whole number; start the processes "
                         "with torchrun") from None
