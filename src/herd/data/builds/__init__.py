"""Data builds: steps that MAKE a training file before training (Alpaca's Self-Instruct generation).

A recipe's ``builds:`` list names registered builders; each writes one file (format given by the
builder) into the workspace, cached by a hash of its settings, and the file joins the recipe's data.
A builder is ``fn(cfg, out_path, ctx) -> BuildResult``; its settings are a pydantic model validated
when the recipe loads. Builders must be resumable: ``out_path`` may hold a partial earlier run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from herd.core.registry import BUILDS  # noqa: F401  (re-exported: the builds registry)


class BuildConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str
    name: str
    enabled: bool = True


@dataclass
class BuildContext:
    recipe: object
    base_spec: str  # the base of this derivation (a builder may use it, e.g. as a teacher)
    workspace: Path
    progress: bool = True
    # the generation engine (herd.engine.generation.generate_ids), handed down by the pipeline: data may
    # not import the engine, and a local teacher decodes through it when it is given
    generate_ids: Callable | None = None


@dataclass
class BuildResult:
    path: Path
    format: str
    report: dict = field(default_factory=dict)


BuildFn = Callable[[BuildConfig, Path, BuildContext], BuildResult]
def register_build(kind: str, config: type[BuildConfig]):
    """Decorator of a build module: ``kind`` → (its config class, the build function)."""
    return BUILDS.register(kind, lambda fn: (config, fn))
