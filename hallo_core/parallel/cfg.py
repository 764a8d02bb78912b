"""CFG parallelism: the guidance branches of a step computed side by side, one per process group.

Hallo3 (`branch_velocities`): the GuidedDenoiser's `velocities` for the step's branches (official [uncond, cond]; the
separate guidance's uncond / text / full, and without the reference tokens) -> each CFG group computes the branch of
its rank, the v of all branches are gathered in order, and every process has what one process's batched call gives;
the guidance arithmetic (`GuidedDenoiser.combine`) is untouched. Only the few MB of v per branch cross between
processes.

Hallo / Hallo2 (`UNetBranches`): the denoiser's forward on the [uncond, cond] batches -> each process runs its batch
with that batch's conditioning (`hallo_unet.denoiser.conditioning_batch`) and the outputs are gathered.

A branch computed alone equals its row of the batched call up to the order of float additions in the matrix
products (~1e-7 in fp32).
"""

from __future__ import annotations

import torch

from ..hallo_unet.denoiser import conditioning_batch
from .groups import Groups, all_gather_cat


def branch_velocities(evaluate, x: torch.Tensor, timestep: int, branches: tuple, groups: Groups) -> torch.Tensor:
    """`evaluate(x, timestep, branches)` (GuidedDenoiser.velocities) with the branches spread over the CFG groups."""
    plan = groups.plan
    if not plan.cfg:
        return evaluate(x, timestep, branches)
    if len(branches) != plan.cfg_degree:  # checked with the settings before the render (check_plan)
        raise RuntimeError(f"{len(branches)} guidance branches on {plan.cfg_degree} CFG groups")
    return all_gather_cat(evaluate(x, timestep, (branches[plan.cfg_rank],)), groups.cfg)


class UNetBranches:
    """The Hallo/Hallo2 denoiser's forward with its [uncond, cond] batches on the CFG groups' processes."""

    def __init__(self, forward, groups: Groups):
        self.forward = forward
        self.groups = groups
        self._batches: tuple[object, object] | None = None  # (conditioning, this process's batch of it)

    def __call__(self, sample: torch.Tensor, timestep, cond) -> torch.Tensor:
        plan = self.groups.plan
        if sample.shape[0] != plan.cfg_degree:
            raise RuntimeError(f"{sample.shape[0]} batches on {plan.cfg_degree} CFG groups")
        if self._batches is None or self._batches[0] is not cond:
            self._batches = (cond, conditioning_batch(cond, plan.cfg_rank))
        mine = self.forward(sample[plan.cfg_rank:plan.cfg_rank + 1], timestep, self._batches[1])
        return all_gather_cat(mine, self.groups.cfg)
