"""databricks-dolly-15k records: ``{"instruction", "context", "response", "category"}`` (JSON Lines).

The instruction becomes the user turn, a non-empty context its ``input`` key (rendered as Dolly's
``Input:`` block, or Alpaca's ``### Input:``), the response the assistant turn; the category goes to
``meta["category"]``. Text is kept as written (Dolly's trainer does not strip). Also here: the two
Dolly data rules that are not reading, dropping over-length records and stratifying by category.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

from herd.data.conversation import collect, data_error
from herd.data.records import Example, read_json_records, register_reader, require_str
from herd.data.report import DataReport

CATEGORIES = ("brainstorming", "classification", "closed_qa", "creative_writing", "general_qa",
              "information_extraction", "open_qa", "summarization")


def _example(path, rec, index: int, line: int | None) -> Example:
    if not isinstance(rec, dict):
        raise data_error(path, f"expected a record object, got {type(rec).__name__}", reason="invalid record",
                         record=index, line=line)
    if "instruction" not in rec and "messages" in rec:
        raise data_error(path, "missing field", reason="invalid record", record=index, line=line,
                         field="instruction", hint="this looks like OpenAI messages: use format openai_messages")
    kw = {"index": index, "line": line}
    instruction = require_str(path, rec, "instruction", **kw)
    context = require_str(path, rec, "context", allow_empty=True, optional=True, **kw)
    response = require_str(path, rec, "response", **kw)
    category = require_str(path, rec, "category", optional=True, **kw)
    user = {"role": "user", "content": instruction}
    if context.strip():
        user["input"] = context
    meta = {"category": category} if category else {}
    if line is not None:
        meta["line"] = line
    return Example(messages=[user, {"role": "assistant", "content": response}], source=str(path), index=index,
                   meta=meta)


@register_reader("dolly")
def read_dolly(path: str | Path, *, repair: bool = False, report: DataReport | None = None) -> list[Example]:
    """Read and validate Dolly records (``repair``: drop and count invalid records instead of stopping)."""
    report = report if report is not None else DataReport()
    records = read_json_records(path)
    return collect(path, records, lambda rec, index, line: _example(path, rec, index, line), repair=repair,
                   report=report)


def stratified_sample(examples: list[Example], n: int, *, seed: int = 42, key: str = "category") -> list[Example]:
    """``n`` examples spread evenly over ``meta[key]`` (dossier §10.3: 15K -> 1-3K over the 8 categories).

    Each group gets ``n // groups`` (the remainder goes to the largest groups); a group short of its
    share gives its leftover to the others. Deterministic for a seed; returned in input order."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        groups[str(ex.meta.get(key, ""))].append(i)
    rng = random.Random(seed)
    for idx in groups.values():
        rng.shuffle(idx)
    n = min(n, len(examples))
    quota = {g: 0 for g in groups}
    remaining = n
    while remaining:
        open_groups = sorted((g for g in groups if quota[g] < len(groups[g])), key=lambda g: -len(groups[g]))
        share = max(1, remaining // len(open_groups))
        for g in open_groups:
            take = min(share, len(groups[g]) - quota[g], remaining)
            quota[g] += take
            remaining -= take
            if not remaining:
                break
    chosen = sorted(i for g, idx in groups.items() for i in idx[:quota[g]])
    return [examples[i] for i in chosen]
