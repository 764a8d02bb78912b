"""Step caching ("first-block cache"): skip most of the transformer on steps where little changes.

At each step the first block runs; if its output moved less than `threshold` (mean absolute change relative to its
mean magnitude) since the last fully computed step, the remaining blocks are skipped and their last computed
contribution (final states minus first-block states) is reused. Off by default: it changes the result, by an amount
measured in docs/benchmarks.md. One cache serves one clip (its conditioning never changes within the clip).
"""

from __future__ import annotations

import torch


class StepCache:
    def __init__(self, threshold: float):
        self.threshold = threshold
        self.reference: torch.Tensor | None = None  # first-block video states of the last full step
        self.residual: tuple[torch.Tensor, torch.Tensor] | None = None
        self._first: tuple[torch.Tensor, torch.Tensor] | None = None
        self.skipped = 0
        self.computed = 0

    def lookup(self, hidden: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """After the first block: the final states if the rest can be skipped, else None (and remember them)."""
        if self.reference is not None and self.residual is not None:
            change = (hidden - self.reference).abs().mean() / self.reference.abs().mean().clamp_min(1e-12)
            if float(change) < self.threshold:
                self.skipped += 1
                return hidden + self.residual[0], text + self.residual[1]
        self._first = (hidden, text)
        return None

    def store(self, hidden: torch.Tensor, text: torch.Tensor) -> None:
        """After the last block of a fully computed step."""
        if self._first is None:  # a one-block model has nothing to skip
            return
        first_hidden, first_text = self._first
        self.reference = first_hidden
        self.residual = (hidden - first_hidden, text - first_text)
        self.computed += 1
