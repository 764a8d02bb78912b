"""The batch's progress: what every job reported (kept in one Ray actor, fed by the workers) and the one view of it.

`BatchState` is plain Python: ray_runner.py runs it as an actor that the jobs send their events to (worker.py) and
the driver reads every half second. `BatchView` draws one status line (jobs done, clips done, time left): redrawn in
place on a terminal, printed when it changes in a log; finished, failed and retried jobs get a line each.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class BatchState:
    """Per job: state, attempts, clips (total, done, resumed), the current clip and step, the worker."""

    def __init__(self, lines: list[int]):
        self.jobs = {line: {"state": "waiting", "attempts": 0, "clips": None, "done": 0, "resumed": 0, "clip": None,
                            "step": 0, "steps": 0, "pid": None, "host": None, "first_start": None, "end": None}
                     for line in lines}
        self.rendered = 0  # clips rendered (not resumed), all jobs and attempts: the batch's speed
        self.first_start: float | None = None

    def update(self, line: int, event: dict) -> None:
        now = time.monotonic()
        job = self.jobs[line]
        kind = event["event"]
        if kind == "start":
            job.update(state="running", attempts=job["attempts"] + 1, done=0, resumed=0, clip=None, step=0,
                       pid=event.get("pid"), host=event.get("host"))  # a retry reports its resumed clips again
            job["first_start"] = job["first_start"] or now
            self.first_start = self.first_start or now
        elif kind == "clips":
            job["clips"] = event["clips"]
        elif kind == "clip_done":
            job.update(clips=event["clips"], done=job["done"] + 1, resumed=job["resumed"] + bool(event["resumed"]),
                       clip=None, step=0)
            self.rendered += not event["resumed"]
        elif kind == "step":
            job.update(clips=event["clips"], clip=event["clip"], step=event["step"], steps=event["steps"])
        elif kind == "write":
            job["state"] = "writing"
        elif kind == "end":
            job.update(state="failed" if event.get("error") else "done", end=now)

    def snapshot(self) -> dict:
        now = time.monotonic()
        jobs = {line: {**job, "seconds": None if job["first_start"] is None else
                       round((job["end"] or now) - job["first_start"], 2)} for line, job in self.jobs.items()}
        return {"jobs": jobs, "rendered": self.rendered,
                "running_for": 0.0 if self.first_start is None else now - self.first_start}


class BatchView:
    """Draws the batch's progress on `stream` (stderr)."""

    def __init__(self, total: int, stream: TextIO | None = None):
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.shown = ""
        self.attempts: dict[int, int] = {}

    def draw(self, snapshot: dict, finished: dict[int, dict]) -> None:
        for line, job in snapshot["jobs"].items():
            if job["attempts"] > max(1, self.attempts.get(line, 1)) and line not in finished:
                self._print(f"line {line}: its worker stopped; Ray runs it again (attempt {job['attempts']}), "
                            "resuming from its finished clips")
            self.attempts[line] = max(self.attempts.get(line, 0), job["attempts"])
        status = status_line(snapshot, finished, self.total)
        if self.tty and status != self.shown:
            self.shown = status
            self.stream.write("\r\x1b[K" + status)
            self.stream.flush()
        elif not self.tty and _progress_part(status) != _progress_part(self.shown):  # a log: a line per clip
            self.shown = status
            self._print(status)

    def job_finished(self, record: dict) -> None:
        self._print(job_line(record))

    def close(self) -> None:
        if self.tty and self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = ""

    def _print(self, text: str) -> None:
        if self.tty and self.shown:
            text = "\r\x1b[K" + text
            self.shown = ""  # the status line is drawn again at the next draw
        print(text, file=self.stream, flush=True)


def _progress_part(status: str) -> str:
    return status.split(" | about")[0]


def status_line(snapshot: dict, finished: dict[int, dict], total: int) -> str:
    """`batch: 2/5 jobs done, 1 failed, 2 running | clips 14/22 (3 resumed) | about 3 min left`."""
    jobs = snapshot["jobs"]
    done = sum(1 for r in finished.values() if not r["error"])
    failed = len(finished) - done
    open_jobs = {line: job for line, job in jobs.items() if line not in finished}
    running = sum(1 for job in open_jobs.values() if job["state"] in ("running", "writing"))
    known = [job for job in jobs.values() if job["clips"]]
    clips_done = sum(job["done"] for job in jobs.values())
    clips_total = sum(job["clips"] for job in known)
    resumed = sum(job["resumed"] for job in jobs.values())
    unknown = sum(1 for job in open_jobs.values() if not job["clips"])
    parts = [f"batch: {done}/{total} jobs done" + (f", {failed} failed" if failed else "") + f", {running} running"]
    clips = f"clips {clips_done}/" + ("?" if unknown and not clips_total else f"{clips_total}+" if unknown else
                                      str(clips_total))
    parts.append(clips + (f" ({resumed} resumed)" if resumed else ""))
    rate = snapshot["rendered"] / snapshot["running_for"] if snapshot["rendered"] and snapshot["running_for"] else 0
    if rate and open_jobs:
        mean_clips = clips_total / len(known) if known else 0
        remaining = sum(max(job["clips"] - job["done"], 0) for job in open_jobs.values() if job["clips"])
        if remaining + unknown * mean_clips:
            parts.append(f"about {_duration((remaining + unknown * mean_clips) / rate)} left")
    return " | ".join(parts)


def job_line(record: dict) -> str:
    where = f"line {record['line']}"
    if record["error"]:
        return f"{where} failed: {record['error']}"
    if record.get("status") == "done before":
        return f"{where} done in an earlier run: {record['output']}"
    resumed = f" ({record['resumed_clips']} resumed)" if record.get("resumed_clips") else ""
    attempts = f", {record['attempts']} attempts" if record.get("attempts", 1) > 1 else ""
    return (f"{where} done: {record['output']}, {record['frames']} frames, {record['clips']} clips{resumed}, "
            f"{record['seconds']:.0f} s{attempts}")


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds // 60 % 60:02d} min"
