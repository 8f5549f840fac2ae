"""The heuristic filters both pipelines apply to each parsed instruction (recipes.md §1.2), in order.

Each returns a reason name so rejections can be counted; ``None`` means the instruction passes.
Words are counted by ``str.split``; blacklisted words match case-insensitively on word boundaries.

The original Self-Instruct's instance filters (yizhongw/self-instruct ``self_instruct/prepare_for_finetuning.py``:
``filter_invalid_instances``, ``filter_duplicate_instances`` and the "max 5 instances per task" sample)
follow; they count what they drop under ``INSTANCE_REASONS``.
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter

from herd.data.builds.selfinstruct.parse import Instance

REASONS = ("truncated", "malformed", "response_truncated", "too_short", "too_long", "blacklist",
           "write_a_program", "punctuation_start", "non_ascii_start", "empty_output", "similar")
# "no_instances" counts responses; the others count instances
INSTANCE_REASONS = ("no_instances", "truncated", "same_input_output", "empty_output", "colon_end",
                    "conflicting_outputs", "duplicate", "over_limit")
MAX_INSTANCES_PER_TASK = 5  # prepare_for_finetuning.py: "we only allow max 5 instances per task"


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


def filter_invalid_instances(instances: list[Instance], counts: Counter) -> list[Instance]:
    """``filter_invalid_instances``: drop input == output, an empty output, and an input or output ending in
    a colon ("usually incomplete generation"), checked in that order."""
    kept = []
    for inst in instances:
        if inst.input == inst.output:
            counts["same_input_output"] += 1
        elif inst.output == "":
            counts["empty_output"] += 1
        elif inst.input.strip().endswith(":") or inst.output.strip().endswith(":"):
            counts["colon_end"] += 1
        else:
            kept.append(inst)
    return kept


def filter_duplicate_instances(instances: list[Instance], counts: Counter) -> list[Instance]:
    """``filter_duplicate_instances``: if two instances share a non-empty input but differ in output, the
    task keeps none; otherwise exact duplicates go (the original's ``list(set(...))``; here the first
    occurrences, in order, so that runs are reproducible)."""
    for i in range(1, len(instances)):
        if instances[i].input == "":
            continue
        if any(instances[i].input == instances[j].input and instances[i].output != instances[j].output
               for j in range(i)):
            counts["conflicting_outputs"] += len(instances)
            return []
    unique = list(dict.fromkeys(instances))
    counts["duplicate"] += len(instances) - len(unique)
    return unique


def limit_instances(instances: list[Instance], rng: random.Random, counts: Counter,
                    k: int = MAX_INSTANCES_PER_TASK) -> list[Instance]:
    """At most ``k`` instances, a uniform sample as ``random.sample`` draws it, kept in generation order."""
    if len(instances) <= k:
        return instances
    counts["over_limit"] += len(instances) - k
    return [instances[i] for i in sorted(rng.sample(range(len(instances)), k))]
