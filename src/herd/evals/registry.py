"""The eval registry: a recipe's ``evals:`` mapping names registered evaluations and their settings.

An eval is a function ``run(ctx, cfg) -> EvalOutput`` that scores the parent and the derived model
with identical inputs (``ctx.model("parent")`` / ``ctx.model("derived")``). Its settings are a
pydantic model, validated when the recipe loads — before any model does.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
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
    eval_name: str = ""  # the eval running now: names its per-model phases
    splits: dict | None = None  # held-out / dev / test sizes and the scored split, when the recipe has a dev split
    _cache: dict = field(default_factory=dict)
    _heldout: dict = field(default_factory=dict)  # heldout_loss results by (role, row_len, items' digest)
    _role: str | None = None
    _role_phase: ExitStack = field(default_factory=ExitStack)

    def model(self, role: str):
        """The parent or derived model (one kept in memory at a time). Asking for the other one starts
        the phase ``<eval> on <role>``, so the phase table splits each eval's time and memory by model."""
        from herd.base import load_model
        from herd.core.phases import record

        if role != self._role:
            self.end_model_phase()
            self._role = role
            self._role_phase.enter_context(record(f"{self.eval_name or 'eval'} on {role}"))
        if role not in self._cache:
            if self._cache:
                from herd.core.phases import release_memory

                self._cache.clear()
                release_memory()  # the other model's weights go before this one's load
            from herd.engine.training import device  # torch: only when an eval runs

            # on the GPU when there is one: generation, scoring and losses all follow the model's device
            self._cache[role] = load_model(self.parent_path if role == "parent" else self.derived_path).to(device())
        return self._cache[role]

    def heldout_loss(self, role: str, items: list, row_len: int, **kw) -> dict:
        """``engine.heldout.heldout_loss`` of the parent or derived model on ``items``, computed once per
        (role, items, row_len): an eval that regroups the held-out records (Dolly's per-category loss)
        reuses the overall eval's per-record losses instead of scoring the same records again."""
        import hashlib

        h = hashlib.blake2b(digest_size=16)
        for x in items:
            h.update(len(x).to_bytes(4, "little"))
            h.update(x.input_ids.tobytes())
            h.update(x.labels.tobytes())
        key = (role, row_len, h.hexdigest())
        if key not in self._heldout:
            from herd.engine.heldout import heldout_loss

            self._heldout[key] = heldout_loss(self.model(role), items, self.tokenizer.pad_token_id,
                                              row_len=row_len, **kw)
        return self._heldout[key]

    def end_model_phase(self) -> None:
        self._role_phase.close()
        self._role = None

    def log(self, text: str) -> None:
        if self.progress:
            print(f"[eval] {text}", flush=True)


EvalFn = Callable[[EvalContext, EvalConfig], EvalOutput]
def register_eval(name: str, config: type[EvalConfig] = EvalConfig):
    """Decorator of an eval module: ``name`` → (its config class, ``fn(ctx, cfg) -> EvalOutput``)."""
    return EVALS.register(name, lambda fn: (config, fn))
