"""Blocks streamed from host memory to the GPU, one block ahead of the computation.

The 5B transformer's 42 blocks are ~17 GB in bf16 (~8.5 GB in fp8). With streaming, only the block being computed
and the next one are on the GPU: each block's weights are copied from page-locked host memory on a side CUDA stream
while the previous block computes (~0.2 GB per fp8 block, ~10 ms over PCIe 4 against ~0.2 s of compute per block and
CFG step at full size), then dropped after the block ran. Each block's weights live in one exactly sized locked
buffer (memory/pinned.py: no power-of-two rounding of the host allocator).

Sized to the card: the first `keep` blocks are not streamed at all (they stay with the model, which the memory
preset moves as a whole); `blocks_that_fit` picks `keep` from a device budget. The same streamer serves the main
transformer, the reference network and T5's encoder blocks (`12gb` preset): a child called before its block (the
reference network reads `norm1` first) can be hooked too, so it brings the block in, and whatever is still
on the device when the owning model's forward ends is dropped. The numbers are unchanged: the same weights, only
their place differs. ComfyUI streams with its own partial loading.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .pinned import HostCopy, module_bytes


def blocks_that_fit(blocks: nn.ModuleList, budget_bytes: float) -> int:
    """How many leading blocks can stay on the device within `budget_bytes` (two more stream through)."""
    sizes = [module_bytes(block) for block in blocks]
    if not sizes:
        return 0
    room = budget_bytes - 2 * max(sizes)
    keep = 0
    for size in sizes:
        if room < size:
            break
        room -= size
        keep += 1
    return keep


class BlockStreamer:
    def __init__(self, blocks: nn.ModuleList, device: torch.device | str, keep: int = 0,
                 owner: nn.Module | None = None, entry_children: tuple[str, ...] = ()):
        """Moves blocks[keep:]'s weights to host memory and hooks them; other layers stay where they are. `owner`: the
        model whose forward ends the use of the blocks (leftovers are dropped then); `entry_children`: children that
        may run before their block (hooked too; never inside a compiled block, whose graph must not trace hooks)."""
        self.blocks = list(blocks)
        self.device = torch.device(device)
        self.keep = max(0, min(keep, len(self.blocks)))
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.host: dict[int, HostCopy] = {}
        self.ready: dict[int, torch.cuda.Event | None] = {}
        self.loads = 0
        for index in self.streamed:
            block = self.blocks[index]
            self.host[index] = HostCopy([param.data for _, param in block.named_parameters()], pin=self.cuda)
            for param, view in zip(block.parameters(), self.host[index].views):
                param.data = view
            block._hallo_streamed = True  # memory/pinned.py and residency leave its weights to this streamer
        self.handles = []
        for index in self.streamed:
            block = self.blocks[index]
            self.handles.append(block.register_forward_pre_hook(self._before(index)))
            for child in entry_children:
                self.handles.append(getattr(block, child).register_forward_pre_hook(self._before(index)))
            self.handles.append(block.register_forward_hook(self._after(index)))
        if self.keep and self.keep < len(self.blocks):  # the last kept block prefetches the first streamed one
            self.handles.append(self.blocks[self.keep - 1].register_forward_pre_hook(
                lambda module, args: self._load(self.keep)))
        if owner is not None:
            self.handles.append(owner.register_forward_hook(lambda module, args, output: self.drop_all()))

    @property
    def streamed(self) -> range:
        return range(self.keep, len(self.blocks))

    def _params(self, index: int) -> list[nn.Parameter]:
        return list(self.blocks[index].parameters())

    def _load(self, index: int) -> None:
        if index in self.ready or index not in self.host:
            return
        context = torch.cuda.stream(self.stream) if self.cuda else contextlib.nullcontext()
        with context:
            for param, view in zip(self._params(index), self.host[index].views):
                param.data = view.to(self.device, non_blocking=self.host[index].pinned)
        event = None
        if self.cuda:
            event = torch.cuda.Event()
            event.record(self.stream)
        self.ready[index] = event
        self.loads += 1

    def _before(self, index: int):
        def hook(module, args):  # idempotent: a child's hook and its block's both run it
            self._load(index)
            event = self.ready[index]
            if event is not None:
                torch.cuda.current_stream(self.device).wait_event(event)
            self._load(index + 1)  # prefetch: its copy overlaps this block's computation

        return hook

    def _drop(self, index: int) -> None:
        if index not in self.ready:
            return
        for param, view in zip(self._params(index), self.host[index].views):
            if self.cuda:
                param.data.record_stream(torch.cuda.current_stream(self.device))
            param.data = view
        self.ready.pop(index, None)

    def _after(self, index: int):
        def hook(module, args, output):
            self._drop(index)
            return output

        return hook

    def drop_all(self) -> None:
        """Drop every streamed block still on the device (a prefetch past the last block used, a block whose child
        ran without the block)."""
        for index in list(self.ready):
            self._drop(index)

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    @contextlib.contextmanager
    def resident(self, index: int):
        """Block `index` on the device outside its forward (e.g. for the reference keys and values)."""
        if index not in self.host:  # a kept block is always there
            yield self.blocks[index]
            return
        self._before(index)(self.blocks[index], ())
        try:
            yield self.blocks[index]
        finally:
            self._after(index)(self.blocks[index], (), None)  # its prefetch of index + 1 serves the next call
