"""Ulysses sequence parallelism for Hallo3's transformer: the video tokens split across processes, attention on a
share of the heads (DeepSpeed-Ulysses; the all-to-alls are yunchang's, PyPI `yunchang`, which runs on NCCL and on
gloo alike).

What each process holds, and why the numbers equal one process's:

* Video tokens: the same contiguous share of every latent frame's tokens (1350 per frame at 480x720; shares differ
  by at most one token, so 13 frames split evenly over any degree). Everything in a block but the joint
  self-attention is per token or per frame, so it runs on the share unchanged: LayerNorms, modulation, feed-forward,
  and the per-frame face/audio cross-attention, whose frames all stay on every process (each sees its share of every
  frame, all 13 frames' audio tokens and the face tokens, and the frame RoPE rows of its share).
* Text tokens (226) are replicated: every process carries all of them through the block (identical work, identical
  numbers on every process).
* Identity reference keys/values are replicated (computed once per video, before any split).

The joint self-attention (`UlyssesAttention`, the attention kernel of each block's `attn1` processor, wrapping the
kernel it had): one all-to-all turns the share's video q/k/v with all heads into all video tokens with this process's
heads; the text q/k/v and the reference k/v, replicated, are sliced to those heads; the kernel computes attention over
keys in the one-process order [text; video; reference]; a second all-to-all returns the video outputs to their
owners, and an all-gather of the heads gives every process the text outputs of all heads. The video tokens are put
back in their one-process order before the kernel (and the padding of uneven shares removed), so each head sees the
same sequence as without the split.

`UlyssesBlocks` (the transformer's `run_blocks`, shadowed on the instance as the step cache does) takes the share of
the video tokens and their RoPE rows before the blocks and gathers all tokens after them; the patch embedding and
the final projection run on every process on all tokens (they are per token and cheap).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from yunchang.comm.all_to_all import all_to_all_4D, all_to_all_5D

from .groups import all_gather_cat


@dataclass
class TokenSplit:
    """The video tokens of process `rank` of `degree`: per frame, tokens [start, start + size) of `per_frame`."""

    frames: int
    per_frame: int
    degree: int
    rank: int
    local: torch.Tensor  # this process's tokens, as positions in the one-process order
    order: torch.Tensor  # one-process position -> position in the gathered, padded, process-major layout
    start: int
    size: int
    width: int  # every share padded to this many tokens per frame for the collectives

    @classmethod
    def make(cls, frames: int, per_frame: int, degree: int, rank: int, device: torch.device) -> "TokenSplit":
        if per_frame < degree:
            raise ValueError(f"{per_frame} tokens per frame cannot be split {degree} ways")
        sizes = [per_frame // degree + (1 if r < per_frame % degree else 0) for r in range(degree)]
        starts = [sum(sizes[:r]) for r in range(degree)]
        width = sizes[0]
        frame = torch.arange(frames).unsqueeze(1)
        local = (frame * per_frame + starts[rank] + torch.arange(sizes[rank])).flatten()
        order = torch.cat([r * frames * width + frame * width + torch.arange(sizes[r]) for r in range(degree)], dim=1)
        return cls(frames, per_frame, degree, rank, local.to(device), order.flatten().to(device), starts[rank],
                   sizes[rank], width)

    @property
    def length(self) -> int:
        return self.frames * self.size

    def pad(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This process's tokens along `dim` (frames * size) -> frames * width, zeros after each frame's share."""
        dim = dim % x.ndim
        after = x.ndim - dim - 1  # dims after the token dim
        x = x.unflatten(dim, (self.frames, self.size))
        if self.size < self.width:
            x = F.pad(x, [0, 0] * after + [0, self.width - self.size])
        return x.flatten(dim, dim + 1)

    def unpad(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        dim = dim % x.ndim
        return x.unflatten(dim, (self.frames, self.width)).narrow(dim + 1, 0, self.size).flatten(dim, dim + 1)


class _Layout:
    """The split of the current transformer call, set by `UlyssesBlocks` and read by the blocks' kernels."""

    split: TokenSplit | None = None
    text_length: int = 0


class UlyssesAttention:
    """Joint [text; video share] self-attention with appended reference keys/values, computed on this process's
    heads over all video tokens; `local` is the kernel the processor had (runtime/attention.py signature)."""

    def __init__(self, local, group, layout: _Layout):
        self.local = local
        self.group = group
        self.degree = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.layout = layout
        self.__name__ = f"ulysses_{getattr(local, '__name__', 'kernel')}"

    @torch.compiler.disable  # collectives: a compiled block breaks its graph here and runs the rest compiled
    def __call__(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        split = self.layout.split
        text, video = self.layout.text_length, split.length
        heads = query.shape[1]
        share = heads // self.degree
        mine = slice(self.rank * share, (self.rank + 1) * share)
        # video q/k/v: (b, heads, share of tokens, d) -> (b, all tokens, 3, heads / degree, d)
        qkv = torch.stack([query[:, :, text:], key[:, :, text:text + video], value[:, :, text:text + video]], dim=2)
        qkv = split.pad(qkv.permute(0, 3, 2, 1, 4), dim=1)  # (b, frames * width, 3, heads, d)
        qkv = all_to_all_5D(qkv, scatter_idx=3, gather_idx=1, group=self.group).index_select(1, split.order)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        out = self.local(
            torch.cat([query[:, mine, :text], q], dim=2),
            torch.cat([key[:, mine, :text], k, key[:, mine, text + video:]], dim=2),
            torch.cat([value[:, mine, :text], v, value[:, mine, text + video:]], dim=2),
        )
        text_out = all_gather_cat(out[:, :, :text], self.group, dim=1)  # every head of the text tokens
        video_out = out[:, :, text:].transpose(1, 2)  # (b, all tokens, heads / degree, d)
        padded = video_out.new_zeros(video_out.shape[0], split.degree * split.frames * split.width,
                                     *video_out.shape[2:])
        padded.index_copy_(1, split.order, video_out)
        video_out = split.unpad(all_to_all_4D(padded, scatter_idx=1, gather_idx=2, group=self.group), dim=1)
        return torch.cat([text_out, video_out.transpose(1, 2)], dim=2)


class UlyssesBlocks:
    """`run_blocks` on this process's share of the video tokens; all tokens gathered afterwards."""

    def __init__(self, inner, group, device: torch.device, layout: _Layout):
        self.inner = inner
        self.group = group
        self.degree = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.device = device
        self.layout = layout
        self._splits: dict[tuple[int, int], TokenSplit] = {}

    def split(self, frames: int, per_frame: int) -> TokenSplit:
        key = (frames, per_frame)
        if key not in self._splits:
            self._splits[key] = TokenSplit.make(frames, per_frame, self.degree, self.rank, self.device)
        return self._splits[key]

    def __call__(self, hidden, text, temb, rotary, frame_rotary, reference_kv, face_tokens, audio_tokens):
        frames = audio_tokens.shape[0] // hidden.shape[0]
        split = self.split(frames, hidden.shape[1] // frames)
        self.layout.split, self.layout.text_length = split, text.shape[1]
        share = slice(split.start, split.start + split.size)
        hidden, text = self.inner(
            hidden.index_select(1, split.local), text, temb,
            tuple(t.index_select(0, split.local) for t in rotary),
            tuple(t[share] for t in frame_rotary),
            reference_kv, face_tokens, audio_tokens)
        gathered = all_gather_cat(split.pad(hidden, dim=1), self.group, dim=1)  # process-major, padded
        return gathered.index_select(1, split.order), text


def attach_ulysses(model, group, device: torch.device) -> None:
    """Split `model` (a Hallo3Transformer) across the processes of `group`: its blocks' joint self-attention kernels
    and its `run_blocks`. Every process of the group must call the model together, with the same inputs."""
    layout = _Layout()
    for block in model.transformer_blocks:
        processor = block.attn1.processor
        processor.kernel = UlyssesAttention(processor.kernel, group, layout)
    model.run_blocks = UlyssesBlocks(model.run_blocks, group, device, layout)
