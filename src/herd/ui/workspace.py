"""The workspace the UI shows: paths confined to it, the family tree over it, one artifact's record.

Every path that arrives from the page goes through :meth:`Workspace.resolve`, which refuses anything
outside the workspace folder (``..``, absolute paths elsewhere, symlinks that point out), so the page
can never read or write beyond what ``herd ui WORKSPACE`` was given.
"""

from __future__ import annotations

import json
from pathlib import Path

from herd.core.errors import HerdError
from herd.core.jsonlines import json_lines


class OutsideWorkspace(HerdError):
    """A path from the page that leads outside the workspace."""


class Workspace:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    def resolve(self, rel: str, *, must_exist: bool = True) -> Path:
        """``rel`` (relative to the workspace, or absolute inside it) as a real path inside the workspace."""
        if not rel or "\x00" in rel:
            raise HerdError("empty path")
        p = Path(rel).expanduser()
        p = (p if p.is_absolute() else self.root / p).resolve()
        if p != self.root and not p.is_relative_to(self.root):
            raise OutsideWorkspace(f"{rel}: outside the workspace {self.root}; the UI only reads and writes "
                                   "inside it (start `herd ui` on a folder that holds it)")
        if must_exist and not p.exists():
            raise HerdError(f"{rel}: no such file or folder in the workspace {self.root}")
        return p

    def rel(self, p: Path) -> str:
        return str(p.resolve().relative_to(self.root)) if p.resolve() != self.root else "."

    def tree(self, catalogue: bool = True) -> dict:
        """The ``herd tree`` graph as JSON, with the drawing's layout (x, layer) and styles per node."""
        from herd.family.catalogue import load_catalogue
        from herd.family.draw import _style, layout
        from herd.family.tree import build_tree, scan_workspace

        # artifact folders only: each node opens its artifact page (a committed scorecard file has none)
        found = [f for f in scan_workspace(self.root) if f.path.is_dir()] if self.root.is_dir() else []
        tree = build_tree(load_catalogue() if catalogue else None, found, self.root)
        pos = layout(tree)
        data = tree.to_dict()
        for n in data["nodes"]:
            node = tree.nodes[n["id"]]
            n["x"], n["layer"] = pos.get(n["id"], (0.0, 0))
            n["fill"], n["border"], n["dash"] = _style(node)
        return data

    def files(self, suffixes: tuple[str, ...] = (".json", ".jsonl", ".yaml", ".yml")) -> list[str]:
        """Data and recipe files the Run page may offer (skipping artifacts' own files, the checkpoints and
        metrics of unfinished stages, and trackers)."""
        out = []
        for p in sorted(self.root.rglob("*")):
            parts = p.relative_to(self.root).parts
            if (p.suffix in suffixes and p.is_file() and len(parts) <= 4
                    and not any(x.startswith(".") or x in ("mlruns", "tensorboard", "wandb") for x in parts)
                    and not any(x.endswith((".work", ".partial", ".old")) for x in parts[:-1])
                    and not (p.parent / "lineage.json").is_file() and p.name != "derive.json"):
                out.append(str(p.relative_to(self.root)))
        return out

    def artifact(self, rel: str) -> dict:
        """One artifact folder's record for the Artifact page: lineage, scorecard, training curves, state."""
        from herd.family.tree import scan_workspace

        folder = self.resolve(rel)
        if (folder / "model").is_symlink():  # a run folder: its derived model
            folder = self.resolve(self.rel(folder / "model"))
        found = [f for f in scan_workspace(folder.parent, max_depth=1) if f.path.resolve() == folder]
        status, problem = (found[0].status, found[0].problem) if found else ("corrupt", "not a herd artifact")
        lineage = found[0].lineage if found else None
        card = _read_json(folder / "scorecard.json")
        return {"path": self.rel(folder), "name": (lineage or {}).get("name") or folder.name, "status": status,
                "problem": problem, "lineage": lineage, "scorecard": card, "metrics": read_metrics(folder),
                "exports": sorted(self.rel(p) for p in (folder / "export").glob("*")) if (folder / "export").is_dir()
                else []}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_metrics(folder: Path) -> list[dict]:
    """The rows of ``metrics.jsonl`` (the training curves' source of truth); a torn last line is skipped."""
    rows = []
    path = folder / "metrics.jsonl"
    if path.is_file():
        for line in json_lines(path.read_text(encoding="utf-8")):
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows
