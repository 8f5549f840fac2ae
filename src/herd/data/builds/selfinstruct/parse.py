"""Parsing a teacher's continuation into tasks (recipes.md §1.2).

Alpaca: the continuation is prefixed with ``{k}. Instruction:`` (the prompt's last line), split on
``###``; item ``j`` must split on ``{j}. (Instruction|Input|Output):`` into exactly three fields, else it
is malformed; when the teacher stopped at the length limit the last item is dropped as truncated.
Original Self-Instruct: a response cut by the length limit is dropped whole; otherwise it is split on
``\\n<number>. `` into bare instructions (whitespace collapsed, ``str.capitalize``-d).

Original Self-Instruct instances (yizhongw/self-instruct ``self_instruct/prepare_for_finetuning.py``,
``parse_input_output`` and ``parse_instances_for_{generation,classification}_task``), reproduced rule
for rule: a generation response is split on ``Example\\s?\\d*\\.?`` (or read as one instance when it only
has an ``Output:``), each piece into input/output on ``Output\\s*\\d*\\s*:``; a classification response is
split on ``Class label:``, each piece's first line being the label (the output) and the rest its input.
When the teacher hit the length limit the last instance is dropped. The filters that the original
applies inside these functions are in ``filters`` (``filter_invalid_instances``, ``filter_duplicate_instances``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple


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


class Instance(NamedTuple):
    """One (instruction, input, output) triple, as the original's tuples (hashable: deduplicated as a set)."""

    instruction: str
    input: str
    output: str


_OUTPUT = re.compile(r"Output\s*\d*\s*:")
_INPUT = re.compile(r"Input\s*\d*\s*:")
_EXAMPLE = re.compile(r"Example\s?\d*\.?")
CLASS_LABEL = "Class label:"


def parse_input_output(text: str) -> tuple[str, str]:
    """``parse_input_output``: input before the first ``Output:``, output up to the next one (or to an
    ``Input:`` that starts another pair); no ``Output:`` means all of it is the output."""
    if _OUTPUT.search(text):
        parts = _OUTPUT.split(text)
        inp, out = parts[0].strip(), parts[1].strip()
    else:
        inp, out = "", text.strip()
    if _INPUT.search(out):  # "to avoid the case multiple input/output pairs are generated"
        out = _INPUT.split(out)[0].strip()
    inp = re.sub(r"^Input\s*\d*\s*:", "", inp).strip()
    return inp, out


def _drop_truncated(instances: list[Instance], finish_reason: str, counts: Counter) -> list[Instance]:
    """"if the generation stops because of length, we remove the last instance"."""
    if finish_reason == "length" and instances:
        counts["truncated"] += 1
        return instances[:-1]
    return instances


def parse_generation_instances(raw: str, instruction: str, finish_reason: str) -> tuple[list[Instance], Counter]:
    """Instances of an input-first response; ``no_instances`` counts a response in neither format."""
    counts: Counter = Counter()
    raw, instruction = raw.strip(), instruction.strip()
    if _EXAMPLE.search(raw):
        texts = [t.strip() for t in _EXAMPLE.split(raw) if t.strip() != ""]
        instances = [Instance(instruction, *(x.strip() for x in parse_input_output(t))) for t in texts]
    elif _OUTPUT.search(raw):  # "we assume only one input/output pair in this case"
        instances = [Instance(instruction, *(x.strip() for x in parse_input_output(raw)))]
    else:
        counts["no_instances"] += 1
        return [], counts
    counts["parsed"] += len(instances)
    return _drop_truncated(instances, finish_reason, counts), counts


def parse_classification_instances(raw: str, instruction: str, finish_reason: str) -> tuple[list[Instance], Counter]:
    """Instances of an output-first response: after each ``Class label:`` the label line, then the input."""
    counts: Counter = Counter()
    if CLASS_LABEL not in raw:
        counts["no_instances"] += 1
        return [], counts
    instances = []
    for text in raw.split(CLASS_LABEL)[1:]:
        fields = text.strip().split("\n", 1)
        label = fields[0].strip()
        inp = fields[1].strip() if len(fields) == 2 else ""
        instances.append(Instance(instruction.strip(), inp, label))
    counts["parsed"] += len(instances)
    return _drop_truncated(instances, finish_reason, counts), counts
