"""Retrieval over the API documentation: BM25 (rank-bm25's Okapi BM25) and the oracle.

Gorilla's BM25 retriever (gorilla/eval/retrievers) indexes each API entry as ``str(entry)`` (the Python
repr of the JSON object) split on single spaces, splits the query the same way, and returns the top-k
with the library's default parameters (k1 1.5, b 0.75, epsilon 0.25). herd does the same, so the
retrieved documents are the ones Gorilla's BM25 rows were produced with. The oracle returns the
question's reference API entry (the ablation's upper bound).
"""

from __future__ import annotations

import numpy as np


def tokenize(text: str) -> list[str]:
    return text.split(" ")


class BM25Retriever:
    """Top-k API entries for a query, by Okapi BM25 over the whole database."""

    def __init__(self, entries: list[dict]):
        from rank_bm25 import BM25Okapi

        if not entries:
            raise ValueError("BM25 needs at least one API entry")
        self.entries = entries
        self.index = BM25Okapi([tokenize(str(e)) for e in entries])

    def scores(self, query: str) -> np.ndarray:
        return self.index.get_scores(tokenize(query))

    def top_k(self, query: str, k: int = 1) -> list[int]:
        """Indices of the k best entries, best first (ties as rank-bm25's ``get_top_n`` orders them)."""
        return [int(i) for i in np.argsort(self.scores(query))[::-1][:k]]

    def retrieve(self, query: str, k: int = 1) -> list[dict]:
        return [self.entries[i] for i in self.top_k(query, k)]


def oracle(reference: dict) -> list[dict]:
    """The oracle retriever: the question's own reference API entry."""
    return [reference]
