"""Seed tasks, the two Self-Instruct variants and their request prompts (recipes.md §1.2).

Alpaca's variant (tatsu-lab/stanford_alpaca ``generate_instruction.py``): each request is ``prompt.txt``
plus a newline, then 3 seed tasks sampled ONLY from the 175 human seeds, each rendered as
``###\\n{i}. Instruction: {instruction}\\n{i}. Input:\\n{input or <noinput>}\\n{i}. Output:\\n{output}\\n``,
then ``###\\n4. Instruction:`` for the teacher to continue up to task 20.

The original Self-Instruct (yizhongw/self-instruct ``bootstrap_instructions.py``) asks for bare
instructions: "Come up with a series of tasks:" and 8 numbered instructions (6 seeds + up to 2 machine
instructions, shuffled), then ``9.``. Its later steps prompt with the verbatim few-shot templates of
``original_templates``: ``clf_prompt`` (``self_instruct/identify_clf_or_not.py``) and ``instance_prompt``
(``self_instruct/generate_instances.py``: output-first for classification tasks, input-first otherwise).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from herd.core.errors import DataError
from herd.core.jsonlines import json_lines
from herd.core.paths import shared_data_dir
from herd.data.builds.selfinstruct.original_templates import (
    input_first_template_for_gen,
    output_first_template_for_clf,
    template_1,
)

SEED_DIR = "self_instruct_seed"
SELF_INSTRUCT_HEADER = "Come up with a series of tasks:\n"
SELF_INSTRUCT_CLF_HEADER = ("Come up with a series of classification tasks. Try to specify the possible "
                            "output labels when possible.\n")

BLACKLIST_ALPACA = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
                    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram")
BLACKLIST_SELF_INSTRUCT = BLACKLIST_ALPACA[:13]  # the original stops at "go to"


@dataclass(frozen=True)
class Variant:
    """Everything that differs between the two published pipelines (defaults as published)."""

    name: str
    demos: int                  # in-context tasks per request
    machine_demos: int          # of which sampled from kept machine instructions (original only)
    temperature: float
    top_p: float
    max_tokens: int
    stop: tuple[str, ...]
    presence_penalty: float
    blacklist: tuple[str, ...]
    drop_on_length: str         # "last_item" (Alpaca) or "response" (original)
    request_batch_size: int = 5
    ban_eos: bool = False       # Alpaca: logit_bias {"50256": -100} bans <|endoftext|>


ALPACA = Variant(name="alpaca", demos=3, machine_demos=0, temperature=1.0, top_p=1.0, max_tokens=3072,
                 stop=("\n20", "20.", "20."), presence_penalty=0.0, blacklist=BLACKLIST_ALPACA,
                 drop_on_length="last_item", ban_eos=True)
SELF_INSTRUCT = Variant(name="self-instruct", demos=8, machine_demos=2, temperature=0.7, top_p=0.5,
                        max_tokens=1024, stop=("\n\n", "\n16", "16.", "16 ."), presence_penalty=2.0,
                        blacklist=BLACKLIST_SELF_INSTRUCT, drop_on_length="response")
VARIANTS = {v.name: v for v in (ALPACA, SELF_INSTRUCT)}


@dataclass(frozen=True)
class SeedTask:
    instruction: str
    input: str
    output: str
    is_classification: bool = False


def default_seed_file() -> Path:
    return shared_data_dir() / SEED_DIR / "seed_tasks.jsonl"


def default_prompt_file() -> Path:
    return shared_data_dir() / SEED_DIR / "prompt.txt"


def load_seeds(path: str | Path | None = None) -> list[SeedTask]:
    """Self-Instruct seed tasks (JSON Lines; one instance each is used, as both pipelines do)."""
    path = Path(path) if path else default_seed_file()
    if not path.is_file():
        raise DataError(str(path), "seed file not found (set HERD_DATA to the shared datasets folder, "
                        "or pass --seeds)")
    seeds = []
    for lineno, line in enumerate(json_lines(path.read_text(encoding="utf-8")), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(str(path), f"invalid JSON ({e.msg})", line=lineno) from None
        if not isinstance(rec, dict) or not isinstance(rec.get("instruction"), str):
            raise DataError(str(path), "expected an object with a string 'instruction'", line=lineno,
                            field="instruction")
        inst = (rec.get("instances") or [{}])[0]
        if "instances" in rec and not (isinstance(inst, dict) and isinstance(inst.get("output"), str)):
            raise DataError(str(path), "instances[0] needs string 'input' and 'output'", line=lineno,
                            field="instances")
        seeds.append(SeedTask(rec["instruction"], inst.get("input", "") or "", inst.get("output", ""),
                              bool(rec.get("is_classification", False))))
    if not seeds:
        raise DataError(str(path), "no seed tasks")
    return seeds


def load_prompt_header(path: str | Path | None = None) -> str:
    path = Path(path) if path else default_prompt_file()
    if not path.is_file():
        raise DataError(str(path), "Alpaca prompt file not found (set HERD_DATA to the shared datasets folder)")
    return path.read_text(encoding="utf-8")


def _clean_instruction(text: str) -> str:
    """Both pipelines collapse whitespace and drop a trailing colon before showing an instruction."""
    return re.sub(r"\s+", " ", text).strip().rstrip(":")


def alpaca_prompt(header: str, demos: list[SeedTask]) -> str:
    """One Alpaca request: prompt.txt, newline, numbered seed blocks, then the next task's header."""
    parts = [header, "\n"]
    for i, d in enumerate(demos, 1):
        parts.append(f"###\n{i}. Instruction: {_clean_instruction(d.instruction)}\n"
                     f"{i}. Input:\n{d.input or '<noinput>'}\n"
                     f"{i}. Output:\n{d.output}\n")
    parts.append(f"###\n{len(demos) + 1}. Instruction:")
    return "".join(parts)


def self_instruct_prompt(instructions: list[str], classification: bool = False) -> str:
    """One original Self-Instruct request: header, numbered instructions, then the next number."""
    text = SELF_INSTRUCT_CLF_HEADER if classification else SELF_INSTRUCT_HEADER
    for i, inst in enumerate(instructions, 1):
        text += f"{i}. {_clean_instruction(inst)}\n"
    return text + f"{len(instructions) + 1}."


def request_rng(seed: int, request: int) -> random.Random:
    """Each request samples from its own stream, so a resumed run draws what an unbroken one would."""
    return random.Random(f"herd-self-instruct:{seed}:{request}")


def build_prompt(variant: Variant, rng: random.Random, seeds: list[SeedTask], header: str,
                 machine: list[str]) -> str:
    """The prompt of one request for ``variant``; ``machine`` = instructions kept so far."""
    if variant.name == "alpaca":
        return alpaca_prompt(header, rng.sample(seeds, variant.demos))
    picked = rng.sample(machine, min(variant.machine_demos, len(machine)))
    picked += [s.instruction for s in rng.sample(seeds, variant.demos - len(picked))]
    rng.shuffle(picked)
    return self_instruct_prompt(picked)


def clf_prompt(instruction: str) -> str:
    """``identify_clf_or_not.py``: ``prefix + " " + d["instruction"].strip() + "\\n" + "Is it classification?"``."""
    return template_1 + " " + instruction.strip() + "\n" + "Is it classification?"


def instance_prompt(instruction: str, is_classification: bool) -> str:
    """``generate_instances.py``: the output-first template for classification tasks (class label, then an
    input for it), the input-first one for the others, then ``" " + task["instruction"].strip() + "\\n"``."""
    template = output_first_template_for_clf if is_classification else input_first_template_for_gen
    return template + " " + instruction.strip() + "\n"
