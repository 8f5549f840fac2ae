"""Artifacts: what a stage leaves on disk, loadable by plain transformers with herd uninstalled.

An artifact is an HF folder (``config.json``, ``model.safetensors``, tokenizer files whose
``chat_template`` is the artifact's template) plus
- ``lineage.json``: where it came from (schema ``herd.lineage/1``, below);
- ``README.md``: a model card whose YAML header names base_model, datasets, license and model-index;
- optionally ``adapter/`` (the LoRA adapter before merging), ``scorecard.json``/``scorecard.md``,
  ``metrics.jsonl`` and ``loss.png``.

lineage.json fields: ``schema``, ``id`` (sha256 of the rest), ``name``, ``created``, ``herd``
(version, git commit), ``recipe`` (name, file, sha256, profile) or null, ``stage`` (name, kind,
config) or null, ``parent`` (name, kind, source, sha256 of its weights, lineage_id when the parent is
itself an artifact), ``template`` (name, sha256 of its jinja, stop strings), ``data`` (path, sha256,
records, used), ``weights_sha256``, ``metrics``, ``scorecard`` (headline numbers) and ``environment``.
Folders are written under a temporary name and renamed into place, so a kill never leaves half an
artifact under the final name.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

from herd import __version__
from herd.core.errors import HerdError
from herd.core.hashing import sha256_dir, sha256_json

LINEAGE_FILE = "lineage.json"
SCHEMA = "herd.lineage/1"


def git_commit() -> tuple[str | None, bool]:
    """The herd checkout's commit and whether it has uncommitted changes (None outside git)."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, False
    return commit, dirty


def environment() -> dict:
    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "platform": platform.platform()}
    try:
        import peft

        env["peft"] = peft.__version__
    except ImportError:
        pass
    return env


def new_lineage(name: str, *, parent: dict, template: dict | None, recipe: dict | None = None,
                stage: dict | None = None, data: list[dict] | None = None) -> dict:
    commit, dirty = git_commit()
    return {
        "schema": SCHEMA,
        "name": name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "herd": {"version": __version__, "git_commit": commit, "git_dirty": dirty},
        "recipe": recipe,
        "stage": stage,
        "parent": parent,
        "template": template,
        "data": data or [],
        "weights_sha256": None,
        "metrics": {},
        "scorecard": None,
        "environment": environment(),
    }


def write_lineage(folder: str | Path, lineage: dict, *, rehash: bool = True) -> dict:
    """Hash the weights in ``folder`` into the lineage, give it an id, write it atomically.
    ``rehash=False`` keeps the lineage's ``weights_sha256`` (the weights did not change since it was
    written: no second read of them)."""
    folder = Path(folder)
    lineage = dict(lineage)
    if rehash or "weights_sha256" not in lineage:
        lineage["weights_sha256"] = sha256_dir(folder) if list(folder.glob("*.safetensors")) else None
    lineage.pop("id", None)
    lineage["id"] = sha256_json(lineage)
    atomic_write_text(folder / LINEAGE_FILE, json.dumps(lineage, indent=2, default=str) + "\n")
    return lineage


def read_lineage(folder: str | Path) -> dict:
    path = Path(folder) / LINEAGE_FILE
    if not path.is_file():
        raise HerdError(f"{folder}: not a herd artifact (no {LINEAGE_FILE})")
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise HerdError(f"{path}: corrupt lineage file ({e})") from e
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise HerdError(f"{path}: unknown lineage schema {data.get('schema') if isinstance(data, dict) else '?'}")
    return data


def is_artifact(folder: str | Path) -> bool:
    return (Path(folder) / LINEAGE_FILE).is_file()


RUN_LINK = "model"  # a derive run folder's link to its derived model


