"""What the Run and Artifact pages may start: a derive or an export, checked before it is queued.

A derive from the page is checked the way the CLI checks one, with the CLI's own functions: the recipe
is loaded and validated (:func:`herd.core.recipe.load_recipe`) and each data file is read by its format's
reader (:func:`herd.data.load_examples`), so a broken recipe or record gets the same
``file:line: field`` message the command line prints, before anything is queued or loaded. Every path is
confined to the workspace first.
"""

from __future__ import annotations

import re
from pathlib import Path

from herd.core.errors import ConfigError, HerdError
from herd.ui.workspace import Workspace

NAME = re.compile(r"^[A-Za-z0-9._-]{1,80}$")


def _recipe(ws: Workspace, recipe: str) -> str:
    """A named recipe (``alpaca``: herd's ``recipes/alpaca.yaml``) or a recipe file inside the workspace;
    a name never falls through to a file relative to the server's own folder."""
    from herd.core.paths import repo_root

    shipped = repo_root() / "recipes" / f"{recipe}.yaml"
    if NAME.match(recipe) and shipped.is_file():
        return str(shipped)
    if NAME.match(recipe) and not recipe.endswith((".yaml", ".yml")) and not (ws.root / recipe).exists():
        known = sorted(p.stem for p in (repo_root() / "recipes").glob("*.yaml"))
        raise ConfigError(f"unknown recipe '{recipe}'; known: {', '.join(known)} (or a recipe file in the workspace)")
    return str(ws.resolve(recipe))


def _base(ws: Workspace, base: str) -> str:
    from herd.base import named_bases

    return base if base in named_bases() else str(ws.resolve(base))


def validate_derive(ws: Workspace, body: dict) -> tuple[list[str], str, str]:
    """``herd derive`` arguments for the page's form, after the CLI's checks; (argv, label, out folder)."""
    from herd.core.recipe import load_recipe
    from herd.data import load_examples

    recipe_arg = str(body.get("recipe") or "").strip()
    if not recipe_arg:
        raise ConfigError("recipe: choose a recipe (a name such as alpaca, or a recipe file in the workspace)")
    profile = str(body.get("profile") or "tiny").strip()
    base = str(body.get("base") or "").strip()
    data = [str(d).strip() for d in (body.get("data") or []) if str(d).strip()]
    max_steps = body.get("max_steps")
    recipe_spec = _recipe(ws, recipe_arg)
    base_spec = _base(ws, base) if base else None
    data_paths = [ws.resolve(d) for d in data]
    recipe = load_recipe(recipe_spec, profile)  # file:field errors, as `herd derive` prints them
    for p in data_paths:
        if not p.is_file():
            raise ConfigError(f"{p}: a data file must be a file")
        load_examples(p, recipe.data[0].format if recipe.data else "alpaca")  # file:line errors
    if max_steps not in (None, ""):
        if not str(max_steps).isdigit() or int(max_steps) < 1:
            raise ConfigError(f"max_steps: a positive whole number, got {max_steps!r}")
    out_name = str(body.get("out") or "").strip() or \
        f"{recipe.name}-{Path(base_spec or recipe.base).stem}-{profile}"
    out = ws.resolve(out_name, must_exist=False)
    argv = ["derive", recipe_spec, "--profile", profile, "--out", str(out)]
    if base_spec:
        argv += ["--base", base_spec]
    for p in data_paths:
        argv += ["--data", str(p)]
    if max_steps not in (None, ""):
        argv += ["--max-steps", str(int(max_steps))]
    if body.get("resume"):
        argv.append("--resume")
    label = f"{recipe.name} on {base_spec or recipe.base} ({profile})"
    return argv, label, ws.rel(out) if out.exists() else out_name


def export_argv(ws: Workspace, body: dict) -> tuple[list[str], str, str]:
    """``herd export`` arguments for the Artifact page's export buttons; (argv, label, out folder)."""
    from herd.artifacts import locate_artifact

    to = body.get("to")
    if to not in ("gguf", "hf"):
        raise HerdError("to: gguf or hf")
    folder = locate_artifact(ws.resolve(str(body.get("path") or "")))
    ws.resolve(str(folder))
    argv = ["export", str(folder), "--to", to]
    if body.get("dtype"):
        argv += ["--dtype", str(body["dtype"])]
    return argv, f"export {ws.rel(folder)} to {to}", ws.rel(folder)
