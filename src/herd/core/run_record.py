"""``derive.json``: what a derive's workspace records about the run, from its first stage to its end.

A derive writes it when its inputs are validated (``state: running``, the command line's arguments
with every path made absolute, the process id and host) and rewrites it when it ends (``done`` with
the phase table, or ``failed`` with the error). A run killed on the way (SIGKILL, out of memory, a
reboot) leaves ``running`` with a process that no longer exists: that is how ``herd ui`` finds an
interrupted derive, whoever started it, and knows the exact ``herd derive ... --resume`` that
continues it. Plain JSON, no torch: every layer may read it.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

RUN_FILE = "derive.json"


def run_args(recipe: str, *, base: str | None, profile: str, data: list[str] | None, out: Path,
             max_steps: int | None, report_to: str | list[str] | None, overrides: dict | None,
             recipe_file: str | None) -> dict:
    """The derive's arguments as the command line gave them, paths absolute (the CLI's working folder is
    not the reader's): what a resume passes back to ``herd derive``."""
    def absolute(p: str) -> str:
        return str(Path(p).expanduser().resolve())

    return {"recipe": recipe, "recipe_file": absolute(recipe_file) if recipe_file else None,
            "base": absolute(base) if base and Path(base).expanduser().exists() else base,
            "profile": profile, "data": [absolute(d) for d in data or []], "out": absolute(str(out)),
            "max_steps": max_steps, "report_to": report_to, "overrides": overrides}


def write_run_record(workspace: Path, record: dict) -> None:
    """Atomically (a reader never sees half a file)."""
    path = Path(workspace) / RUN_FILE
    tmp = path.with_name(f".{RUN_FILE}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def running_record(args: dict, command: str, recipe_sha256: str | None, when: str) -> dict:
    """The record of a derive that is running in this process."""
    return {"state": "running", "command": command, "args": args, "recipe_sha256": recipe_sha256,
            "started": when, "pid": os.getpid(), "host": socket.gethostname()}


def earlier_legs(previous: dict | None) -> list[dict]:
    """The legs of a run before this one, when this one resumes it: each earlier start and how it ended
    (``running`` for one that was killed), so a resumed run's scorecard says its wall time is one leg's."""
    if not previous or not previous.get("started"):
        return []
    return [*previous.get("earlier_legs", []),
            {"started": previous["started"], "state": previous.get("state"), "finished": previous.get("finished")}]


def read_run_record(folder: Path) -> dict | None:
    """``folder/derive.json``, or None when absent or unreadable."""
    try:
        rec = json.loads((Path(folder) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def still_running(record: dict) -> bool:
    """A ``running`` record whose process is alive on this host (elsewhere it cannot be told: assume so)."""
    if record.get("state") != "running":
        return False
    if record.get("host") != socket.gethostname():
        return True
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    """A killed child its parent has not reaped yet still answers kill(0): read its state (Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
