"""The house's layers (../shared/DESIGN.md "Layers"), held by a test: every import points down.

Imports are read from the source (``ast``), including those inside functions, which hide the graph from
a reader but not from Python. Each module is placed in a layer by ``LAYERS`` (longest prefix wins). An
import that points up a layer, or between two sibling plugins (two stage kinds, two evals), is an error
unless it is listed in ``DEBT``: the arrows the code had when this test was written (issue 16), to be
removed as modules move into their noun folders. The list may only shrink: an entry whose import is gone
fails the test until it is deleted. The graph has no circle, debt included.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
RECIPES = Path(__file__).resolve().parents[1] / "recipes"

# Lowest first; a module's layer is its folder (each folder one noun).
LAYER_ORDER = ["core", "templates", "base", "data", "engine", "stages", "evals", "pipeline", "apps", "top"]
LAYERS: dict[str, str] = {
    "herd.core": "core",
    "herd.templates": "templates",
    "herd.base": "base", "herd.artifacts": "base",
    "herd.data": "data",
    "herd.engine": "engine", "herd.guard": "engine",  # the guard classifier: a runtime piece (serve --guard)
    "herd.stages": "stages",
    "herd.evals": "evals",
    "herd.plugins": "pipeline", "herd.derive": "pipeline", "herd.scorecard": "pipeline",
    "herd.export": "apps", "herd.serve": "apps", "herd.family": "apps", "herd.ui": "apps",
    "herd.api": "top", "herd.cli": "top", "herd.doctor": "top", "herd.commands": "top",
}
COMMAND_SUFFIX = ".commands"  # every *.commands module is part of the CLI (top)

# Plugins of one kind must not import each other: what they share moves down a layer.
PLUGIN_GROUPS = {
    "stage": ["herd.stages.sft", "herd.stages.pretrain", "herd.stages.reward_model", "herd.stages.dpo",
              "herd.stages.rejection_sampling", "herd.stages.ppo"],
    "eval": ["herd.evals.builtin", "herd.evals.reward_win_rate", "herd.evals.chat", "herd.evals.code",
             "herd.evals.medical", "herd.evals.apibench", "herd.evals.guard"],
    "reader": ["herd.data.readers.alpaca", "herd.data.readers.dolly", "herd.data.readers.openai_messages", "herd.data.readers.preference_sft",
               "herd.data.readers.sharegpt", "herd.data.readers.apibench", "herd.data.readers.moderation",
               "herd.data.readers.pubmedqa"],
}
# A registry never imports its plugins (they register themselves; the plugin list imports them).
REGISTRIES = {"herd.evals.registry": "eval", "herd.stages": "stage", "herd.data.records": "reader"}
# Sibling imports that are intended (say why).
SIBLINGS_ALLOWED: set[tuple[str, str]] = set()

# Arrows that point up (or across plugins) today. Remove an entry by moving code, never by adding one.
DEBT: set[tuple[str, str]] = set()  # issue 16 emptied it; keep it so


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in SRC.rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The herd modules ``name`` imports anywhere in its source (function bodies included)."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from herd.data import alpaca` imports the submodule; `from herd.data import load_examples`
            # imports the package (whatever its __init__ pulls in)
            subs = [f"{base}.{a.name}" for a in node.names]
            targets = [t for t in subs if t in known]
            if len(targets) < len(subs):
                targets.append(base)
        else:
            continue
        for t in targets:
            if t in known and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    # The package root is left out both ways: every module imports `herd.__version__` from it, and its
    # lazy __getattr__ (`herd.derive(...)`) is the Python API's facade over herd.api.
    g = {name: imports(name, path, known) - {"herd"} for name, path in mods.items() if name != "herd"}
    return g


def layer(name: str) -> int:
    if name.endswith(COMMAND_SUFFIX):
        return LAYER_ORDER.index("top")
    best = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len, default=None)
    assert best is not None, f"{name}: no layer; add it to LAYERS in tests/test_layers.py"
    return LAYER_ORDER.index(LAYERS[best])


def plugin_group(name: str) -> str | None:
    return next((g for g, members in PLUGIN_GROUPS.items() if name in members), None)


def bad_arrows(g: dict[str, set[str]]) -> set[tuple[str, str]]:
    out = set()
    for a, deps in g.items():
        for b in deps:
            if layer(b) > layer(a):
                out.add((a, b))
            elif plugin_group(a) and plugin_group(a) == plugin_group(b) and (a, b) not in SIBLINGS_ALLOWED:
                out.add((a, b))
            elif a in REGISTRIES and plugin_group(b) == REGISTRIES[a]:
                out.add((a, b))
    return out


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(g):
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(g.get(nxt, ())))))
                elif nxt in on:
                    low[v] = min(low[v], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_every_module_has_a_layer():
    for name in modules():
        if name != "herd":  # the package root: see graph()
            layer(name)


def test_no_import_points_up_or_across_plugins_beyond_the_listed_debt():
    new = sorted(bad_arrows(graph()) - DEBT)
    assert not new, "imports pointing up the layers (or between sibling plugins):\n" + "\n".join(
        f"  {a} -> {b}  ({LAYER_ORDER[layer(a)]} -> {LAYER_ORDER[layer(b)]})" for a, b in new)


def test_debt_only_shrinks():
    gone = sorted(DEBT - bad_arrows(graph()))
    assert not gone, "these DEBT arrows no longer exist; delete them from tests/test_layers.py:\n" + "\n".join(
        f"  {a} -> {b}" for a, b in gone)


def test_no_import_circle():
    assert cycles(graph()) == []


def test_the_checker_sees_imports_inside_functions_and_circles():
    g = {"herd.base": {"herd.derive"}, "herd.derive": {"herd.base"}}
    assert cycles(g) == [["herd.base", "herd.derive"]]
    assert ("herd.base", "herd.derive") in bad_arrows(g)
    assert "herd.derive" in imports("herd.x", SRC / "herd" / "api.py", {"herd.derive"})
    inner = [m for m in graph()["herd.cli"] if m == "herd.api"]  # cli imports api only inside functions
    assert inner == ["herd.api"]


def test_load_recipe_leaves_torch_unimported():
    code = ("import sys, glob\nfrom herd.core.recipe import load_recipe\n"
            f"for f in sorted(glob.glob({str(RECIPES / '*.yaml')!r})):\n    load_recipe(f)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False", "validating a recipe imported torch"


def upward_count() -> int:
    """How many arrows point up today (printed in the stop notes to follow the reorganisation)."""
    return len(bad_arrows(graph()))


if __name__ == "__main__":
    by = defaultdict(list)
    for a, b in sorted(bad_arrows(graph())):
        by[a].append(b)
    for a, bs in by.items():
        print(a, "->", ", ".join(bs))
    print(upward_count(), "arrows point up or across plugins;", len(cycles(graph())), "circles")
