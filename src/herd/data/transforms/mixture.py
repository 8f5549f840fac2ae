"""GAP-Replay-style pretraining mixtures: documents from several sources at fixed TOKEN shares.

Meditron mixes clinical guidelines, PubMed abstracts, PubMed papers and a 1% "experience replay" of
general text by token share (recipes.md §4.2). :func:`mix_stream` does the same for any set of
document streams, with flat memory: documents are never held, only one token count per document.

How the plan is made (deterministic given ``seed``):

1. A pre-pass tokenizes every source once (``tokenizer(text, add_special_tokens=False)["input_ids"]``)
   and keeps only the per-document token counts (4 bytes a document).
2. Shares are normalised. The total is ``total_tokens`` when given; otherwise the largest total that
   repeats no source: ``min over sources of available_tokens / share`` (the binding source is used
   exactly once, every other source is subsampled).
3. Each source's target is ``share * total``. A source short of its target is repeated (whole passes =
   upsampling, reported as epochs); the remainder (and a source with too many tokens) is a
   deterministic subsample: documents are taken in a seeded random order until the target is met
   (one that would overshoot by more than it fills is passed over), so the realised count lands
   within about one document of the target.
4. The stream interleaves sources by deficit: the next document comes from the source whose emitted
   tokens are furthest behind its target share, so the shares hold along the whole stream, not only
   at its end. Within a source, documents keep their stream order (a stream cannot be shuffled
   without holding it; shuffle packed rows in the trainer if needed).

The stream yields ``(source_name, token_ids)`` per document, EOS *not* appended; pass
``doc_overhead=1`` when the caller appends EOS so that the shares count it.
"""

from __future__ import annotations

import heapq
import math
import random
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from herd.core.errors import ConfigError


class MixtureError(ConfigError, ValueError):
    """A mixture is mis-specified (bad share, empty source, changed stream); names the source."""


@dataclass
class Source:
    """One mixture component. ``docs`` is called once per pass, so it must be re-iterable and stable."""

    name: str
    docs: Callable[[], Iterable[str]]
    share: float


@dataclass
class SourcePlan:
    name: str
    target_share: float
    docs_available: int
    tokens_available: int
    target_tokens: float
    full_passes: int  # whole passes over the source (≥ 2 means upsampled)
    partial_docs: int  # documents taken from the extra, subsampled pass
    docs: int  # documents emitted
    tokens: int  # tokens emitted (including doc_overhead per document)
    realised_share: float = 0.0
    _lengths: array = field(default_factory=lambda: array("I"), repr=False)
    _partial: bytearray = field(default_factory=bytearray, repr=False)  # 1 = taken in the partial pass

    @property
    def epochs(self) -> float:
        """Emitted tokens / available tokens: 1.0 = each document once, 2.5 = upsampled ×2.5."""
        return self.tokens / self.tokens_available if self.tokens_available else 0.0

    def as_dict(self) -> dict:
        return {"name": self.name, "target_share": round(self.target_share, 6),
                "realised_share": round(self.realised_share, 6), "docs_available": self.docs_available,
                "tokens_available": self.tokens_available, "target_tokens": round(self.target_tokens, 1),
                "docs": self.docs, "tokens": self.tokens, "epochs": round(self.epochs, 4),
                "full_passes": self.full_passes, "upsampled": self.epochs > 1.0 + 1e-9,
                "subsampled": self.epochs < 1.0 - 1e-9}


