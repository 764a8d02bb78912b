"""Transformer blocks streamed from host memory to the GPU, one block ahead of the computation.

The 5B transformer's 42 blocks are ~17 GB in bf16 (~8.5 GB in fp8). With streaming, only the block being computed
and the next one are on the GPU: each block's weights are copied from pinned host memory on a side CUDA stream while
the previous block computes (~0.4 GB per block copy, ~15 ms over PCIe 4 against ~0.2 s of compute per block and CFG
step at full size), then dropped after the block ran. The numbers are unchanged: the same weights, only their place
differs. Used by the "low" memory preset on the command line; ComfyUI streams with its own partial loading.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class BlockStreamer:
    def __init__(self, blocks: nn.ModuleList, device: torch.device | str):
        """Moves the blocks' weights to host memory and hooks the blocks; other layers stay where they are."""
        self.blocks = list(blocks)
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.host: list[dict[str, torch.Tensor]] = []
        self.ready: dict[int, torch.cuda.Event | None] = {}
        self.loads = 0
        for block in self.blocks:
            tensors = {}
            for name, param in block.named_parameters():
                host = param.data.to("cpu")
                tensors[name] = host.pin_memory() if self.cuda else host
                param.data = tensors[name]
            self.host.append(tensors)
        self.handles = []
        for index, block in enumerate(self.blocks):
            self.handles.append(block.register_forward_pre_hook(self._before(index)))
            self.handles.append(block.register_forward_hook(self._after(index)))

    def _load(self, index: int) -> None:
        if index in self.ready or index >= len(self.blocks):
            return
        params = dict(self.blocks[index].named_parameters())
        context = torch.cuda.stream(self.stream) if self.cuda else contextlib.nullcontext()
        with context:
            for name, host in self.host[index].items():
                params[name].data = host.to(self.device, non_blocking=True)
        event = None
        if self.cuda:
            event = torch.cuda.Event()
            event.record(self.stream)
        self.ready[index] = event
        self.loads += 1

    def _before(self, index: int):
        def hook(module, args):
            self._load(index)
            event = self.ready[index]
            if event is not None:
                torch.cuda.current_stream(self.device).wait_event(event)
            self._load(index + 1)  # prefetch: its copy overlaps this block's computation

        return hook

    def _after(self, index: int):
        def hook(module, args, output):
            for name, param in module.named_parameters():
                if self.cuda:
                    param.data.record_stream(torch.cuda.current_stream(self.device))
                param.data = self.host[index][name]
            self.ready.pop(index, None)
            return output

        return hook

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    @contextlib.contextmanager
    def resident(self, index: int):
        """Block `index` on the device outside its forward (e.g. for the reference keys and values)."""
        self._before(index)(self.blocks[index], ())
        try:
            yield self.blocks[index]
        finally:
            self._after(index)(self.blocks[index], (), None)
