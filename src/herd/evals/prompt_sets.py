"""Held-out prompt sets for evals that answer single prompts (the reward-model-judged win rate).

A set is one or more files read in order, each as single-turn user prompts:

- a FastChat ``question.jsonl`` (records with ``question_id`` and ``turns``): the first turn of each;
- Self-Instruct's ``seed_tasks.jsonl`` (records with ``instruction`` and ``instances``): the instruction,
  and the first instance's input after a blank line where it has one (the way Alpaca-style records become
  one user turn in a chat template).

Several files make a set large enough to decide a win rate: at 80 prompts a true win rate of 0.6 clears
0.5 with a 95 % CI about half of the time; 255 prompts (the 80 Vicuna questions and the 175 seed tasks)
give about 90 % power.
"""

from __future__ import annotations

from pathlib import Path

from herd.core.errors import DataError

Prompt = list[dict]


def _files(specs: str | list[str]) -> list[str]:
    return [specs] if isinstance(specs, str) else list(specs)


def prompt_file_kind(path: Path) -> str:
    """``fastchat`` or ``self_instruct``, from the first record's fields (a clear error otherwise)."""
    from herd.data.records import read_json_records

    records = read_json_records(path)
    if not records:
        raise DataError(str(path), "no records")
    line, first = records[0]
    if isinstance(first, dict) and "turns" in first:
        return "fastchat"
    if isinstance(first, dict) and "instruction" in first:
        return "self_instruct"
    raise DataError(str(path), "expected a FastChat question file (question_id, turns) or Self-Instruct seed "
                    "tasks (instruction, instances)", record=0, line=line)


def read_prompt_file(path: Path, kind: str | None = None) -> list[Prompt]:
    """Every prompt of one file, validated by the file's own reader (file:line errors)."""
    if (kind or prompt_file_kind(path)) == "fastchat":
        from herd.evals.mtbench import read_questions

        return [[{"role": "user", "content": q.turns[0]}] for q in read_questions(path)]
    from herd.data.builds.selfinstruct.prompt import load_seeds

    return [[{"role": "user", "content": f"{s.instruction}\n\n{s.input}" if s.input.strip() else s.instruction}]
            for s in load_seeds(path)]


def read_prompt_set(specs: str | list[str], relative_to: Path, n: int) -> tuple[list[Prompt], str]:
    """The first ``n`` prompts of the files in order, and a description of where they came from."""
    from herd.core.paths import resolve_data_path

    prompts: list[Prompt] = []
    parts = []
    for spec in _files(specs):
        if len(prompts) >= n:
            break
        path = resolve_data_path(spec, relative_to)
        kind = prompt_file_kind(path)
        got = read_prompt_file(path, kind)[: n - len(prompts)]
        prompts += got
        parts.append(f"{len(got)} questions of {path.parent.name}/{path.name} (turn 1)" if kind == "fastchat"
                     else f"{len(got)} seed tasks of {path.parent.name}/{path.name}")
    return prompts, " + ".join(parts)


def missing_prompt_file(specs: str | list[str], recipe_dir: Path) -> str | None:
    """Why an eval that reads these files cannot run here, or None."""
    from herd.core.paths import resolve_data_path

    for spec in _files(specs):
        path = resolve_data_path(spec, recipe_dir)
        if not path.is_file():
            return f"prompt file {path} not found (a FastChat question.jsonl or Self-Instruct seed_tasks.jsonl)"
    return None
