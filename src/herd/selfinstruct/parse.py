"""Parsing a teacher's continuation into tasks (recipes.md §1.2).

Alpaca: the continuation is prefixed with ``{k}. Instruction:`` (the prompt's last line), split on
``###``; item ``j`` must split on ``{j}. (Instruction|Input|Output):`` into exactly three fields, else it
is malformed; when the teacher stopped at the length limit the last item is dropped as truncated.
Original Self-Instruct: a response cut by the length limit is dropped whole; otherwise it is split on
``\\n<number>. `` into bare instructions (whitespace collapsed, ``str.capitalize``-d).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass


@dataclass
class Task:
    instruction: str
    input: str = ""
    output: str = ""

    def record(self) -> dict:
        return {"instruction": self.instruction, "input": self.input, "output": self.output}


def parse_alpaca(text: str, demos: int, finish_reason: str, *, chat: bool = False) -> tuple[list[Task], Counter]:
    """Tasks numbered from ``demos + 1`` and counts of dropped items (``truncated``, ``malformed``).

    ``chat``: a chat model answers instead of continuing, so its reply may restate the first header;
    it is then not prefixed a second time."""
    counts: Counter = Counter()
    head = f"{demos + 1}. Instruction:"
    raw = text.lstrip() if chat and text.lstrip().startswith(head) else head + text
    chunks = raw.split("###")
    tasks = []
    for i, chunk in enumerate(chunks):
        if not chunk.strip():
            continue
        if i == len(chunks) - 1 and finish_reason == "length":
            counts["truncated"] += 1
            continue
        num = i + demos + 1
        parts = re.split(rf"{num}\.\s+(Instruction|Input|Output):", chunk)
        if len(parts) != 7:
            counts["malformed"] += 1
            continue
        inp = parts[4].strip()
        tasks.append(Task(parts[2].strip(), "" if inp.lower() == "<noinput>" else inp, parts[6].strip()))
    return tasks, counts


def parse_self_instruct(text: str, finish_reason: str) -> tuple[list[Task], Counter]:
    """Bare instructions of one original Self-Instruct response (none when it hit the length limit)."""
    counts: Counter = Counter()
    if finish_reason == "length":
        counts["response_truncated"] += 1
        return [], counts
    tasks = []
    for piece in re.split(r"\n\d+\s?\. ", text):
        inst = re.sub(r"\s+", " ", piece).strip().capitalize()
        if inst:
            tasks.append(Task(inst))
    return tasks, counts
