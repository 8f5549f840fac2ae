"""Pictures of the family tree: a PNG and a self-contained HTML page (inline SVG), from matplotlib.

The layout is a plain layered drawing done by hand (no networkx, no graphviz needed): a node's layer
is the length of the longest lineage path above it, and each layer is ordered by the mean position
of its parents, which keeps the branches mostly uncrossed for a family of a dozen members plus a
workspace of runs. Broken artifacts that have no known parent get a row of their own at the bottom.
"""

from __future__ import annotations

import html
import io
import textwrap
from pathlib import Path

from herd.artifacts import atomic_write_text
from herd.family.tree import MARK, Node, Tree, render_text

# fill, border, border style per kind/status
STYLE = {
    "member": ("#dbe9f6", "#3a6ea5", "-"),
    "external": ("#ffffff", "#8a8a8a", "--"),
    "base": ("#e8e8e8", "#6b6b6b", "-"),
    "missing": ("#ffffff", "#c0392b", "--"),
    "ok": ("#dff2df", "#2e7d32", "-"),
    "partial": ("#fff0c2", "#d68910", "--"),
    "corrupt": ("#f8d0d0", "#c0392b", "-"),
}
LEGEND = [("member", "catalogue member (published numbers)"), ("external", "non-Llama base"),
          ("base", "base checkpoint"), ("ok", "artifact"), ("partial", "partial artifact"),
          ("corrupt", "corrupt artifact"), ("missing", "parent artifact not in workspace")]


def _style(n: Node) -> tuple[str, str, str]:
    return STYLE[n.status if n.kind == "artifact" else n.kind]


def layout(tree: Tree) -> dict[str, tuple[float, int]]:
    """``node id → (x, layer)``: longest-path layers, each ordered by its parents' mean x."""
    lineage_parents = {nid: [e.src for e in tree.parents(nid)] for nid in tree.nodes}
    layer: dict[str, int] = {}

    def depth(nid: str, stack: frozenset = frozenset()) -> int:
        if nid not in layer:
            ps = [p for p in lineage_parents[nid] if p not in stack]  # a cycle (bad data) must not hang
            layer[nid] = 1 + max((depth(p, stack | {nid}) for p in ps), default=-1)
        return layer[nid]

    for nid in tree.nodes:
        depth(nid)
    orphans = [n.id for n in tree.nodes.values()
               if n.kind == "artifact" and n.status != "ok" and not lineage_parents[n.id] and not tree.children(n.id)]
    bottom = max((layer[n] for n in tree.nodes if n not in orphans), default=-1) + 1
    for nid in orphans:
        layer[nid] = bottom

    pos: dict[str, tuple[float, int]] = {}
    for d in range(max(layer.values(), default=-1) + 1):
        row = [nid for nid in tree.nodes if layer[nid] == d]  # insertion order: catalogue, then workspace

        def key(nid: str, i: int, d: int = d) -> float:
            xs = [pos[p][0] for p in lineage_parents[nid] if p in pos]
            if xs:
                return sum(xs) / len(xs)
            return i if d == 0 else float("inf")  # roots keep their order; parentless rows go last

        row = [nid for _, nid in sorted(((key(nid, i), i), nid) for i, nid in enumerate(row))]
        for i, nid in enumerate(row):
            pos[nid] = (i - (len(row) - 1) / 2, d)
    return pos


def _box_text(n: Node, width: int = 30) -> str:
    lines = textwrap.wrap(n.label, width) or [n.id]
    if n.status in MARK:
        lines += textwrap.wrap(f"{MARK[n.status]}: {n.detail}", width)[:3]
    elif n.kind == "external":
        lines.append("(not Llama)")
    if n.headline:
        lines += _headline_lines(n.headline, width)
    if n.detail and n.status not in MARK and n.kind not in ("external",):
        lines += textwrap.wrap(n.detail, width)[:2]
    if n.path and n.path != n.label:  # stages of one recipe share a name; the folder tells them apart
        lines += textwrap.wrap(n.path, width)[:2]
    return "\n".join(lines)


def _headline_lines(text: str, width: int, name_lines: int = 2) -> list[str]:
    """A scorecard headline (``name: parent → derived (Δ 95% CI [..]: verdict)``) in a box: a long
    name is shortened, the numbers and the verdict never are (they are what the box is for)."""
    head, arrow, rest = text.partition(" → ")
    name, colon, parent = head.rpartition(": ")
    if not arrow or not colon:
        return textwrap.wrap(text, width)[:3]
    named = textwrap.wrap(name + ":", width)
    if len(named) > name_lines:
        named = named[:name_lines]
        named[-1] = named[-1][: width - 1] + "…"
    return named + textwrap.wrap(f"{parent} → {rest}", width)


