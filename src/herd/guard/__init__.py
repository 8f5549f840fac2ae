"""Llama-Guard-style safety classification (recipes.md §6): taxonomy, moderation data, scoring,
metrics, and the :class:`Guard` API (``Guard(artifact).classify(text)``, ``.moderate(texts)``).

Names are imported lazily so that ``herd.templates`` can read the taxonomy without loading torch."""

from __future__ import annotations

__all__ = ["Classification", "Guard", "GuardSettings", "LLAMA_GUARD_V1", "Taxonomy", "load_taxonomy"]


def __getattr__(name: str):
    if name in ("Classification", "Guard", "GuardSettings"):
        from herd.guard import classifier

        return getattr(classifier, name)
    if name in ("LLAMA_GUARD_V1", "Taxonomy", "load_taxonomy"):
        from herd.templates import taxonomy

        return getattr(taxonomy, name)
    raise AttributeError(f"module 'herd.guard' has no attribute '{name}'")
