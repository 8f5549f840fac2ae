"""Where herd keeps its cache and finds the shared datasets."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """herd's cache (converted bases, tokenizers). ``HERD_CACHE`` overrides ``~/.cache/herd``."""
    root = Path(os.environ.get("HERD_CACHE") or Path.home() / ".cache" / "herd")
    root.mkdir(parents=True, exist_ok=True)
    return root


def repo_root() -> Path:
    """The checkout this package runs from (src layout: ``<root>/src/herd``)."""
    return Path(__file__).resolve().parents[3]


def shared_data_dir() -> Path:
    """The shared datasets folder: ``HERD_DATA`` or ``<checkout>/../shared/data``."""
    env = os.environ.get("HERD_DATA")
    if env:
        return Path(env)
    for cand in (repo_root().parent / "shared" / "data", Path.cwd().parent / "shared" / "data",
                 Path.cwd() / "shared" / "data"):
        if cand.is_dir():
            return cand
    return repo_root().parent / "shared" / "data"


def resolve_data_path(spec: str, relative_to: Path | None = None) -> Path:
    """``shared:NAME/FILE`` → the shared datasets folder; otherwise a path (relative to ``relative_to``)."""
    if spec.startswith("shared:"):
        return shared_data_dir() / spec[len("shared:"):]
    p = Path(spec).expanduser()
    if not p.is_absolute() and relative_to is not None and not p.exists():
        p = relative_to / p
    return p
