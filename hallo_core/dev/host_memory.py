"""Peak resident host memory of this process over a block of code, sampled from a thread (psutil).

The operating system keeps only the lifetime peak (ru_maxrss), which cannot isolate one phase such as loading.
"""

from __future__ import annotations

import threading
import time


class HostMemoryPeak:
    """`with HostMemoryPeak() as peak: ...`, then `peak.growth`: bytes of the highest RSS seen above the RSS at entry,
    and `peak.final_growth`: above it at exit."""

    def __init__(self, interval_s: float = 0.005):
        import psutil

        self.interval_s = interval_s
        self.process = psutil.Process()
        self.baseline = self.peak = self.final = 0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval_s)

    def __enter__(self) -> "HostMemoryPeak":
        self.baseline = self.peak = self.process.memory_info().rss
        self._done.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.final = self.process.memory_info().rss
        self.peak = max(self.peak, self.final)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    @property
    def final_growth(self) -> int:
        return self.final - self.baseline
