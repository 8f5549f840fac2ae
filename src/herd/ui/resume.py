"""Interrupted derives in the workspace, whoever started them, and the command that resumes each.

A derive records itself in ``derive.json`` (:mod:`herd.core.run_record`) before its first stage: the
command line's arguments, paths absolute, and its process. A record still ``running`` whose process is
gone, or one that says ``failed``, is a run to resume, from the command line or from this page: the
page rebuilds ``herd derive ... --resume`` from the record and sends it through the Run form's own
checks (:func:`herd.ui.runs.validate_derive`), so every path stays inside the workspace. What cannot be
resumed from here is listed with the reason and the command line that resumes it instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from herd.core.errors import HerdError
from herd.core.run_record import RUN_FILE, read_run_record, still_running
from herd.ui.workspace import Workspace

STAGE_DIR = re.compile(r"^\d{2}-.+-[0-9a-f]{10}(\.work|\.partial)?$")  # derive.py's stage folders
SKIP = {"mlruns", "tensorboard", "wandb", "builds", "export", "__pycache__"}


class CannotResume(HerdError):
    """A run the page will not resume, with why and what to do instead."""


def run_folders(ws: Workspace, max_depth: int = 4) -> list[Path]:
    """Folders that hold a derive: a ``derive.json``, or stage folders (``01-sft-<hash>[.work]``)."""
    out, todo = [], [(ws.root, 0)]
    while todo:
        folder, depth = todo.pop()
        try:
            subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
        except OSError:
            continue
        if (folder / RUN_FILE).is_file() or any(STAGE_DIR.match(p.name) for p in subs):
            out.append(folder)
            continue  # a run's stage folders hold no further runs
        if depth < max_depth:
            todo += [(p, depth + 1) for p in subs if not p.name.startswith(".") and p.name not in SKIP
                     and not (p / "lineage.json").is_file()]
    return sorted(out)


def interrupted_runs(ws: Workspace, busy: dict[Path, int]) -> list[dict]:
    """Every run folder that did not finish, with whether the page can resume it (``busy``: folders a
    queued or running job of this UI writes, to its job id)."""
    runs = []
    for folder in run_folders(ws):
        rec = read_run_record(folder)
        unfinished = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.endswith((".work", ".partial"))
                            and STAGE_DIR.match(p.name))
        if rec is None and not unfinished:
            continue
        if rec is not None and rec.get("state", "done") == "done":  # records before states were final ones
            continue
        row = {"out": ws.rel(folder), "state": "interrupted", "command": (rec or {}).get("command"),
               "started": (rec or {}).get("started"), "error": (rec or {}).get("error"),
               "stages_done": sorted(p.name for p in folder.iterdir() if STAGE_DIR.match(p.name)
                                     and (p / "lineage.json").is_file()),
               "unfinished": [{"folder": u, "checkpoint_step": _checkpoint_step(folder / u)} for u in unfinished]}
        if rec is not None and (still_running(rec) or folder.resolve() in busy):
            row["state"] = "running"
        elif rec is not None and rec.get("state") == "failed":
            row["state"] = "failed"
        try:
            plan(ws, folder, rec, busy)
            row.update(resumable=True, why=None)
        except CannotResume as e:
            row.update(resumable=False, why=str(e))
        runs.append(row)
    return runs


def plan(ws: Workspace, folder: Path, rec: dict | None, busy: dict[Path, int]) -> dict:
    """The Run form's fields that resume ``folder``'s derive, from its record; CannotResume says why not.
    Cheap checks only (no recipe or data is read): :func:`resume_argv` runs the form's full ones."""
    from herd.base import named_bases
    from herd.core.hashing import sha256_file
    from herd.core.paths import repo_root

    rel = ws.rel(folder)
    if folder.resolve() in busy:
        raise CannotResume(f"{rel}: job #{busy[folder.resolve()]} of this page is running or queued there")
    if rec is None or not isinstance(rec.get("args"), dict):
        raise CannotResume(f"{rel}: no {RUN_FILE} run record (a herd older than run records, or a run killed "
                           "before its first stage), so the page does not know its command; resume it with "
                           "the command that started it plus --resume")
    if rec.get("state", "done") == "done":
        raise CannotResume(f"{rel}: this derive finished; nothing to resume")
    if still_running(rec):
        raise CannotResume(f"{rel}: still running (pid {rec.get('pid')} on {rec.get('host')}); cancel that "
                           "process first, or wait for it")
    args, cli = rec["args"], f"{rec.get('command') or 'herd derive ...'} --resume"
    if args.get("overrides"):
        raise CannotResume(f"{rel}: started from Python with overrides the command line cannot repeat "
                           f"({json.dumps(args['overrides'], sort_keys=True)}); resume it with herd.api.derive("
                           "..., resume=True)")
    try:  # the out folder is where the record is (a moved workspace resumes where it is now)
        recipe_file = Path(str(args.get("recipe_file") or ""))
        shipped = repo_root() / "recipes"
        if not recipe_file.is_file():
            raise CannotResume(f"{rel}: its recipe {recipe_file} is gone")
        if rec.get("recipe_sha256") and sha256_file(recipe_file) != rec["recipe_sha256"]:
            raise CannotResume(f"{rel}: its recipe {recipe_file} changed since the run started, so a resume "
                               "would not continue the same stages; start it again from the form instead")
        recipe = recipe_file.stem if recipe_file.parent.resolve() == shipped.resolve() else ws.rel(
            ws.resolve(str(recipe_file)))
        base = args.get("base")
        if base and base not in named_bases():
            base = ws.rel(ws.resolve(str(base)))
        data = [ws.rel(ws.resolve(str(d))) for d in args.get("data") or []]
    except HerdError as e:  # a path outside the workspace, or gone
        if isinstance(e, CannotResume):
            raise
        raise CannotResume(f"{rel}: the page cannot resume it: {e}. From the command line: {cli}") from None
    return {"recipe": recipe, "base": base or "", "profile": args.get("profile") or "tiny", "data": data,
            "max_steps": args.get("max_steps"), "out": rel, "resume": True, "report_to": args.get("report_to")}


def resume_argv(ws: Workspace, rel: str, busy: dict[Path, int]) -> tuple[list[str], str, str]:
    """``herd derive ... --resume`` for the run folder ``rel``, after the Run form's checks."""
    from herd.engine.reporting import parse_targets
    from herd.ui.runs import validate_derive

    folder = ws.resolve(rel)
    body = plan(ws, folder, read_run_record(folder), busy)
    argv, label, out = validate_derive(ws, body)
    if body["report_to"] is not None:  # as the run had it (None: the recipe's own report_to)
        argv += ["--report-to", ",".join(parse_targets(body["report_to"])) or "none"]
    return argv, f"{label} (resumed)", out


def _checkpoint_step(work: Path) -> int | None:
    for name in ("checkpoint", "checkpoint.old"):
        try:
            return int(json.loads((work / name / "state.json").read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None
