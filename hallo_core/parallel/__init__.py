"""One video on several GPUs: CFG-parallel guidance branches and Ulysses sequence parallelism over torch.distributed.

The plan (`--parallel`, runtime/parallel_plan.py) is resolved once; `check_plan` fits it to the backbone and the
settings before any model loads; `parallel_generate` runs the render with rank 0 as the leader (session.py). The
pieces attach to the models and the denoiser from outside: cfg.py (branches side by side), ulysses.py (the video
tokens split, attention over a share of the heads), groups.py (process groups, the leader's messages). Only the
command line and `generate` import this package; the engine below it does not know it exists.
"""

from .session import LeaderFailed, ParallelSession, check_plan, guidance_branches, parallel_generate

__all__ = ["LeaderFailed", "ParallelSession", "check_plan", "guidance_branches", "parallel_generate"]
