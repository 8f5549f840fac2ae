"""Rendering examples to token ids + labels through a template, with an honest drop report."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from herd.data.records import Example
from herd.templates import IGNORE_INDEX, Template, TemplateError


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    source: str
    index: int

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class TokenizeReport:
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    tokens: int = 0
    trained_tokens: int = 0
    examples_dropped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.kept} records kept ({self.tokens} tokens, {self.trained_tokens} trained)"]
        for reason, n in sorted(self.dropped.items()):
            parts.append(f"{n} dropped: {reason}")
        return "; ".join(parts)

    def as_dict(self) -> dict:
        return {"kept": self.kept, "dropped": dict(self.dropped), "tokens": self.tokens,
                "trained_tokens": self.trained_tokens}


def tokenize_examples(examples: list[Example], template: Template, tokenizer, max_len: int
                      ) -> tuple[list[Tokenized], TokenizeReport]:
    """Render every example. Over-length records are dropped (not cut: a cut target teaches the model
    to stop mid-answer) and counted; so are records with nothing to train on."""
    out, rep = [], TokenizeReport()
    for ex in examples:
        try:
            r = template.render(ex.messages, tokenizer)
        except TemplateError as e:
            rep.dropped[f"template refused it ({e})"] += 1
            rep.examples_dropped.append(f"{ex.source} record {ex.index}")
            continue
        if len(r.input_ids) > max_len:
            rep.dropped[f"longer than max_len {max_len} tokens"] += 1
            rep.examples_dropped.append(f"{ex.source} record {ex.index}")
            continue
        n_tr = sum(1 for x in r.labels if x != IGNORE_INDEX)
        if n_tr == 0:
            rep.dropped["no trained tokens"] += 1
            continue
        out.append(Tokenized(r.input_ids, r.labels, ex.source, ex.index))
        rep.kept += 1
        rep.tokens += len(r.input_ids)
        rep.trained_tokens += n_tr
    return out, rep
