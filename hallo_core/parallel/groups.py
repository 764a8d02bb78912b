"""The processes of one parallel render: torch.distributed process groups and the leader's messages to the others.

Ranks are laid out `rank = cfg_rank * ulysses_degree + ulysses_rank`: the processes of one guidance branch are
consecutive and form a Ulysses group; the processes that hold the same share of the tokens in every branch form a CFG
group. Tensors travel on the default group (NCCL on GPUs, gloo on CPUs).

Only rank 0 (the leader) runs the render engine; the others wait for its messages (`Channel`): per clip the
conditioning, per step the noisy latents and the branches. Messages are announced on a gloo group, so a waiting
process sleeps in a socket instead of spinning a GPU kernel, and its timeout covers the leader's longest stretch
alone (loading models, preparing the video, decoding a clip). The announcement is a pickle made by our own rank 0
of the same program (trusted, never a file); its tensors are sent separately by `dist.broadcast` and land on each
process's own device.
"""

from __future__ import annotations

import datetime
import io
import itertools
import pickle
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..runtime.parallel_plan import ParallelPlan

CONTROL_TIMEOUT = datetime.timedelta(hours=4)  # the leader alone: model loads, the front-ends, a clip's VAE work


@dataclass
class Groups:
    plan: ParallelPlan
    device: torch.device  # where this process computes (cuda:LOCAL_RANK or cpu)
    cfg: Any  # the processes computing the other branches on the same tokens (None without cfg)
    ulysses: Any  # the processes sharing this branch's tokens (None without ulysses)
    control: Any  # gloo group of every process: the leader's announcements


def init_groups(plan: ParallelPlan, device: torch.device) -> Groups:
    """Join the processes torchrun started (MASTER_ADDR/MASTER_PORT from the environment) and make the groups.
    Every process makes every group, in the same order (torch.distributed requires it)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=plan.rank,
                                world_size=plan.world_size)
    if dist.get_world_size() != plan.world_size or dist.get_rank() != plan.rank:
        raise RuntimeError(f"the process group has rank {dist.get_rank()} of {dist.get_world_size()}, the plan "
                           f"{plan.rank} of {plan.world_size}")
    degree, branches = plan.ulysses, plan.cfg_degree
    cfg = ulysses = None
    for branch in range(branches):
        group = dist.new_group([branch * degree + u for u in range(degree)])
        if branch == plan.cfg_rank and plan.use_ulysses:
            ulysses = group
    for u in range(degree):
        group = dist.new_group([branch * degree + u for branch in range(branches)])
        if u == plan.ulysses_rank and plan.cfg:
            cfg = group
    control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    return Groups(plan, device, cfg, ulysses, control)


def all_gather_cat(tensor: torch.Tensor, group, dim: int = 0) -> torch.Tensor:
    """Every process's `tensor` (same shape everywhere), concatenated along `dim` in group-rank order."""
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, tensor, group=group)
    return torch.cat(parts, dim=dim)


class Channel:
    """The leader's messages `(kind, payload)` to every other process, in the order it sends them.

    With `keep=True` the message's tensors are remembered on both sides until the next such message, and a later
    message holding the same tensor objects sends only a reference: the identity reference keys and values of a
    video travel once, not with every clip."""

    def __init__(self, groups: Groups):
        self.groups = groups
        self._handles = itertools.count()
        self._kept_by_id: dict[int, tuple[torch.Tensor, int]] = {}  # leader: id(tensor) -> (tensor, handle)
        self._kept: dict[int, torch.Tensor] = {}  # followers: handle -> tensor

    def send(self, kind: str, payload: Any = None, keep: bool = False) -> None:
        new: list[tuple[int, torch.Tensor]] = []
        seen: dict[int, tuple[torch.Tensor, int]] = {}
        kept = self._kept_by_id
        handles = self._handles

        class _Pickler(pickle.Pickler):
            def persistent_id(self, obj):
                if not isinstance(obj, torch.Tensor):
                    return None
                key = id(obj)
                if key not in seen:
                    if key in kept:
                        seen[key] = kept[key]
                    else:
                        seen[key] = (obj, next(handles))
                        new.append(seen[key][::-1])
                return ("tensor", seen[key][1])

        buffer = io.BytesIO()
        _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump((kind, payload))
        table = [(handle, tuple(t.shape), t.dtype, t.device.type) for handle, t in new]
        dist.broadcast_object_list([(buffer.getvalue(), table, keep)], src=0, group=self.groups.control)
        for _, tensor in new:
            data = tensor.detach().to(self._wire_device()).contiguous()
            dist.broadcast(data, src=0)
        if keep:
            self._kept_by_id = dict(seen)

    def recv(self) -> tuple[str, Any]:
        box = [None]
        dist.broadcast_object_list(box, src=0, group=self.groups.control)
        data, table, keep = box[0]
        arrived: dict[int, torch.Tensor] = {}
        for handle, shape, dtype, device_type in table:
            tensor = torch.empty(shape, dtype=dtype, device=self._wire_device())
            dist.broadcast(tensor, src=0)
            arrived[handle] = tensor if device_type != "cpu" else tensor.cpu()
        used: dict[int, torch.Tensor] = {}
        kept = self._kept

        class _Unpickler(pickle.Unpickler):
            def persistent_load(self, pid):
                handle = pid[1]
                used[handle] = arrived[handle] if handle in arrived else kept[handle]
                return used[handle]

        kind, payload = _Unpickler(io.BytesIO(data)).load()
        if keep:
            self._kept = used
        return kind, payload

    def _wire_device(self) -> torch.device:
        return self.groups.device if self.groups.device.type == "cuda" else torch.device("cpu")
