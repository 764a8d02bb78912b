"""Regional torch.compile with torch's persistent compile caches.

Each transformer block's forward is compiled on its own: one graph, reused by every block of the same class (their
parameters are graph inputs), so compiling costs one block's worth, and hooks around a block (block streaming) stay
outside the graph. Shapes are static (`dynamic=False`): a clip's shapes never change, so the graph compiled on the
first step serves every later step, clip and segment; a new shape (e.g. a 1-row call of the late-step CFG cache)
compiles a second graph once instead of turning the first into a slower dynamic-shape one.

Persistent caches: inductor's FX graph cache and AOT autograd cache are switched on and kept in one folder that
outlives the process (`TORCHINDUCTOR_CACHE_DIR` when set, else `~/.cache/hallo_core/torch_compile`), so a second
process skips inductor's code generation and autotuning and pays only dynamo's tracing.
"""

from __future__ import annotations

import os

import torch

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def compile_cache_dir() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "hallo_core", "torch_compile")


def configure_compile_caches() -> str:
    """Switch torch's persistent compile caches on (idempotent); returns the cache folder."""
    folder = compile_cache_dir()
    os.environ.setdefault(CACHE_ENV, folder)  # read by inductor when it first needs the folder
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    return folder


def compile_forwards(modules, **options) -> None:
    """Compile each module's forward (not its __call__: forward hooks stay eager), static shapes by default."""
    configure_compile_caches()
    options.setdefault("dynamic", False)
    for module in modules:
        module.forward = torch.compile(module.forward, **options)