@dataclass
class MixReport:
    """Target vs realised token shares, documents, tokens and epochs per source."""

    sources: list[SourcePlan]
    total_target: float
    total_tokens: int
    total_docs: int
    seed: int
    total_given: bool
    doc_overhead: int
    empty_docs_skipped: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"total_target_tokens": round(self.total_target, 1), "total_tokens": self.total_tokens,
                "total_docs": self.total_docs, "seed": self.seed,
                "total": "given" if self.total_given else "largest total without repeating any source",
                "doc_overhead": self.doc_overhead, "empty_docs_skipped": dict(self.empty_docs_skipped),
                "sources": [s.as_dict() for s in self.sources]}

    def markdown(self) -> str:
        how = "given" if self.total_given else "largest without repeating a source"
        lines = [f"Mixture: {self.total_tokens:,} tokens in {self.total_docs:,} documents "
                 f"(target {self.total_target:,.0f}, {how}; seed {self.seed}).", "",
                 "| source | target share | realised share | docs | tokens | available tokens | epochs |",
                 "|---|---:|---:|---:|---:|---:|---:|"]
        for s in self.sources:
            lines.append(f"| {s.name} | {s.target_share:.2%} | {s.realised_share:.2%} | {s.docs:,} | "
                         f"{s.tokens:,} | {s.tokens_available:,} | {s.epochs:.3f} |")
        return "\n".join(lines) + "\n"


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _check_sources(sources: list[Source]) -> list[tuple[Source, float]]:
    """Normalised shares; a clear error naming the source for a bad one."""
    if not sources:
        raise MixtureError("mixture: no sources given")
    seen: set[str] = set()
    for s in sources:
        if s.name in seen:
            raise MixtureError(f"mixture: source '{s.name}' appears twice")
        seen.add(s.name)
        try:
            share = float(s.share)
        except (TypeError, ValueError):
            raise MixtureError(f"mixture: source '{s.name}' has share {s.share!r}, not a number") from None
        if not math.isfinite(share) or share < 0:
            raise MixtureError(f"mixture: source '{s.name}' has share {s.share!r}; shares must be finite and ≥ 0")
    total = sum(float(s.share) for s in sources)
    if total <= 0:
        names = ", ".join(f"'{s.name}'" for s in sources)
        raise MixtureError(f"mixture: all shares are zero (sources {names}); give at least one a positive share")
    return [(s, float(s.share) / total) for s in sources if float(s.share) > 0]


