"""The eval registry: a recipe's ``evals:`` mapping names registered evaluations and their settings.

An eval is a function ``run(ctx, cfg) -> EvalOutput`` that scores the parent and the derived model
with identical inputs (``ctx.model("parent")`` / ``ctx.model("derived")``). Its settings are a
pydantic model, validated when the recipe loads — before any model does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from herd.core.registry import EVALS  # noqa: F401  (re-exported: the evals registry)


class EvalConfig(BaseModel):
    """Base of every eval's settings; ``enabled: false`` switches an eval off in a profile."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True

    def unavailable(self, recipe_dir: Path) -> str | None:
        """Why this eval cannot run here (an input file that is missing), or None.

        Checked when the recipe loads, so a run learns before training that an eval will be skipped;
        a skipped eval is listed in the scorecard's deviations instead of failing after training.
        """
        return None


@dataclass
class EvalOutput:
    metrics: list[dict] = field(default_factory=list)  # rows: task, name, dataset, parent, derived, better
    extra: dict = field(default_factory=dict)  # anything else for scorecard.json (samples, curves…)
    markdown: str = ""  # an optional section for scorecard.md
    files: list[str] = field(default_factory=list)  # files written into the artifact (PNG plots…)


@dataclass
class EvalContext:
    recipe: object
    template: object
    tokenizer: object
    eval_examples: list
    parent_path: Path
    derived_path: Path
    out_dir: Path
    progress: bool = True
    stages: list = field(default_factory=list)  # (stage config, artifact folder) of this derivation, in order
    _cache: dict = field(default_factory=dict)

    def model(self, role: str):
        """The parent or derived model (one kept in memory at a time)."""
        from herd.base import load_model

        if role not in self._cache:
            self._cache.clear()
            self._cache[role] = load_model(self.parent_path if role == "parent" else self.derived_path)
        return self._cache[role]

    def log(self, text: str) -> None:
        if self.progress:
            print(f"[eval] {text}", flush=True)


EvalFn = Callable[[EvalContext, EvalConfig], EvalOutput]
def register_eval(name: str, config: type[EvalConfig] = EvalConfig):
    """Decorator of an eval module: ``name`` → (its config class, ``fn(ctx, cfg) -> EvalOutput``)."""
    return EVALS.register(name, lambda fn: (config, fn))