def figure(tree: Tree, title: str = "herd family tree"):
    """A matplotlib Figure of the tree (Agg; nothing is shown on screen)."""
    from matplotlib.figure import Figure  # a bare Figure renders without pyplot or a GUI backend
    from matplotlib.patches import Patch

    pos = layout(tree)
    widest = max((sum(1 for p in pos.values() if p[1] == d) for d in {p[1] for p in pos.values()}), default=1)
    layers = max((p[1] for p in pos.values()), default=0) + 1
    fig = Figure(figsize=(max(8.0, 2.45 * widest), max(4.0, 1.9 * layers + 1.2)))
    ax = fig.add_axes((0, 0, 1, 0.94))
    ax.set_axis_off()
    ax.set_xlim(-widest / 2 - 0.1, widest / 2 + 0.1)
    ax.set_ylim(-layers + 0.4, 0.45)
    fig.suptitle(title, fontsize=12)

    texts = {}
    for nid, (x, d) in pos.items():
        n = tree.nodes[nid]
        fill, border, ls = _style(n)
        texts[nid] = ax.text(x, -d, _box_text(n), ha="center", va="center", fontsize=6.5, zorder=3,
                             bbox=dict(boxstyle="round,pad=0.4", fc=fill, ec=border, ls=ls, lw=1.1))
    for e in tree.edges:
        if e.src not in pos or e.dst not in pos:
            continue
        (x0, d0), (x1, d1) = pos[e.src], pos[e.dst]
        dashed = e.kind == "external" or tree.nodes[e.src].kind == "missing" or \
            tree.nodes[e.dst].status in ("partial", "corrupt")
        faint = e.kind == "rederives"  # which paper a run re-derives: a dotted hint, not lineage
        # drawn after the boxes (zorder 4 > 3), so patchA/patchB clip against this render's box positions
        ax.annotate("", xy=(x1, -d1), xytext=(x0, -d0), zorder=4,
                    arrowprops=dict(arrowstyle="-|>", mutation_scale=12, color="#9aaec4" if faint else "#555555",
                                    lw=0.9, ls=":" if faint else "--" if dashed else "-",
                                    patchA=texts[e.src].get_bbox_patch(), patchB=texts[e.dst].get_bbox_patch(),
                                    shrinkA=2, shrinkB=2))
        if e.label:
            t = 0.62  # nearer the child, so labels of a fan of children do not pile up at the parent
            ax.text(x0 + (x1 - x0) * t, -(d0 + (d1 - d0) * t), e.label, fontsize=5.5, ha="center",
                    va="center", color="#333333", zorder=5,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
    present = {(n.status if n.kind == "artifact" else n.kind) for n in tree.nodes.values()}
    handles = [Patch(fc=STYLE[k][0], ec=STYLE[k][1], ls=STYLE[k][2], label=text) for k, text in LEGEND if k in present]
    if handles:
        ax.legend(handles=handles, loc="lower left", fontsize=6.5, frameon=False)
    return fig


def write_png(tree: Tree, path: str | Path, title: str = "herd family tree") -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure(tree, title).savefig(tmp, dpi=110)
    tmp.replace(path)
    return path


def write_html(tree: Tree, path: str | Path, title: str = "herd family tree") -> Path:
    """One file with everything inline (SVG picture, text tree, node table): it can be mailed or archived."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "herd"}):  # the same tree gives the same file (clip-path ids)
        figure(tree, title).savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    rows = "\n".join(
        "<tr class='{cls}'><td>{kind}</td><td>{label}</td><td>{status}</td><td>{head}</td><td>{detail}</td>"
        "<td>{path}</td></tr>".format(
            cls=html.escape(n.status), kind=html.escape(n.kind), label=html.escape(n.label),
            status=html.escape(n.status), head=html.escape(n.headline or ""), detail=html.escape(n.detail or ""),
            path=html.escape(n.path or ""))
        for n in tree.nodes.values())
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
.picture svg {{ max-width: 100%; height: auto; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.5em; vertical-align: top; text-align: left; }}
tr.corrupt td {{ background: #f8d0d0; }} tr.partial td {{ background: #fff0c2; }}
tr.missing td {{ background: #fdeaea; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.8em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Catalogue numbers are the published ones, cited to the recipe dossier (recipes.md section in each
node). Workspace artifacts show their scorecard headline as parent → derived.</p>
<div class="picture">{svg}</div>
<h2>Text form</h2>
<pre>{html.escape(render_text(tree))}</pre>
<h2>Nodes</h2>
<table><tr><th>kind</th><th>name</th><th>status</th><th>headline</th><th>detail</th><th>path</th></tr>
{rows}
</table>
</body></html>
"""
    atomic_write_text(path, page)
    return Path(path)
