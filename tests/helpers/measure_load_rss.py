"""Subprocess for test_loading_memory: load a checkpoint and print peak RSS growth (bytes) as JSON."""

import json
import resource
import sys

import torch  # noqa: F401  (imported before the baseline)

from hallo_core.dev.host_memory import HostMemoryPeak
from hallo_core.hallo3.checkpoint import load_transformer


def main(path: str) -> None:
    with HostMemoryPeak(interval_s=0.002) as memory:
        model = load_transformer(path, dtype=torch.float32)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"peak_growth": memory.growth, "final_growth": memory.final_growth,
                      "model_bytes": size, "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


if __name__ == "__main__":
    main(sys.argv[1])
