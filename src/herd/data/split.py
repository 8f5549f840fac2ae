"""Deterministic train/eval split: a record's side depends on its content and the seed only, so it
does not move when files are reordered or other records are added."""

from __future__ import annotations

import hashlib

from herd.data.records import Example


def _rank(ex: Example, seed: int) -> str:
    return hashlib.sha256(f"{seed}\x00{ex.key()}".encode()).hexdigest()


def split(examples: list[Example], eval_size: int, seed: int = 42) -> tuple[list[Example], list[Example]]:
    """The ``eval_size`` records of lowest hash rank go to eval; the rest keep their order for train."""
    if eval_size <= 0:
        return list(examples), []
    if eval_size >= len(examples):
        raise ValueError(f"eval_size {eval_size} leaves no training records (have {len(examples)})")
    chosen = set(sorted(range(len(examples)), key=lambda i: _rank(examples[i], seed))[:eval_size])
    train = [ex for i, ex in enumerate(examples) if i not in chosen]
    evals = [ex for i, ex in enumerate(examples) if i in chosen]
    return train, evals


def split_dev(heldout: list[Example], dev_size: int, seed: int = 42) -> tuple[list[Example], list[Example]]:
    """Held-out records → (dev, test): the ``dev_size`` of lowest hash rank are dev, both keep their order.

    The rank is :func:`split`'s, so growing ``eval_size`` with ``dev_size`` set to the old ``eval_size``
    keeps the earlier held-out set as dev and adds test records nobody has looked at."""
    if dev_size > 0 and dev_size >= len(heldout):
        raise ValueError(f"dev_size {dev_size} leaves no test records (have {len(heldout)} held out)")
    test, dev = split(heldout, dev_size, seed)
    return dev, test


def dedupe(examples: list[Example]) -> tuple[list[Example], int]:
    """Drop exact duplicate conversations (keeps the first); returns the kept list and the count dropped."""
    seen, kept = set(), []
    for ex in examples:
        k = ex.key()
        if k not in seen:
            seen.add(k)
            kept.append(ex)
    return kept, len(examples) - len(kept)
