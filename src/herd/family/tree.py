"""The family tree: catalogue members and a workspace's artifacts as one lineage graph.

Two sources feed one graph. The catalogue gives the published family (LLaMA → Alpaca, Llama 2 →
Code Llama → Code Llama - Python, ...); a workspace gives what herd actually derived, linked through
each artifact's ``lineage.json`` (``parent.lineage_id`` names a parent artifact, otherwise the parent
is a base such as ``smollm2``). A folder of committed scorecards (``docs/scorecards``) stands in for
the runs that wrote them. Every folder that looks like an artifact becomes a node, including the
broken ones: a corrupt ``lineage.json`` or an unfinished ``.partial`` staging folder is shown with its
problem, never dropped, because a silently missing branch is how people lose track of runs.
The drawing (PNG/HTML) is in :mod:`herd.family.draw`; this module only builds and prints the graph.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from herd.artifacts import LINEAGE_FILE, read_lineage
from herd.core.errors import HerdError
from herd.family.catalogue import Catalogue, Member

NodeKind = Literal["member", "external", "base", "missing", "artifact"]
Status = Literal["published", "ok", "partial", "corrupt", "base", "missing"]
# Folders a stage leaves behind while it runs, or when it is killed (stages/sft.py, artifacts.py).
UNFINISHED = {
    ".work": "training in progress or interrupted (`herd derive --resume` continues it)",
    ".partial": "unfinished staging folder (interrupted while saving, or still saving)",
    ".old": "left over from an interrupted publish",
}
SKIP_DIRS = {"__pycache__", "node_modules", "mlruns", "tensorboard", "wandb"}  # trackers keep lineage copies


@dataclass
class Found:
    """A folder of the workspace that is, or was meant to be, an artifact."""

    path: Path
    lineage: dict | None
    status: Literal["ok", "partial", "corrupt"]
    problem: str | None = None


@dataclass
class Node:
    id: str
    label: str
    kind: NodeKind
    status: Status
    headline: str | None = None  # published headline (members) or scorecard headline (artifacts)
    detail: str | None = None  # recipe and its status, base description, or what is wrong
    path: str | None = None


@dataclass
class Edge:
    src: str
    dst: str
    label: str
    kind: Literal["catalogue", "external", "lineage", "rederives"]  # rederives: member → the artifact of its recipe


@dataclass
class Tree:
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    workspace: str | None = None

    def add(self, node: Node) -> Node:
        return self.nodes.setdefault(node.id, node)

    def parents(self, node_id: str) -> list[Edge]:
        return [e for e in self.edges if e.dst == node_id]

    def children(self, node_id: str) -> list[Edge]:
        return [e for e in self.edges if e.src == node_id]

    def roots(self) -> list[Node]:
        has_parent = {e.dst for e in self.edges}
        return [n for n in self.nodes.values() if n.id not in has_parent]

    def to_dict(self) -> dict:
        return {"workspace": self.workspace, "nodes": [asdict(n) for n in self.nodes.values()],
                "edges": [asdict(e) for e in self.edges]}


# ---- scanning a workspace ----------------------------------------------------------------------

def scan_workspace(root: str | Path, max_depth: int = 6) -> list[Found]:
    """Every artifact folder under ``root`` (any depth up to ``max_depth``), good or broken, and the
    committed scorecards at its top (:func:`scan_scorecards`)."""
    root = Path(root)
    found: list[Found] = scan_scorecards(root)
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        keep = [d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS]
        dirnames[:] = sorted(keep) if depth < max_depth else []
        unfinished = None if here == root else next(
            (why for suffix, why in UNFINISHED.items() if here.name.endswith(suffix)), None)
        if LINEAGE_FILE in filenames:
            found.append(_inspect(here, unfinished))
        elif unfinished:
            found.append(Found(here, None, "partial", unfinished))
            dirnames[:] = []
    return found


SCORECARD_KEYS = ("recipe", "profile", "headline", "run")  # what a derive's scorecard.json always holds


def scan_scorecards(root: Path) -> list[Found]:
    """Scorecards committed without their artifact (``docs/scorecards/<recipe>-<base>-<profile>.json``):
    each stands for the run that wrote it, so ``herd tree docs/scorecards`` draws the published runs
    from the repository alone. The parent is the base named by ``--base`` in the scorecard's command,
    else by the file name; JSON files that are not scorecards are not artifacts and are left out."""
    if (root / LINEAGE_FILE).is_file():
        return []
    found = []
    for path in sorted(root.glob("*.json")) if root.is_dir() else []:
        try:
            card = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not isinstance(card, dict) or not all(k in card for k in SCORECARD_KEYS):
            continue
        recipe, profile = str(card["recipe"]), str(card["profile"])
        found.append(Found(path, {"name": path.stem, "parent": {"name": _scorecard_base(card, path), "kind": "named"},
                                  "recipe": {"name": recipe, "profile": profile}, "scorecard": card}, "ok"))
    return found


def _scorecard_base(card: dict, path: Path) -> str:
    command = str((card.get("run") or {}).get("command") or "")
    try:
        words = shlex.split(command)
    except ValueError:  # unbalanced quotes: the words still name the flag
        words = command.split()
    if "--base" in words[:-1]:
        return words[words.index("--base") + 1]
    stem, head, tail = path.stem, f"{card['recipe']}-", f"-{card['profile']}"
    if stem.startswith(head) and stem.endswith(tail) and len(stem) > len(head) + len(tail):
        return stem[len(head):-len(tail)]
    return "unknown base"


def _inspect(folder: Path, unfinished: str | None) -> Found:
    try:
        lineage = read_lineage(folder)
    except HerdError as e:
        return Found(folder, None, "corrupt", str(e).replace(str(folder) + "/", ""))
    if not isinstance(lineage.get("name"), str) or not isinstance(lineage.get("parent"), dict):
        return Found(folder, None, "corrupt", f"{LINEAGE_FILE} lacks a 'name' or a 'parent' record")
    if unfinished:
        return Found(folder, lineage, "partial", unfinished)
    if lineage.get("weights_sha256") and not any(folder.glob("*.safetensors")):
        return Found(folder, lineage, "partial", f"weights named in {LINEAGE_FILE} are missing")
    return Found(folder, lineage, "ok")


# ---- building the graph ------------------------------------------------------------------------

def build_tree(catalogue: Catalogue | None, found: list[Found], workspace: str | Path | None = None, *,
               members: bool = True) -> Tree:
    """One graph of the catalogue's members and the found artifacts, linked by lineage. With
    ``members=False`` the catalogue only names which member each artifact re-derives."""
    tree = Tree(workspace=str(workspace) if workspace is not None else None)
    if catalogue is not None and members:
        _add_catalogue(tree, catalogue)
    if found:
        _add_artifacts(tree, found, Path(workspace) if workspace is not None else None, catalogue)
    return tree


def _add_catalogue(tree: Tree, catalogue: Catalogue) -> None:
    for m in catalogue.members:
        tree.add(Node(f"member:{m.id}", m.name, "member", "published", headline=_member_headline(m),
                      detail=_member_detail(m)))
    for m in catalogue.members:
        label = f"{m.recipe.name} · {'+'.join(m.stages)}" if m.recipe else ""
        for p in m.parents:
            tree.edges.append(Edge(f"member:{p}", f"member:{m.id}", label, "catalogue"))
        if not m.llama_based:
            ext = tree.add(Node(f"external:{m.id}", m.base, "external", "base", detail="not Llama"))
            tree.edges.append(Edge(ext.id, f"member:{m.id}", label, "external"))


def _member_headline(m: Member) -> str | None:
    h = m.headline
    return f"{h.benchmark} {h.metric}: {h.value_text()} ({h.release}, {h.cite})" if h else None


def _member_detail(m: Member) -> str:
    if m.recipe is None:
        return "parent"
    state = m.recipe_state()
    return f"recipe {m.recipe.file}: {state}" + ("" if m.llama_based else "; not built on Llama")


def _add_artifacts(tree: Tree, found: list[Found], root: Path | None, catalogue: Catalogue | None) -> None:
    from herd.base import named_bases

    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(root)) if root is not None else str(p)
        except ValueError:
            return str(p)

    by_lineage_id: dict[str, str] = {}
    for f in found:
        nid = f"artifact:{rel(f.path)}"
        label = f.lineage["name"] if f.lineage else f.path.name
        member = _rederived_member(f.lineage, catalogue)
        detail = f.problem or _artifact_detail(f.lineage, catalogue, member)
        tree.add(Node(nid, label, "artifact", f.status, headline=_scorecard_headline(f.lineage),
                      detail=detail, path=rel(f.path)))
        from_base = f.lineage is not None and not (f.lineage.get("parent") or {}).get("lineage_id")
        if member is not None and from_base and f"member:{member.id}" in tree.nodes:
            # drawn under the paper it re-derives; a chain of stages hangs there by its first artifact
            tree.edges.append(Edge(f"member:{member.id}", nid, "", "rederives"))
        if f.lineage and f.lineage.get("id"):
            by_lineage_id.setdefault(f.lineage["id"], nid)

    bases = named_bases()
    for f in found:
        if not f.lineage:
            continue  # corrupt: its parent is unknown, so it stands alone, marked
        parent = f.lineage["parent"]
        pid = parent.get("lineage_id")
        if pid:
            src = by_lineage_id.get(pid)
            if src is None:
                src = tree.add(Node(f"missing:{pid[:12]}", str(parent.get("name") or pid[:12]), "missing",
                                    "missing", detail=f"parent artifact {pid[:12]} not in this workspace")).id
        else:
            name = str(parent.get("name") or "?")
            kind = parent.get("kind") or "base"
            src = tree.add(Node(f"base:{name}", name, "base", "base",
                                detail=bases.get(name) or f"{kind} base")).id
        tree.edges.append(Edge(src, f"artifact:{rel(f.path)}", _edge_label(f.lineage), "lineage"))


def _edge_label(lineage: dict) -> str:
    recipe, stage = lineage.get("recipe") or {}, lineage.get("stage") or {}
    parts = [p for p in (recipe.get("name"), stage.get("name")) if p]
    if stage.get("kind") and stage.get("kind") != stage.get("name"):
        parts.append(str(stage["kind"]))
    label = " · ".join(str(p) for p in parts) or "derived"
    return label + (f" ({recipe['profile']})" if recipe.get("profile") else "")


def _rederived_member(lineage: dict | None, catalogue: Catalogue | None) -> Member | None:
    name = ((lineage or {}).get("recipe") or {}).get("name")
    if not name or catalogue is None:
        return None
    try:
        return catalogue.find(name)
    except HerdError:
        return None


def _artifact_detail(lineage: dict | None, catalogue: Catalogue | None, member: Member | None) -> str | None:
    """Which catalogue member (``member``, looked up once by the caller) the artifact's recipe
    re-derives, when there is one."""
    name = ((lineage or {}).get("recipe") or {}).get("name")
    if not name or catalogue is None:
        return None
    return f"re-derives {member.name}" if member is not None else f"recipe {name}"


def _scorecard_headline(lineage: dict | None) -> str | None:
    """``name: parent → derived`` from the scorecard's headline, tolerating partial scorecards."""
    card = (lineage or {}).get("scorecard")
    head = card.get("headline") if isinstance(card, dict) else None
    if not isinstance(head, dict):
        return None

    def num(v) -> str:
        return f"{v:.4g}" if isinstance(v, (int, float)) else "?"

    text = f"{head.get('name', 'score')}: {num(head.get('parent'))} → {num(head.get('derived'))}"
    ci = head.get("ci95")
    if isinstance(ci, list) and len(ci) == 2 and head.get("verdict"):
        text += f" (Δ 95% CI [{num(ci[0])}, {num(ci[1])}]: {head['verdict']})"
    return text


