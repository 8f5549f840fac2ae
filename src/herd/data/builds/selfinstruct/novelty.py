"""ROUGE-L novelty against a growing pool, with the exact decision of the published pipelines.

Alpaca and Self-Instruct reject an instruction when its ROUGE-L F-measure (``rouge_score``, default
tokenizer, no stemming) against ANY seed or kept instruction exceeds 0.7 (recipes.md §1.2, §10.4).
Done naively that is one LCS per pool member per candidate: quadratic over a run. herd keeps the
decision and skips work that cannot change it:

- F = 2·L/(m+n) for token counts m, n and LCS length L, and L ≤ U, the size of the token-multiset
  intersection. A pool member whose bound 2·U/(m+n) is below the threshold cannot reject, so its LCS
  is never computed. Comparing the bound in exact rationals leaves a gap of at least 1/(10·(m+n))
  to 0.7, far above float rounding, so skipping never flips a decision.
- U ≥ t·m/(2−t) and U ≥ t·n/(2−t) are then necessary (t = 0.7: ⌈7m/13⌉). Seen as multisets of
  (token, k-th occurrence) elements in one fixed order (rarest first, by document frequency in the
  pool as it was built), two texts with that much overlap share an element within their first
  m − ⌈7m/13⌉ + 1 and n − ⌈7n/13⌉ + 1 elements (prefix filtering, as in AllPairs/PPJoin). Only those
  prefixes are indexed and probed, so frequent words never pull in half the pool. The first shared
  element under that order sits at positions i, p of the two prefixes, so at most
  1 + min(m−i−1, n−p−1) elements are shared (PPJoin's positional filter): most probes stop there.
- Survivors get an exact bit-parallel LCS; F is then computed with rouge_score's own float formula
  (precision = L/n, recall = L/m, ``scoring.fmeasure``), so scores equal ``rouge_scorer._score_lcs``.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from fractions import Fraction

from rouge_score import rouge_scorer, scoring, tokenizers

THRESHOLD = 0.7
_TOKENIZER = tokenizers.DefaultTokenizer(use_stemmer=False)


def rouge_tokens(text: str) -> list[str]:
    """rouge_score's default tokenization (lowercase, alphanumeric runs), without stemming."""
    return _TOKENIZER.tokenize(text)


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence, bit-parallel over ``a`` (Hyyrö's formulation)."""
    if len(a) < len(b):
        a, b = b, a
    masks: dict[str, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        m = masks.get(tok)
        if m:
            u = v & m
            v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l_f(target: list[str], prediction: list[str]) -> float:
    """ROUGE-L F-measure with the same arithmetic as ``rouge_scorer._score_lcs``."""
    if not target or not prediction:
        return 0.0
    lcs = lcs_length(target, prediction)
    return scoring.fmeasure(lcs / len(prediction), lcs / len(target))


@dataclass
class Verdict:
    novel: bool
    score: float = 0.0      # the ROUGE-L F that decided a rejection (0 when novel: not needed)
    match: int = -1         # pool index of that instruction
    tokens: list[str] | None = None


class NoveltyPool:
    """Seeds plus kept instructions; ``check`` decides, ``add`` grows the pool (the caller adds on keep)."""

    def __init__(self, texts: list[str] = (), threshold: float = THRESHOLD):
        self.threshold = threshold
        self._t = Fraction(str(threshold))
        self.tokens: list[list[str]] = []
        self._counts: list[dict[str, int]] = []
        self._postings: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)  # → (member, position)
        self.lcs_computed = 0  # how many exact LCS computations the filter needed (for the bench)
        toks = [rouge_tokens(t) for t in texts]
        # the element order is fixed for the pool's lifetime (prefix filtering needs one order for all)
        self._df = Counter(tok for ts in toks for tok in set(ts))
        for t, ts in zip(texts, toks):
            self.add(t, ts)

    def __len__(self) -> int:
        return len(self.tokens)

    def _min_overlap(self, size: int) -> int:
        """Least token overlap with which a text of ``size`` tokens can exceed the threshold."""
        return max(1, math.ceil(self._t * size / (2 - self._t)))

    def _prefix(self, counts: Counter, size: int) -> list[tuple[str, int]]:
        elements = [(tok, k) for tok, c in counts.items() for k in range(1, c + 1)]
        elements.sort(key=lambda e: (self._df.get(e[0], 0), e))
        return elements[: size - self._min_overlap(size) + 1]

    def add(self, text: str, tokens: list[str] | None = None) -> None:
        tokens = rouge_tokens(text) if tokens is None else tokens
        j = len(self.tokens)
        counts = Counter(tokens)
        self.tokens.append(tokens)
        self._counts.append(dict(counts))
        for pos, e in enumerate(self._prefix(counts, len(tokens)) if tokens else ()):
            self._postings[e].append((j, pos))

    def _may_exceed(self, overlap: int, m: int, n: int) -> bool:
        """Exact rational test: can 2·L/(m+n) reach the threshold when L ≤ overlap?"""
        return 2 * overlap * self._t.denominator >= self._t.numerator * (m + n)

    def check(self, text: str) -> Verdict:
        """Reject iff max ROUGE-L F against the pool > threshold (same decision as brute force)."""
        q = rouge_tokens(text)
        m = len(q)
        if m == 0 or not self.tokens:
            return Verdict(True, tokens=q)
        qc = Counter(q)
        seen: set[int] = set()
        scored = []
        for i, e in enumerate(self._prefix(qc, m)):
            for j, p in self._postings.get(e, ()):
                if j in seen:
                    continue
                seen.add(j)  # first shared element: positions i and p bound what can follow
                n = len(self.tokens[j])
                if not self._may_exceed(1 + min(m - i - 1, n - p - 1), m, n):
                    continue
                cj = self._counts[j]
                overlap = sum(min(c, cj.get(tok, 0)) for tok, c in qc.items())
                if self._may_exceed(overlap, m, n):
                    scored.append((overlap / (m + n), j))
        scored.sort(reverse=True)
        for _, j in scored:
            self.lcs_computed += 1
            f = rouge_l_f(q, self.tokens[j])
            if f > self.threshold:
                return Verdict(False, f, j, q)
        return Verdict(True, tokens=q)


class BruteForcePool:
    """The published computation: ``rouge_scorer._score_lcs`` against every pool member."""

    def __init__(self, texts: list[str] = (), threshold: float = THRESHOLD):
        self.threshold = threshold
        self.tokens = [rouge_tokens(t) for t in texts]

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, text: str, tokens: list[str] | None = None) -> None:
        self.tokens.append(rouge_tokens(text) if tokens is None else tokens)

    def check(self, text: str) -> Verdict:
        q = rouge_tokens(text)
        if not self.tokens:
            return Verdict(True, tokens=q)
        scores = [rouge_scorer._score_lcs(q, p).fmeasure for p in self.tokens]
        j = max(range(len(scores)), key=scores.__getitem__)
        return Verdict(scores[j] <= self.threshold, scores[j], j, q)
