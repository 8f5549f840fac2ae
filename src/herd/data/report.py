"""What a reader or transform changed or dropped, and why: the data report of a build.

Every repair and every drop is counted under ``(action, step, reason)`` with the first few places it
happened (``file record N``), so a recipe's data build can print, and store in lineage, exactly what
the pipeline did to the user's data instead of silently shrinking it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from herd.data.records import Example

CHANGED, DROPPED = "changed", "dropped"


def where(source: str, index: int | None, line: int | None = None) -> str:
    """``file:line record N`` (the DataError convention), for report entries."""
    out = str(source)
    if line is not None:
        out += f":{line}"
    if index is not None:
        out += f" record {index}"
    return out


def where_example(ex: Example) -> str:
    return where(ex.source, ex.index, ex.meta.get("line"))


@dataclass
class DataReport:
    """Counts of changes and drops per (action, step, reason), each with up to ``max_where`` places."""

    counts: Counter = field(default_factory=Counter)
    places: dict[tuple[str, str, str], list[str]] = field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # step -> (records in, records out)
    max_where: int = 5

    def note(self, action: str, step: str, reason: str, place: str) -> None:
        key = (action, step, reason)
        self.counts[key] += 1
        spots = self.places.setdefault(key, [])
        if len(spots) < self.max_where:
            spots.append(place)

    def changed(self, step: str, reason: str, place: str) -> None:
        self.note(CHANGED, step, reason, place)

    def dropped(self, step: str, reason: str, place: str) -> None:
        self.note(DROPPED, step, reason, place)

    def size(self, step: str, n_in: int, n_out: int) -> None:
        self.sizes[step] = (n_in, n_out)

    def count(self, action: str | None = None, step: str | None = None, reason: str | None = None) -> int:
        """How many entries match (``None`` matches anything)."""
        return sum(n for (a, s, r), n in self.counts.items()
                   if (action is None or a == action) and (step is None or s == step)
                   and (reason is None or r == reason))

    def summary(self) -> str:
        """One line, for logs (the lead's TokenizeReport convention)."""
        parts = [f"{s}: {i} in, {o} out" for s, (i, o) in self.sizes.items()]
        parts += [f"{s}: {a} {n} ({r})" for (a, s, r), n in sorted(self.counts.items())]
        return "; ".join(parts) or "no changes"

    def as_dict(self) -> dict:
        """JSON-ready, for lineage and scorecards."""
        return {
            "sizes": {s: {"in": i, "out": o} for s, (i, o) in self.sizes.items()},
            "entries": [{"action": a, "step": s, "reason": r, "count": n, "where": self.places[(a, s, r)]}
                        for (a, s, r), n in sorted(self.counts.items())],
        }

    def __str__(self) -> str:
        lines = [f"{s}: {i} in, {o} out" for s, (i, o) in self.sizes.items()]
        for (a, s, r), n in sorted(self.counts.items()):
            lines.append(f"{s}: {a} {n} ({r}), e.g. {'; '.join(self.places[(a, s, r)][:2])}")
        return "\n".join(lines) or "no changes"
