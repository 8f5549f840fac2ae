"""``herd family`` (the catalogue: table, one member in full, JSON) and ``herd tree`` (the picture)."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

from herd.core.errors import HerdError
from herd.family.catalogue import Catalogue, Member, load_catalogue, recipes_root
from herd.family.tree import build_tree, render_text, scan_workspace

DEFAULT_WORKSPACE = "runs"
PICTURE_STEM = "family-tree"


def add_commands(subparsers) -> None:
    f = subparsers.add_parser("family", help="the Llama family herd re-derives: members, published numbers, recipes")
    f.add_argument("name", nargs="?", help="one member in full (alpaca, vicuna, codellama, llama2-chat, ...)")
    f.add_argument("--json", action="store_true", help="machine-readable output")
    f.set_defaults(func=cmd_family)

    t = subparsers.add_parser("tree", help="family tree of the catalogue and a workspace's artifacts "
                              "(text here, PNG and HTML on disk)")
    t.add_argument("workspace", nargs="?", help=f"folder to scan for artifacts (default: {DEFAULT_WORKSPACE}/)")
    t.add_argument("--out", help=f"folder for {PICTURE_STEM}.png and {PICTURE_STEM}.html "
                   "(default: the workspace, or . when it does not exist)")
    t.add_argument("--no-files", action="store_true", help="print the text tree only")
    t.add_argument("--no-catalogue", action="store_true", help="only the workspace's artifacts")
    t.add_argument("--json", action="store_true", help="nodes and edges as JSON instead of text")
    t.set_defaults(func=cmd_tree)


# ---- herd family -------------------------------------------------------------------------------

def cmd_family(args) -> int:
    cat = load_catalogue()
    if args.name:
        m = cat.find(args.name)
        print(json.dumps(member_json(m), indent=2, ensure_ascii=False) if args.json else member_text(cat, m))
    elif args.json:
        print(json.dumps({"schema": cat.schema_, "source": cat.source,
                          "members": [member_json(m) for m in cat.members]}, indent=2, ensure_ascii=False))
    else:
        print(family_table(cat))
    return 0


def member_json(m: Member) -> dict:
    out = m.model_dump(mode="json")
    out["headline"] = m.headline.model_dump(mode="json") if m.headline else None
    if m.recipe:
        out["recipe"].update(path=str(m.recipe.path()), exists=m.recipe.path().is_file(), state=m.recipe_state())
    profiles = ("tiny", "small", "gpu", "full") if "small" in m.profiles() else ("tiny", "gpu", "full")
    out["derive"] = {p: m.derive_command(p) for p in profiles} if m.recipe else None
    return out


def _built_on(cat: Catalogue, m: Member) -> str:
    if not m.llama_based:
        return f"not Llama: {m.base}"
    return " / ".join(cat.by_id[p].name for p in m.parents) or "-"


def family_table(cat: Catalogue) -> str:
    """One row per member: sizes, purpose, recipe and the published headline number."""
    cols = [("member", 22), ("built on", 26), ("sizes", 16), ("purpose", 36), ("herd recipe", 28)]
    rows = []
    for m in cat.members:
        recipe = f"{m.recipe.file} ({m.recipe_state()})" if m.recipe else "parent"
        h = m.headline
        head = f"{h.benchmark} {h.metric}: {h.value_text()} [{h.release}, {h.cite}]" if h else "-"
        rows.append([m.name, _built_on(cat, m), ", ".join(m.sizes), m.purpose, recipe, head])
    width = shutil.get_terminal_size((200, 24)).columns
    used = sum(w + 2 for _, w in cols)
    last = max(30, width - used)

    def line(cells: list[str]) -> str:
        out = [_fit(c, w).ljust(w) for c, (_, w) in zip(cells[:-1], cols, strict=True)]
        return "  ".join(out + [_fit(cells[-1], last)]).rstrip()

    text = [line([c for c, _ in cols] + ["published headline"]), line(["-" * w for _, w in cols] + ["-" * last])]
    text += [line(r) for r in rows]
    text += ["", f"Published numbers and facts from {cat.source} (section cited per number). "
             f"Recipes in {recipes_root()}; 'planned' = not written yet.",
             "`herd family NAME` shows one member in full, with the command that re-derives it."]
    return "\n".join(text)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def member_text(cat: Catalogue, m: Member) -> str:
    """Everything the catalogue knows about one member, each fact with its dossier section."""
    c = m.cites

    def cite(key: str) -> str:
        return f"  ({c[key]})" if key in c else ""

    def field(name: str, value: str) -> list[str]:
        wrapped = textwrap.wrap(value, 96) or [""]
        return [f"{name + ':':<14}{wrapped[0]}"] + [" " * 14 + w for w in wrapped[1:]]

    out = [f"{m.name}  ({m.org}{', ' + m.released if m.released else ''})  dossier {m.section}", ""]
    built = m.base if m.llama_based else f"{m.base}  [NOT Llama]"
    parents = ", ".join(cat.by_id[p].name for p in m.parents)
    out += field("built on", built + (f"  (parent: {parents})" if parents else ""))
    out += field("sizes", ", ".join(m.sizes) + (f"; {m.sizes_note}" if m.sizes_note else "") + cite("sizes"))
    out += field("purpose", m.purpose)
    out += field("data", m.data + cite("data"))
    out += field("method", "; ".join(m.methods) + cite("method"))
    if m.stages:
        out += field("herd stages", " → ".join(m.stages))
    if m.hyperparameters:
        out += field("hyper-params", m.hyperparameters + cite("method"))
    if m.template:
        out += field("template", f"{m.template.name}: {m.template.note}" + cite("template"))
    out += field("evaluation", m.evaluation + cite("evaluation"))
    out.append("published:" if m.scores else "published:    none in the dossier")
    for s in m.scores:
        note = f"; {s.note}" if s.note else ""
        out.append(f"  {s.release:<28} {s.benchmark} {s.metric}: {s.value_text()}  "
                   f"[{s.cite}, {s.tag}, {s.source}{note}]")
    lic = m.license
    lic_text = (f"model: {lic.model or 'not stated in the dossier'}; data: {lic.data or 'not stated in the dossier'}"
                + (f"  ({lic.cite})" if lic.cite else "") + (f"; {lic.note}" if lic.note else ""))
    out += field("license", lic_text)
    out.append("sources:" if m.sources else "sources:      none in the dossier")
    for s in m.sources:
        extra = " ".join(x for x in (s.url, f"@{s.commit[:12]}" if s.commit else None) if x)
        out.append(f"  {s.key:<4} {s.title}" + (f"  {extra}" if extra else ""))
    if m.recipe:
        out += field("herd recipe", f"{m.recipe.path()}: {m.recipe_state()}"
                     + (f" ({m.recipe.note})" if m.recipe.note else ""))
        planned = "   # recipe not written yet" if not m.recipe.path().is_file() else ""
        out.append("reproduce:")
        out.append(f"  {m.derive_command('tiny')}{planned or '   # laptop CPU, minutes: the quick demo'}")
        if "small" in m.profiles():
            out.append(f"  {m.derive_command('small')}   # laptop CPU, up to ~2 hours: the run that shows the recipe's gain")
        out.append(f"  {m.derive_command('full')}{planned or f'   # published scale from {m.full_base}, GPUs'}")
    else:
        out += field("herd recipe", "none: a parent, the starting point of derivations")
    if m.note:
        out += [""] + field("note", m.note)
    return "\n".join(out)


# ---- herd tree ---------------------------------------------------------------------------------

def cmd_tree(args) -> int:
    from herd.family.draw import write_html, write_png

    workspace = Path(args.workspace or DEFAULT_WORKSPACE)
    if not workspace.is_dir():
        if args.workspace:
            raise HerdError(f"{workspace}: no such workspace folder")
        print(f"herd: workspace {workspace}/ not found: showing the catalogue only", file=sys.stderr)
    found = scan_workspace(workspace) if workspace.is_dir() else []
    tree = build_tree(load_catalogue(), found, workspace, members=not args.no_catalogue)
    if not tree.nodes:
        raise HerdError(f"{workspace}: no artifacts found (and --no-catalogue leaves nothing to draw)")
    print(json.dumps(tree.to_dict(), indent=2, ensure_ascii=False) if args.json else render_text(tree))
    if not args.no_files:
        out = Path(args.out) if args.out else (workspace if workspace.is_dir() else Path("."))
        out.mkdir(parents=True, exist_ok=True)
        title = f"herd family tree: {workspace}"
        png = write_png(tree, out / f"{PICTURE_STEM}.png", title)
        page = write_html(tree, out / f"{PICTURE_STEM}.html", title)
        if not args.json:
            print(f"\npicture: {png}\npage:    {page}")
    broken = [n for n in tree.nodes.values() if n.status in ("corrupt", "partial")]
    if broken:
        print(f"herd: {len(broken)} corrupt or partial artifact(s), marked in the tree", file=sys.stderr)
    return 0