def locate_artifact(path: str | Path, *, strict: bool = True) -> Path:
    """The artifact behind whatever ``herd derive`` printed or wrote: an artifact or stage folder (it holds
    ``lineage.json``), a run folder (its ``model`` link is followed) or that link itself.

    Every command that takes an artifact goes through here, so they all accept the same things and fail
    with the same message. ``strict=False`` returns other paths unchanged (plain HF folders are bases).
    """
    p = Path(path).expanduser()
    if is_artifact(p):
        return p.resolve() if p.is_symlink() else p
    link = p / RUN_LINK
    if is_artifact(link):
        return link.resolve()
    if not strict:
        return p
    if not p.exists():
        raise HerdError(f"{path}: no such file or folder")
    looked = [f"{p / LINEAGE_FILE} (an artifact or stage folder)",
              f"{link / LINEAGE_FILE} (a run folder's '{RUN_LINK}' link to its derived model)"]
    stages = sorted(q.name for q in p.iterdir() if q.is_dir() and is_artifact(q)) if p.is_dir() else []
    hint = f"; its finished stages: {', '.join(stages)}" if stages else ""
    if (p / ".work").is_dir() or (p.is_dir() and not stages and any(p.glob("*.partial"))):
        hint += "; a derive there has not finished (`herd derive --resume` continues it)"
    raise HerdError(f"{path}: not a herd artifact; looked for {' and '.join(looked)}{hint}")


def artifact_path(path: str | Path) -> Path:
    """An artifact folder, a derive run folder (its ``model`` link), or any other path unchanged
    (a plain HF folder chats in its tokenizer's template)."""
    return locate_artifact(path, strict=False)


def artifact_template(path: Path, tokenizer):
    """The template an artifact was trained with (by name, never guessed); for a plain HF folder, its
    tokenizer's own chat_template."""
    from herd.templates import Template, get_template

    if is_artifact(path):
        tmpl = (read_lineage(path).get("template") or {}).get("name")
        if tmpl:
            return get_template(tmpl)
    if getattr(tokenizer, "chat_template", None):
        return Template(name="tokenizer", jinja=tokenizer.chat_template, description="the tokenizer's own",
                        source=str(path), uses_bos=False)
    raise HerdError(f"{path}: no template recorded and the tokenizer has no chat_template")


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def staging_dir(final: str | Path) -> Path:
    """A fresh temporary sibling of ``final`` to build an artifact in (see :func:`publish`)."""
    final = Path(final)
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: str | Path, final: str | Path) -> Path:
    """Move a finished staging folder into place, replacing any older artifact of that name."""
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    return final


def save_model_folder(model, tokenizer, template, folder: str | Path) -> None:
    """Weights (safetensors) + tokenizer whose chat_template is the artifact's template."""
    folder = Path(folder)
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(folder, safe_serialization=True)
    if template is not None:
        tokenizer.chat_template = template.chat_template(tokenizer)
    tokenizer.save_pretrained(folder)


def template_record(template, tokenizer=None) -> dict:
    return {"name": template.name, "sha256": sha256_json(template.chat_template(tokenizer)),
            "stop": template.stop_strings(tokenizer)}


def model_card(lineage: dict, *, license: str = "other", extra_md: str = "") -> str:
    """README.md with the YAML header the Hub and vLLM read (base_model, datasets, model-index)."""
    import yaml

    parent = lineage.get("parent") or {}
    recipe = lineage.get("recipe") or {}
    header: dict = {
        "base_model": parent.get("name"),
        "library_name": "transformers",
        "license": license,
        "tags": ["herd", "llama"] + ([f"herd-recipe-{recipe['name']}"] if recipe.get("name") else []),
        "datasets": [Path(d["path"]).parent.name or d["path"] for d in lineage.get("data", [])],
    }
    results = []
    for metric in (lineage.get("scorecard") or {}).get("metrics", []):
        results.append({"task": {"type": "text-generation", "name": metric["task"]},
                        "dataset": {"name": metric.get("dataset", "held-out"), "type": metric.get("dataset", "held-out")},
                        "metrics": [{"type": metric["name"], "value": metric["derived"]}]})
    if results:
        header["model-index"] = [{"name": lineage["name"], "results": results}]
    body = [f"# {lineage['name']}", "",
            f"Derived by [herd](https://example.invalid/herd) {lineage['herd']['version']} "
            f"from `{parent.get('name')}` (weights sha256 `{str(parent.get('sha256'))[:16]}…`)"
            + (f" with the `{recipe['name']}` recipe, profile `{recipe.get('profile')}`." if recipe else "."),
            "", f"Template: `{(lineage.get('template') or {}).get('name')}` (also stored as this tokenizer's "
            "chat_template).", "", "Full provenance is in `lineage.json`.", ""]
    if extra_md:
        body += [extra_md, ""]
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n" + "\n".join(body)
