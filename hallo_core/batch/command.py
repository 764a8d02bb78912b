"""The `batch` subcommand: argument parsing and the run (Ray is imported only when it runs)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import InputError, OutputError

BATCH_EPILOG = """manifest: one JSON object per line, e.g.
  {"image": "anna.jpg", "audio": "anna.wav", "prompt": "A woman talking", "steps": 40, "output": "anna.mp4"}
  {"image": "ben.png", "audio": "ben.mp3", "models": "/models/hallo3", "seed": 7, "memory": "low"}
keys: image, audio, models (or --models), output (a file name in --out), prompt, backbone, and the generate options
with underscores: steps, seed, cfg, vocal_separation (true/false), precision, memory, attention, compile, fp8_matmul,
step_cache, step_cache_calibration, cfg_cache, text_cfg, audio_cfg, ref_cfg, pose_weight, expression_weight,
lip_weight, size, seed_policy, audio_pieces, motion_frames, motion_dropout, motion_drop_patch, motion_noise,
protect_face, carry_latents. Relative paths are relative to the manifest's folder.

Each job renders into OUT/<output>.render/, so a job whose worker dies is run again by Ray and resumes from its last
finished clip; running the batch again skips the jobs done before and resumes the others. Results: OUT/results.jsonl.
Exit status: 0 every job done; 1 some job failed or some line was bad (see the results); 2 the batch was refused;
130 interrupted."""


def add_batch_command(commands) -> None:
    batch = commands.add_parser("batch", help="many videos from a manifest of jobs, on Ray (one job per GPU)",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=BATCH_EPILOG)
    batch.add_argument("manifest", help="jobs, one JSON object per line (.jsonl)")
    batch.add_argument("--out", required=True, help="output folder: the videos, their render folders, results.jsonl")
    batch.add_argument("--models", default=None, help="models folder of the jobs that name none")
    batch.add_argument("--address", default=None,
                       help="a Ray cluster to run on (e.g. auto, or ray://head:10001); default: a local Ray started "
                            "for this batch")
    batch.add_argument("--gpus-per-job", type=float, default=None,
                       help="GPUs each job takes (default: 1 when the cluster has GPUs, else 0: jobs on CPUs)")
    batch.add_argument("--cpus-per-job", type=float, default=1, help="CPUs each job takes (default 1)")
    batch.add_argument("--resources", default=None,
                       help='custom Ray resources each job takes, as JSON, e.g. \'{"big_gpu": 1}\'')
    batch.add_argument("--retries", type=int, default=3,
                       help="times Ray runs a job again when its worker or node dies (default 3)")
    batch.add_argument("--strict", action="store_true", help="refuse the whole batch when any line is bad")
    batch.add_argument("--keep-render", action="store_true", help="keep each job's render folder after success")
    batch.add_argument("--redo", action="store_true", help="render again the jobs an earlier run of the batch did")
    batch.set_defaults(run=run_command)


def run_command(args) -> int:
    ray_runner = _import_ray_runner()
    from .manifest import read_manifest

    resources = _resources(args.resources)
    for name, value, low in (("--gpus-per-job", args.gpus_per_job, 0), ("--cpus-per-job", args.cpus_per_job, 0),
                             ("--retries", args.retries, 0)):
        if value is not None and value < low:
            raise InputError(f"{name} must be at least {low}, got {value:g}")
    if not os.path.isfile(args.manifest):  # before --out is made
        raise InputError(f"the batch manifest {args.manifest} is not a file; give a .jsonl file with one job per line")
    out_dir = os.path.abspath(args.out)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create the output folder {out_dir}: {error.strerror or error}") from None
    jobs, bad = read_manifest(args.manifest, out_dir, args.models)
    for line in bad:
        print(f"{args.manifest}:{line.line}: {line.error}", file=sys.stderr)
    if bad and args.strict:
        raise InputError(f"{len(bad)} bad line{'s' if len(bad) > 1 else ''} in {args.manifest} (listed above); fix "
                         "them, or leave out --strict to run the good ones")
    if not jobs:
        raise InputError(f"no good job in {args.manifest} (the bad lines are listed above)")
    if bad:
        print(f"{len(bad)} bad line{'s are' if len(bad) > 1 else ' is'} left out; running the other {len(jobs)} "
              "jobs (--strict refuses the batch instead)", file=sys.stderr)
    records = ray_runner.run_batch(jobs, bad, out_dir, address=args.address, gpus_per_job=args.gpus_per_job,
                                   cpus_per_job=args.cpus_per_job, resources=resources, retries=args.retries,
                                   keep_render=args.keep_render, redo=args.redo)
    counts = {}
    for record in records.values():
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    summary = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    print(f"{os.path.join(out_dir, ray_runner.RESULTS)}: {summary}")
    return 0 if all(record["status"] in ("done", "done before") for record in records.values()) else 1


def _import_ray_runner():
    """ray_runner.py, or a one-line InputError saying how to install Ray."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise InputError("batch runs on Ray, which is not installed; install it with: pip install "
                         "'hallo-nodes[batch]' (or pip install -r requirements-batch.txt)")
    try:
        import ray  # noqa: F401  (a broken install is told apart from a bug in ray_runner.py)
    except ImportError as error:
        raise InputError(f"Ray is installed but cannot be imported ({' '.join(str(error).split())}); reinstall it "
                         "with: pip install --force-reinstall -r requirements-batch.txt") from None
    from . import ray_runner

    return ray_runner


def _resources(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        resources = json.loads(text)
    except ValueError:
        resources = None
    if not isinstance(resources, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
            for k, v in resources.items()):
        raise InputError(f"--resources must be a JSON object of resource names and amounts, e.g. '{{\"big_gpu\": 1}}',"
                         f" got {text}")
    return resources