# ---- text form ---------------------------------------------------------------------------------

MARK = {"partial": "PARTIAL", "corrupt": "CORRUPT", "missing": "MISSING"}


def render_text(tree: Tree) -> str:
    """The tree as indented text: each root, then its descendants along lineage edges."""
    lines: list[str] = []
    seen: set[str] = set()
    order = {"member": 0, "external": 1, "base": 2, "missing": 3, "artifact": 4}
    roots = sorted(tree.roots(), key=lambda n: order[n.kind])  # stable: catalogue order kept
    groups = [("Llama family (catalogue; published numbers from recipes.md)",
               [n for n in roots if n.kind in ("member", "external")]),
              (f"Workspace {tree.workspace}" if tree.workspace else "Workspace",
               [n for n in roots if n.kind not in ("member", "external")])]
    for title, group in groups:
        if not group:
            continue
        if lines:
            lines.append("")
        lines.append(title)
        for n in group:
            _walk(tree, n.id, None, "", "", lines, seen)
    return "\n".join(lines)


def _walk(tree: Tree, nid: str, via: Edge | None, lead: str, branch: str, lines: list[str], seen: set[str]) -> None:
    node = tree.nodes[nid]
    edge = f"[{via.label}]→ " if via is not None and via.label else ("─ " if via is not None else "")
    if nid in seen:
        lines.append(f"{lead}{branch}{edge}{node.label} (shown above)")
        return
    seen.add(nid)
    lines.append(f"{lead}{branch}{edge}{_node_text(node)}")
    kids = [e for e in tree.children(nid) if e.kind != "rederives"]  # the text lists artifacts by lineage only
    child_lead = lead + ("" if not branch else ("│   " if branch.startswith("├") else "    "))
    for i, e in enumerate(kids):
        _walk(tree, e.dst, e, child_lead, "└─" if i == len(kids) - 1 else "├─", lines, seen)


def _node_text(n: Node) -> str:
    bits = [n.label]
    if n.status in MARK:
        bits.append(f"[{MARK[n.status]}: {n.detail}]")
    elif n.kind == "external":
        bits.append("[not Llama]")
    if n.headline:
        bits.append(f"| {n.headline}")
    if n.detail and n.status not in MARK and n.kind != "external":
        bits.append(f"({n.detail})")
    if n.path:
        bits.append(f"<{n.path}>")
    return "  ".join(bits)
