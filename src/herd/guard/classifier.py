"""``herd.guard.Guard``: classify conversations with a Llama-Guard-style model.

One object serves the CLI (``herd classify``), the eval (``guard``) and the OpenAI-compatible server
(``moderate(texts)`` backs ``/v1/moderations``; its results carry ``flagged``, ``categories`` and
``category_scores`` by category name, the shape ``herd.serve.guard.Verdict`` has). Prompts always use
the ``llama_guard`` template, so a parent scored zero-shot sees exactly the derived model's prompt.

An artifact derived by the llamaguard recipe carries ``guard.json``: its taxonomy, how categories are
scored and the thresholds chosen on the dev split. Without it: Llama Guard v1 and threshold 0.5.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from herd.core.errors import HerdError
from herd.templates.taxonomy import LLAMA_GUARD_V1, Taxonomy, load_taxonomy

GUARD_FILE = "guard.json"
PER_CATEGORY = ("codes", "one_vs_all", "none")


@dataclass
class Classification:
    verdict: str  # "safe" | "unsafe"
    flagged: bool
    p_unsafe: float
    threshold: float
    agent_type: str  # "User" (prompt classification) or "Agent" (response classification)
    categories: dict[str, bool] = field(default_factory=dict)
    category_scores: dict[str, float] = field(default_factory=dict)

    @property
    def violated(self) -> list[str]:
        return [k for k, v in self.categories.items() if v]

    def as_dict(self) -> dict:
        return {**asdict(self), "violated": self.violated}


@dataclass
class GuardSettings:
    """What an artifact's ``guard.json`` records."""

    taxonomy: Taxonomy = LLAMA_GUARD_V1
    per_category: str = "codes"
    threshold: float = 0.5
    category_thresholds: dict[str, float] = field(default_factory=dict)
    chosen_on: str = "default 0.5 (no dev split)"

    def to_json(self) -> dict:
        return {"template": "llama_guard", "taxonomy": self.taxonomy.to_dict(), "per_category": self.per_category,
                "threshold": self.threshold, "category_thresholds": self.category_thresholds,
                "chosen_on": self.chosen_on}

    @classmethod
    def read(cls, folder: str | Path) -> GuardSettings:
        p = Path(folder) / GUARD_FILE
        if not p.is_file():
            return cls()
        d = json.loads(p.read_text())
        return cls(taxonomy=Taxonomy.from_dict(d["taxonomy"], str(p)), per_category=d.get("per_category", "codes"),
                   threshold=float(d.get("threshold", 0.5)), category_thresholds=d.get("category_thresholds", {}),
                   chosen_on=d.get("chosen_on", ""))

    def write(self, folder: str | Path) -> Path:
        from herd.artifacts import atomic_write_text

        p = Path(folder) / GUARD_FILE
        atomic_write_text(p, json.dumps(self.to_json(), indent=2) + "\n")
        return p


def conversation(item) -> list[dict]:
    """A text (prompt classification), a (prompt, response) pair, or alternating user/assistant messages."""
    if isinstance(item, str):
        return [{"role": "user", "content": item}]
    if isinstance(item, tuple) and len(item) == 2:
        return [{"role": "user", "content": item[0]}, {"role": "assistant", "content": item[1]}]
    if isinstance(item, list) and item and all(isinstance(m, dict) for m in item):
        return [{"role": m.get("role"), "content": m.get("content")} for m in item]
    raise HerdError(f"cannot classify {type(item).__name__}: give a string, a (prompt, response) pair or "
                    "a list of {role, content} messages")


def agent_type(conv: list[dict]) -> str:
    return "Agent" if len(conv) % 2 == 0 else "User"


