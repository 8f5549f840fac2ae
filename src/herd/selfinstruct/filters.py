"""The heuristic filters both pipelines apply to each parsed instruction (recipes.md §1.2), in order.

Each returns a reason name so rejections can be counted; ``None`` means the instruction passes.
Words are counted by ``str.split``; blacklisted words match case-insensitively on word boundaries.
"""

from __future__ import annotations

import re
import string

REASONS = ("truncated", "malformed", "response_truncated", "too_short", "too_long", "blacklist",
           "write_a_program", "punctuation_start", "non_ascii_start", "empty_output", "similar")


def blacklist_regex(words: tuple[str, ...]) -> re.Pattern:
    """One alternation ``\\b(w1|w2|…)\\b``: with backtracking it matches iff some single word does."""
    return re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", flags=re.IGNORECASE)


def filter_reason(instruction: str, blacklist: re.Pattern) -> str | None:
    """Why ``instruction`` is rejected by the heuristic filters, or None."""
    n = len(instruction.split())
    if n <= 3:
        return "too_short"
    if n > 150:
        return "too_long"
    if blacklist.search(instruction):
        return "blacklist"
    if instruction.startswith("Write a program"):
        return "write_a_program"
    if instruction[0] in string.punctuation:
        return "punctuation_start"
    if not instruction[0].isascii():
        return "non_ascii_start"
    return None
