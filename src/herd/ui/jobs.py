"""Background jobs of the UI (a derive, an export): one at a time, the rest queued, each a ``herd`` child.

A job is the same command line the CLI would run, in its own process group, so it shares nothing with the
server (a crash or an out-of-memory kill takes the job, not the page) and cancel is a signal to the group.
Its output is read line by line into events the page streams: every line as ``log``, and the lines that
:class:`herd.core.progress.Progress` and :func:`~herd.core.progress.phase` write (with
``HERD_PROGRESS_EVERY=0``: one per step) parsed into ``progress`` events (stage, step, loss, tokens/s, ETA).
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# [train] 1/2 steps (50.0%), 3.1 s/step, elapsed 0:01, ETA 0:01, loss=10.8181, tok_s=3879
STEP_LINE = re.compile(r"^\[(?P<desc>[^\]]+)\] (?P<n>\d+)/(?P<total>\d+) (?P<unit>[\w-]+) \(")
PHASE_LINE = re.compile(r"^\[(?:derive|eval)\] (?P<what>[^:]+)$")  # a phase starting (not its "done in")


def parse_progress(line: str, stage: str | None) -> dict | None:
    """A ``progress`` event from one output line, or None for lines that are not progress."""
    m = STEP_LINE.match(line)
    if m:
        ev = {"type": "progress", "stage": stage, "what": m["desc"], "step": int(m["n"]), "total": int(m["total"]),
              "unit": m["unit"]}
        for key, pat in (("loss", r"loss=([-\d.e+]+)"), ("tokens_per_s", r"tok_s=([\d.]+)"),
                         ("eta", r"ETA ([\d:?]+)"), ("elapsed", r"elapsed ([\d:]+)")):
            if (v := re.search(pat, line)) is not None:
                ev[key] = float(v[1]) if key in ("loss", "tokens_per_s") else v[1]
        return ev
    m = PHASE_LINE.match(line)
    if m:
        return {"type": "progress", "stage": m["what"].strip()}
    return None


@dataclass
class Job:
    id: int
    kind: str  # derive | export
    argv: list[str]  # after ``herd``
    label: str
    out: str | None = None  # workspace-relative folder the job writes
    state: str = "queued"  # queued | running | done | failed | cancelled
    events: list[dict] = field(default_factory=list)
    returncode: int | None = None
    proc: subprocess.Popen | None = None

    def summary(self) -> dict:
        last = next((e for e in reversed(self.events) if e["type"] == "progress"), None)
        return {"id": self.id, "kind": self.kind, "label": self.label, "out": self.out, "state": self.state,
                "argv": ["herd", *self.argv], "returncode": self.returncode, "progress": last,
                "events": len(self.events)}


class JobQueue:
    """Jobs run in order by one worker thread; ``cwd`` is where their relative paths resolve."""

    def __init__(self, cwd: Path, env: dict | None = None):
        self.cwd, self.env = Path(cwd), env or {}
        self.jobs: dict[int, Job] = {}
        self._ids = itertools.count(1)
        self._cv = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="herd-ui-jobs", daemon=True)
        self._worker.start()

    def submit(self, kind: str, argv: list[str], label: str, out: str | None = None) -> Job:
        with self._cv:
            job = Job(next(self._ids), kind, argv, label, out)
            self.jobs[job.id] = job
            job.events.append({"type": "state", "state": "queued"})
            self._cv.notify_all()
        return job

    def cancel(self, job_id: int) -> Job:
        job = self.jobs[job_id]
        with self._cv:
            if job.state == "queued":
                self._set(job, "cancelled")
                return job
        if job.state == "running" and job.proc is not None:
            job.events.append({"type": "log", "line": "[ui] cancel requested: stopping the job"})
            job.state = "cancelling"
            _signal_group(job.proc, signal.SIGTERM)
            threading.Timer(10.0, _signal_group, (job.proc, signal.SIGKILL)).start()
        return job

    def _set(self, job: Job, state: str) -> None:
        job.state = state
        job.events.append({"type": "state", "state": state, "returncode": job.returncode})

    def _next(self) -> Job | None:
        with self._cv:
            while not self._closed:
                job = next((j for j in self.jobs.values() if j.state == "queued"), None)
                if job is not None:
                    self._set(job, "running")
                    return job
                self._cv.wait()
        return None

    def _run(self) -> None:
        while (job := self._next()) is not None:
            env = {**os.environ, "HERD_PROGRESS_EVERY": "0", "PYTHONUNBUFFERED": "1", **self.env}
            try:
                job.proc = subprocess.Popen([sys.executable, "-m", "herd.cli", *job.argv], cwd=self.cwd, env=env,
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                            bufsize=1, start_new_session=True)
            except OSError as e:
                job.events.append({"type": "log", "line": f"[ui] could not start: {e}"})
                self._set(job, "failed")
                continue
            stage = None
            for raw in job.proc.stdout:
                line = raw.rstrip("\n")
                job.events.append({"type": "log", "line": line})
                ev = parse_progress(line, stage)
                if ev is not None:
                    stage = ev["stage"] if ev.get("stage") else stage
                    ev["stage"] = stage
                    job.events.append({**ev, "t": round(time.time(), 2)})
            job.returncode = job.proc.wait()
            cancelled = job.state == "cancelling"
            self._set(job, "cancelled" if cancelled else "done" if job.returncode == 0 else "failed")

    def close(self) -> None:
        with self._cv:
            self._closed = True
            for job in self.jobs.values():
                if job.state in ("running", "cancelling") and job.proc is not None:
                    _signal_group(job.proc, signal.SIGTERM)
            self._cv.notify_all()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
