"""Subprocess for test_loading_memory: load a checkpoint and print peak RSS growth (bytes) as JSON."""

import json
import resource
import sys
import threading
import time

import psutil
import torch  # noqa: F401  (imported before the baseline)

from hallo_core.transformer_checkpoint import load_transformer


def main(path: str) -> None:
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    model = load_transformer(path, dtype=torch.float32)
    done.set()
    sampler.join()
    peak = max(peak, process.memory_info().rss)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"peak_growth": peak - baseline, "final_growth": process.memory_info().rss - baseline,
                      "model_bytes": size, "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


if __name__ == "__main__":
    main(sys.argv[1])
