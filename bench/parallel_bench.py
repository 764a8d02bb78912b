"""Step time of one video split across GPUs (`--parallel`), against one GPU; random weights, run under torchrun.

    torchrun --nproc-per-node 8 bench/parallel_bench.py --size full --parallel cfg,ulysses
    torchrun --nproc-per-node 2 bench/parallel_bench.py --size full --parallel cfg
    torchrun --nproc-per-node 4 bench/parallel_bench.py --size full --parallel ulysses

Rank 0 first times the step alone (the one-GPU figure; the others wait), then all processes time it together through
the same pieces a render uses (hallo_core/parallel/: the leader's messages, CFG groups, Ulysses attention), and rank 0
prints one JSON record: seconds per step for both, the speed-up, the efficiency (speed-up / GPUs) and the largest
difference of the parallel step's x0 from the one-GPU x0. `--docs docs/benchmarks.md` appends a row. On a CPU
(`--size tiny`, gloo) it checks that the command works; the figures mean nothing there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hallo_core.dev.bench import _conditioning, _config, _random_model  # noqa: E402
from hallo_core.dev.bench_support import device_name, sync  # noqa: E402
from hallo_core.hallo3.backbone import Hallo3Settings  # noqa: E402
from hallo_core.hallo3.denoiser import GuidedDenoiser, SeparateGuidance  # noqa: E402
from hallo_core.hallo3.sampler import sat_schedule  # noqa: E402
from hallo_core.memory.residency import LocalModels  # noqa: E402
from hallo_core.parallel import ParallelSession, check_plan  # noqa: E402
from hallo_core.runtime.options import EngineOptions  # noqa: E402
from hallo_core.runtime.parallel_plan import ParallelPlan  # noqa: E402

GUIDANCE = {"official": None, "separate": SeparateGuidance(), "separate-ref": SeparateGuidance(reference=1.5)}


def _time(denoiser: GuidedDenoiser, x: torch.Tensor, steps: int, device: torch.device) -> list[float]:
    denoiser(x, 0)  # warm-up
    times = []
    for step in range(steps):
        sync(device)
        started = time.perf_counter()
        denoiser(x, step % denoiser.schedule.num_steps)
        sync(device)
        times.append(time.perf_counter() - started)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=["tiny", "full"])
    parser.add_argument("--layers", type=int, default=None, help="fewer layers than the size's")
    parser.add_argument("--parallel", required=True, help="cfg, ulysses or cfg,ulysses")
    parser.add_argument("--ulysses-degree", type=int, default=None)
    parser.add_argument("--guidance", default="official", choices=sorted(GUIDANCE),
                        help="official [uncond, cond] (2 branches), separate (3) or separate-ref (4)")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--out", default="parallel_bench.json")
    parser.add_argument("--docs", default=None, help="append a row to this markdown file (docs/benchmarks.md)")
    args = parser.parse_args()

    plan = ParallelPlan.resolve(args.parallel, args.ulysses_degree)
    options = EngineOptions.resolve(None, args.precision, compile=False, parallel=plan)
    device, dtype = options.device, options.dtype
    torch.set_grad_enabled(False)
    config = _config(args.size, args.layers)
    guidance = GUIDANCE[args.guidance]
    backbone = SimpleNamespace(family="hallo3", options=options, config=config,
                               models=LocalModels({"transformer": lambda d: _random_model(config, d, dtype)}, device,
                                                  keep_resident=True))
    plan = check_plan(backbone, Hallo3Settings(guidance=guidance), plan)
    session = ParallelSession(backbone, plan)  # joins the processes before anyone waits on them
    try:
        if not plan.leader:
            session.follow()  # the one-GPU timing happens first on rank 0 alone; the others wait in here
            return 0
        return _lead(session, backbone, config, guidance, args, plan)
    finally:
        session.close()


def _lead(session, backbone, config, guidance, args, plan) -> int:
    device, dtype = backbone.options.device, backbone.options.dtype
    schedule = sat_schedule(50)

    single = _random_model(config, device, dtype)  # same seed: the same weights as every process's copy
    conditioning = _conditioning(single, device, dtype)
    x = torch.randn((1, config.latent_frames, config.out_channels, config.latent_height, config.latent_width),
                    generator=torch.Generator().manual_seed(3)).to(device)
    reference = GuidedDenoiser(single, conditioning, schedule, separate=guidance)
    one_gpu = _time(reference, x, args.steps, device)
    expected = reference(x, 1)
    del single, reference

    def together():
        with backbone.models.use("transformer") as model:
            denoiser = session._lead_hallo3_clip(GuidedDenoiser(model, conditioning, schedule, separate=guidance))
            return _time(denoiser, x, args.steps, device), denoiser(x, 1)

    many, got = session.lead(together)
    best_one, best_many = min(one_gpu), min(many)
    record = {
        "device": device_name(device), "gpus": plan.world_size, "plan": plan.describe(), "size": args.size,
        "layers": config.num_layers, "guidance": args.guidance, "dtype": str(dtype).replace("torch.", ""),
        "one_gpu_step_s": best_one, "parallel_step_s": best_many, "speedup": best_one / best_many,
        "efficiency": best_one / best_many / plan.world_size,
        "max_abs_x0_difference": float((got.float() - expected.float()).abs().max()),
        "command": "torchrun --nproc-per-node {} bench/parallel_bench.py {}".format(plan.world_size,
                                                                                  " ".join(sys.argv[1:])),
    }
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    print(json.dumps(record, indent=1))
    if args.docs:
        with open(args.docs, "a") as f:
            f.write(f"| {record['device']} | {record['plan']} | {record['guidance']} | {best_one:.3f} s | "
                    f"{best_many:.3f} s | {record['speedup']:.2f}x | {record['efficiency']:.0%} | "
                    f"{record['max_abs_x0_difference']:.1e} | `{record['command']}` |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