def _plan_source(src: Source, share: float, lengths: array, target: float, rng: random.Random,
                 overhead: int) -> SourcePlan:
    per_doc = [n + overhead for n in lengths] if overhead else lengths
    avail = sum(per_doc)
    full = int(target // avail)
    rest = target - full * avail
    taken = bytearray(len(lengths))
    order = list(range(len(lengths)))
    rng.shuffle(order)
    cum, k = 0, 0
    for i in order:  # seeded order; a document that would overshoot more than it fills is passed over
        if cum >= rest:
            break
        if abs(cum + per_doc[i] - rest) < abs(cum - rest):
            taken[i] = 1
            cum, k = cum + per_doc[i], k + 1
    return SourcePlan(name=src.name, target_share=share, docs_available=len(lengths), tokens_available=avail,
                      target_tokens=target, full_passes=full, partial_docs=k,
                      docs=full * len(lengths) + k, tokens=full * avail + cum, _lengths=lengths, _partial=taken)


class MixStream:
    """An iterable over ``(source_name, token_ids)`` with its :class:`MixReport` (``.report``).

    Iterating again replays the same sequence (each pass re-reads the sources).
    """

    def __init__(self, sources: list[Source], tokenizer, report: MixReport):
        self._sources = {s.name: s for s in sources}
        self._tokenizer = tokenizer
        self.report = report

    def _source_docs(self, plan: SourcePlan) -> Iterator[list[int]]:
        src = self._sources[plan.name]
        passes = [None] * plan.full_passes + ([plan._partial] if plan.partial_docs else [])
        for mask in passes:
            i = -1
            for i, text in enumerate(src.docs()):
                if i >= len(plan._lengths):
                    break
                if plan._lengths[i] == 0 or (mask is not None and not mask[i]):
                    continue
                ids = _encode(self._tokenizer, text)
                if len(ids) != plan._lengths[i]:
                    raise MixtureError(f"mixture: source '{plan.name}' document {i} changed between passes "
                                       f"({plan._lengths[i]} tokens when counted, {len(ids)} now); "
                                       "docs() must return the same stream every time")
                yield ids
            if i + 1 != len(plan._lengths):
                raise MixtureError(f"mixture: source '{plan.name}' yielded {i + 1} documents, "
                                   f"{len(plan._lengths)} when counted; docs() must be re-iterable and stable")

    def __iter__(self) -> Iterator[tuple[str, list[int]]]:
        overhead = self.report.doc_overhead
        plans = [p for p in self.report.sources if p.docs]
        iters = {p.name: self._source_docs(p) for p in plans}
        # deficit scheduling: pop the source with the smallest emitted/target ratio (ties: source order)
        heap = [(0.0, k, p.name, 0) for k, p in enumerate(plans)]
        heapq.heapify(heap)
        targets = {p.name: float(p.tokens) for p in plans}
        while heap:
            _, k, name, emitted = heapq.heappop(heap)
            ids = next(iters[name], None)
            if ids is None:
                continue
            emitted += len(ids) + overhead
            yield name, ids
            heapq.heappush(heap, (emitted / targets[name], k, name, emitted))


def mix_stream(sources: list[Source], tokenizer, total_tokens: int | None = None, seed: int = 0,
               *, doc_overhead: int = 0) -> MixStream:
    """Plan a token-share mixture and return its deterministic document stream (``.report`` attached).

    ``total_tokens``: size of the mix; None = the largest total that repeats no source. ``doc_overhead``:
    tokens the caller adds per document (1 when it appends EOS), counted in the shares.
    """
    weighted = _check_sources(sources)
    if total_tokens is not None and total_tokens <= 0:
        raise MixtureError(f"mixture: total_tokens must be positive, got {total_tokens}")
    if doc_overhead < 0:
        raise MixtureError(f"mixture: doc_overhead must be ≥ 0, got {doc_overhead}")
    lengths: dict[str, array] = {}
    empty: dict[str, int] = {}
    for src, _ in weighted:
        lens = array("I")
        for text in src.docs():
            if not isinstance(text, str):
                raise MixtureError(f"mixture: source '{src.name}' document {len(lens)} is "
                                   f"{type(text).__name__}, not str")
            lens.append(len(_encode(tokenizer, text)) if text else 0)
        lengths[src.name] = lens
        empty[src.name] = sum(1 for n in lens if n == 0)
        if not any(lens):
            raise MixtureError(f"mixture: source '{src.name}' has share {src.share} but no tokens "
                               f"({len(lens)} documents, all empty)")
    # empty documents are never emitted: keep them out of the counts
    avail = {name: sum(n + doc_overhead for n in lens if n) for name, lens in lengths.items()}
    total = float(total_tokens) if total_tokens is not None else min(avail[s.name] / w for s, w in weighted)
    plans = []
    for j, (src, w) in enumerate(weighted):
        lens = lengths[src.name]
        nonempty = array("I", (n for n in lens if n))
        plan = _plan_source(src, w, nonempty, w * total, random.Random(f"{seed}:{j}:{src.name}"), doc_overhead)
        if len(nonempty) != len(lens):  # map the plan back onto the full stream (empty docs skipped)
            full_mask, it = bytearray(len(lens)), iter(plan._partial)
            for i, n in enumerate(lens):
                if n:
                    full_mask[i] = next(it)
            plan._partial = full_mask
        plan._lengths = lens
        plans.append(plan)
    realised = sum(p.tokens for p in plans)
    for p in plans:
        p.realised_share = p.tokens / realised if realised else 0.0
    report = MixReport(sources=plans, total_target=total, total_tokens=realised,
                       total_docs=sum(p.docs for p in plans), seed=seed, total_given=total_tokens is not None,
                       doc_overhead=doc_overhead, empty_docs_skipped={k: v for k, v in empty.items() if v})
    return MixStream([s for s, _ in weighted], tokenizer, report)
