"""The batch on Ray: one remote task per job (resources per job: a GPU, or CPUs), retried by Ray when its worker dies,
a progress actor the jobs report to, and the results file.

Retries: a task's worker process or node dying is a system failure that Ray retries (`max_retries`); the retried job
renders into the same render directory and `generate` resumes from its last finished clip. A job's own errors are
not exceptions to Ray (worker.py returns them), so a bad input is never retried. Paths must be the same on the driver
and every node (shared storage): the manifest is checked on the driver, the jobs read and write on the nodes.
"""

from __future__ import annotations

import json
import logging
import os
from typing import TextIO

import ray
from ray.exceptions import RayError, RayTaskError

from ..errors import InputError
from ..render.store import write_atomically
from .manifest import BadLine, Job
from .progress import BatchState, BatchView
from .worker import one_line, run_job

RESULTS = "results.jsonl"


@ray.remote
def _render_job(job: Job, device: str, keep_render: bool, tracker) -> dict:
    return run_job(job, device, keep_render, lambda event: tracker.update.remote(job.line, event))


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Ray for this process: the one already initialized, the cluster at `address`, or a local one started here.
    True when this call connected (the caller then shuts it down)."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR, runtime_env=_runtime_env())
    except ConnectionError as error:
        raise InputError(f"cannot reach the Ray cluster at {address}: {' '.join(str(error).split())}; start it with "
                         "`ray start --head` or leave out --address for a local Ray") from None
    return True


def _runtime_env() -> dict:
    """Workers import the driver's hallo_core when it runs from a source checkout (an installed pack is found by
    the workers' own Python)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.basename(root) in ("site-packages", "dist-packages"):
        return {}
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}}


def run_batch(jobs: list[Job], bad: list[BadLine], out_dir: str, *, address: str | None = None,
              gpus_per_job: float | None = None, cpus_per_job: float = 1, resources: dict | None = None,
              retries: int = 3, keep_render: bool = False, redo: bool = False, stream: TextIO | None = None) -> dict:
    """Runs the jobs; returns the results by line (also written to `out_dir`/results.jsonl as jobs finish)."""
    results_path = os.path.join(out_dir, RESULTS)
    records: dict[int, dict] = {b.line: {"line": b.line, "status": "invalid", "output": None, "error": b.error}
                                for b in bad}
    previous = {} if redo else _previous_results(results_path)
    todo = []
    for job in jobs:
        before = previous.get(job.key)
        if before and os.path.isfile(job.output) and os.path.getsize(job.output) == before.get("output_bytes"):
            records[job.line] = {**before, "line": job.line, "status": "done before"}
        else:
            todo.append(job)
    _write_results(results_path, records)
    view = BatchView(len(jobs), stream)
    for line in sorted(r for r in records if records[r]["status"] == "done before"):
        view.job_finished(records[line])
    if not todo:
        return records

    owned = connect(address)
    try:
        cluster = ray.cluster_resources()
        if gpus_per_job is None:  # one job per GPU where there are GPUs
            gpus_per_job = 1 if cluster.get("GPU", 0) > 0 else 0
        need = {"CPU": cpus_per_job, "GPU": gpus_per_job, **(resources or {})}
        short = [f"{name} {amount:g} (the cluster has {cluster.get(name, 0):g})" for name, amount in need.items()
                 if amount and cluster.get(name, 0) < amount]
        if short and address is None:
            raise InputError(f"one job needs {', '.join(short)}; give --gpus-per-job / --cpus-per-job / --resources "
                             "that one machine has, or run on a cluster with --address")
        if short:
            print(f"note: a job needs {', '.join(short)}; the jobs wait until such a node joins the cluster",
                  file=view.stream)
        device = "cuda" if gpus_per_job > 0 else "cpu"
        tracker = ray.remote(num_cpus=0)(BatchState).remote([job.line for job in todo])
        pending = {}
        for job in todo:
            task = _render_job.options(num_cpus=cpus_per_job, num_gpus=gpus_per_job, resources=resources or None,
                                       max_retries=retries, retry_exceptions=False, name=f"hallo batch line {job.line}")
            pending[task.remote(job, device, keep_render, tracker)] = job
        finished = {line: record for line, record in records.items() if record["status"] == "done before"}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0.5)
                snapshot = ray.get(tracker.snapshot.remote())
                for ref in ready:
                    job = pending.pop(ref)
                    record = _finish(job, ref, snapshot["jobs"][job.line])
                    records[job.line] = finished[job.line] = record
                    _write_results(results_path, records)
                    view.job_finished(record)
                view.draw(snapshot, finished)
        except KeyboardInterrupt:  # stop the running jobs; their finished clips stay for the next run
            for ref, job in pending.items():
                ray.cancel(ref, force=True)
                records[job.line] = {"line": job.line, "status": "interrupted", "output": job.output,
                                     "error": f"the batch was interrupted; finished clips are kept in "
                                              f"{job.render_dir} and running the batch again resumes"}
            _write_results(results_path, records)
            raise
        finally:
            view.close()
    finally:
        if owned:
            ray.shutdown()
    return records


def _finish(job: Job, ref, progress: dict) -> dict:
    """The job's results record, from its return value or from what Ray says stopped it."""
    # at least 1: a job that fails at once can return before the actor has counted its start
    attempts = max(progress["attempts"], 1)
    try:
        record = ray.get(ref)
    except RayTaskError as error:  # something that is not an Exception escaped the job (worker.py catches those)
        record = {"line": job.line, "output": job.output, "error": one_line(error.cause or error)}
    except RayError as error:  # the worker or its node died more often than --retries allows
        record = {"line": job.line, "output": job.output,
                  "error": f"its worker stopped {attempts} time{'s' if attempts > 1 else ''} ({type(error).__name__}); "
                           f"finished clips are kept in {job.render_dir} and running the batch again resumes"}
    record.update(status="failed" if record["error"] else "done", attempts=attempts, key=job.key)
    if progress["seconds"] is not None:
        record["seconds"] = progress["seconds"]  # from the first attempt's start: what the job cost the batch
    if not record["error"]:
        record["output_bytes"] = os.path.getsize(job.output)
    return record


def _previous_results(path: str) -> dict[str, dict]:
    """Done jobs of an earlier run of this batch, by job key."""
    done = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for text in f:
                try:
                    record = json.loads(text)
                except ValueError:
                    continue  # a results file is ours to rewrite; a damaged line only means that job runs again
                if isinstance(record, dict) and record.get("status") in ("done", "done before") and record.get("key"):
                    done[record["key"]] = record
    return done


def _write_results(path: str, records: dict[int, dict]) -> None:
    """One JSON object per line, by manifest line; written atomically (never half a file)."""
    write_atomically(path, "".join(json.dumps(records[line]) + "\n" for line in sorted(records)).encode())

