"""Moderation: the interface a safety classifier implements to back ``/v1/moderations``.

A Llama-Guard-style derivative (recipe ``llama_guard``) will implement :class:`Guard`; the server only
needs ``moderate``. With a guard, the server also answers ``/v1/moderations`` and can refuse flagged
chat input (400, code ``content_filter``) and withhold flagged output (``finish_reason`` =
``content_filter``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class Verdict:
    """One text's moderation result, in OpenAI's shape (categories by name)."""

    flagged: bool
    categories: dict[str, bool] = field(default_factory=dict)
    category_scores: dict[str, float] = field(default_factory=dict)


class Guard(Protocol):
    name: str

    def moderate(self, texts: list[str]) -> list[Verdict]:
        """Classify each text; called from a worker thread, may block."""
        ...