class Guard:
    """A safety classifier over a model; ``Guard(artifact).classify(text)``."""

    def __init__(self, artifact: str | Path | None = None, *, model=None, tokenizer=None, name: str | None = None,
                 settings: GuardSettings | None = None, taxonomy: str | Path | Taxonomy | None = None,
                 threshold: float | None = None, per_category: str | None = None, batch_tokens: int = 8192):
        from herd.templates import get_template

        if per_category is not None and per_category not in PER_CATEGORY:
            raise HerdError(f"per_category must be one of {', '.join(PER_CATEGORY)}, got '{per_category}'")
        new_taxonomy = load_taxonomy(taxonomy) if taxonomy is not None else None  # validated before loading
        if model is None:
            if artifact is None:
                raise HerdError("Guard needs an artifact path (or a model and tokenizer)")
            from herd.artifacts import artifact_path
            from herd.base import load_model, load_tokenizer, resolve_base

            ref = resolve_base(artifact_path(artifact))
            model, tokenizer = load_model(ref), load_tokenizer(ref)
            settings = settings or GuardSettings.read(ref.path)
            name = name or ref.name
        self.model, self.tokenizer = model, tokenizer
        self.name = name or "guard"
        self.settings = settings or GuardSettings()
        if new_taxonomy is not None:  # a different taxonomy at inference (zero-shot adaptation, §6.4)
            self.settings.taxonomy = new_taxonomy
            self.settings.category_thresholds = {}
        if threshold is not None:
            self.settings.threshold = threshold
        if per_category is not None:
            if per_category != self.settings.per_category:  # thresholds were chosen for the other scores
                self.settings.category_thresholds = {}
            self.settings.per_category = per_category
        self.template = get_template("llama_guard")
        self.batch_tokens = batch_tokens

    @property
    def taxonomy(self) -> Taxonomy:
        return self.settings.taxonomy

    def prompt(self, conv: list[dict], names: list[str] | None = None) -> str:
        """The exact text the model reads (categories passed as a template kwarg)."""
        return self.template.prompt(conv, self.tokenizer, categories=self.taxonomy.prompt_categories(names))

    def scores(self, items: list, *, progress: bool = False, desc: str = "classify"
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """P(unsafe) per item, and per-category scores ``[items, categories]`` (None when switched off);
        ``progress`` reports items scored under ``desc`` (off for the server's single requests)."""
        convs = [conversation(x) for x in items]
        names = self.taxonomy.names
        mode = self.settings.per_category
        from herd.guard.scoring import code_scoring, score_prompts  # torch: only when scoring

        codes = code_scoring(self.tokenizer, [c["code"] for c in self.taxonomy.prompt_categories()]) \
            if mode == "codes" else None
        _, p_unsafe, p_codes = score_prompts(self.model, self.tokenizer, [self.prompt(c) for c in convs],
                                             codes=codes, batch_tokens=self.batch_tokens, progress=progress,
                                             desc=desc)
        if mode == "codes":
            return p_unsafe, np.stack(p_codes) if convs else np.zeros((0, len(names)))
        if mode == "one_vs_all":  # the paper's 1-vs-all: a prompt holding only that category
            prompts = [self.prompt(c, [n]) for c in convs for n in names]
            _, p, _ = score_prompts(self.model, self.tokenizer, prompts, batch_tokens=self.batch_tokens,
                                    progress=progress, desc=f"{desc} one-vs-all")
            return p_unsafe, p.reshape(len(convs), len(names))
        return p_unsafe, None

    def classify_many(self, items: list, *, progress: bool = False) -> list[Classification]:
        p_unsafe, per_cat = self.scores(items, progress=progress)
        out = []
        for i, item in enumerate(items):
            flagged = bool(p_unsafe[i] >= self.settings.threshold)
            cats, scores = {}, {}
            if per_cat is not None:
                for k, n in enumerate(self.taxonomy.names):
                    scores[n] = float(per_cat[i, k])
                    # like Llama Guard, categories are listed only under an "unsafe" verdict
                    cats[n] = flagged and bool(per_cat[i, k] >= self.settings.category_thresholds.get(n, 0.5))
            out.append(Classification(verdict="unsafe" if flagged else "safe", flagged=flagged,
                                      p_unsafe=float(p_unsafe[i]), threshold=self.settings.threshold,
                                      agent_type=agent_type(conversation(item)), categories=cats,
                                      category_scores=scores))
        return out

    def classify(self, text: str | list[dict], *, response: str | None = None) -> Classification:
        """Prompt classification of ``text``; with ``response``, classification of that agent reply."""
        return self.classify_many([(text, response) if response is not None else text])[0]

    def moderate(self, texts: list[str]) -> list[Classification]:
        """The server's moderation hook: prompt classification of each text."""
        return self.classify_many(list(texts))
