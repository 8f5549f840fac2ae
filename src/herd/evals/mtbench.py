"""MT-bench answer generation (dossier §2.5; FastChat ``llm_judge/gen_model_answer.py``).

Questions come in FastChat's ``question.jsonl`` format: one ``{"question_id", "category", "turns": [str,
...]}`` per line (MT-bench: 2 turns; the Vicuna bench: 1). Each turn is asked in the model's own
template with the previous answers in the history, sampled at the category's temperature (greedy at
0) for at most ``max_new_tokens`` and cut at the template's stops. Answers are written in FastChat's
answer format (``question_id``, ``answer_id``, ``model_id``, ``choices: [{"index": 0, "turns": [...]}]``,
``tstamp``) plus ``category`` and ``question_turns``, so a judge needs no second file.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from herd.core.errors import DataError
from herd.core.progress import Progress
from herd.data.records import read_json_records

# FastChat llm_judge/common.py ``temperature_config`` (dossier §2.5).
TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
               "reasoning": 0.0, "stem": 0.1, "humanities": 0.1}
DEFAULT_TEMPERATURE = 0.7  # gen_model_answer.py: a category outside the table samples at 0.7
MAX_NEW_TOKENS = 1024  # gen_model_answer.py --max-new-token default (dossier §2.5)


@dataclass
class Question:
    question_id: int | str
    category: str
    turns: list[str]


def missing_question_file(spec: str, recipe_dir: Path) -> str | None:
    """Why an eval that reads a question file cannot run here (its ``unavailable``), or None."""
    from herd.core.paths import resolve_data_path

    qpath = resolve_data_path(spec, recipe_dir)
    return None if qpath.is_file() else f"question file {qpath} not found (a FastChat question.jsonl)"


def read_questions(path: str | Path) -> list[Question]:
    """A FastChat question file, validated (file:line errors)."""
    out, seen = [], set()
    for i, (line, rec) in enumerate(read_json_records(path)):
        if not isinstance(rec, dict):
            raise DataError(str(path), "expected a question object", record=i, line=line)
        qid = rec.get("question_id")
        if not isinstance(qid, (int, str)) or isinstance(qid, bool):
            raise DataError(str(path), "missing or invalid (int or string)", record=i, line=line, field="question_id")
        if qid in seen:
            raise DataError(str(path), f"duplicate question_id {qid!r}", record=i, line=line, field="question_id")
        turns = rec.get("turns")
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise DataError(str(path), "expected a non-empty list of non-empty strings", record=i, line=line,
                            field="turns")
        category = rec.get("category", "")
        if not isinstance(category, str):
            raise DataError(str(path), "expected a string", record=i, line=line, field="category")
        seen.add(qid)
        out.append(Question(qid, category, list(turns)))
    return out


def temperature_for(category: str) -> float:
    return TEMPERATURE.get(category, DEFAULT_TEMPERATURE)


def generate_answers(model, tokenizer, template, questions: list[Question], *, model_id: str,
                     max_new_tokens: int = MAX_NEW_TOKENS, max_turns: int | None = None, seed: int = 0,
                     batch_size: int = 32, system: str | None = None, progress: bool = False) -> list[dict]:
    """Answer every turn of every question, turn by turn, batching questions of equal temperature;
    ``progress`` reports answers (question turns) done. ``batch_size`` 32 is the engine's ``EVAL_BATCH`` (not
    imported here: torch loads only when answers are generated)."""
    from herd.engine.generation import generate

    history: dict[int, list[dict]] = {
        k: ([{"role": "system", "content": system}] if system else []) for k in range(len(questions))}
    answers: dict[int, list[str]] = {k: [] for k in range(len(questions))}
    last_prompt: dict[int, str] = {}
    n_turns = max(len(q.turns) for q in questions) if questions else 0
    if max_turns is not None:
        n_turns = min(n_turns, max_turns)
    stop = template.stop_strings(tokenizer)
    bar = Progress(total=sum(min(len(q.turns), n_turns) for q in questions), desc=f"mtbench {model_id}",
                   unit="answer", enabled=progress)
    for j in range(n_turns):
        groups: dict[float, list[int]] = defaultdict(list)
        for k, q in enumerate(questions):
            if j < len(q.turns):
                groups[temperature_for(q.category)].append(k)
        for temp, ks in sorted(groups.items()):
            for k in ks:
                history[k].append({"role": "user", "content": questions[k].turns[j]})
            bar.set_postfix_str(f"turn {j + 1}, {len(ks)} questions at temperature {temp}")
            prompts = [template.prompt(history[k], tokenizer) for k in ks]
            last_prompt.update(zip(ks, prompts))
            replies = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temp,
                               stop=stop, batch_size=batch_size, seed=seed + 1000 * j)
            for k, reply in zip(ks, replies):
                history[k].append({"role": "assistant", "content": reply})
                answers[k].append(reply)
            bar.update(len(ks))
    bar.close()
    out = []
    for k, q in enumerate(questions):
        out.append({"question_id": q.question_id, "answer_id": uuid.uuid4().hex, "model_id": model_id,
                    "choices": [{"index": 0, "turns": answers[k]}], "tstamp": time.time(),
                    "category": q.category, "question_turns": q.turns[:len(answers[k])],
                    "generate_params": {"prompt": last_prompt.get(k), "temperature": temperature_for(q.category),
                                        "max_new_token": max_new_tokens, "template": template.name, "seed": seed}})
    return sorted(out, key=lambda a: (isinstance(a["question_id"], str), a["question_id"]))


def write_answers(path: str | Path, answers: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(a, ensure_ascii=False) + "\n" for a in answers))
    return path


def read_answers(path: str | Path) -> dict:
    """question_id -> answer record (FastChat's format; ``choices[0].turns`` is what is judged)."""
    out = {}
    for i, (line, rec) in enumerate(read_json_records(path)):
        try:
            turns = rec["choices"][0]["turns"]
            qid = rec["question_id"]
        except (KeyError, IndexError, TypeError):
            raise DataError(str(path), "expected a FastChat answer record {question_id, choices: [{turns}]}",
                            record=i, line=line) from None
        if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
            raise DataError(str(path), "expected a list of strings", record=i, line=line, field="choices[0].turns")
        out[qid] = rec
    return out


def answer_questions(artifact: str | Path, questions_path: str | Path, out: str | Path, *,
                     model_id: str | None = None, max_new_tokens: int = MAX_NEW_TOKENS, max_turns: int | None = None,
                     seed: int = 0, batch_size: int = 32, progress: bool = True) -> Path:
    """``herd eval mtbench-answers``: load an artifact (or any base) and write its answer file."""
    from herd.artifacts import artifact_path, artifact_template
    from herd.base import load_model, load_tokenizer, resolve_base

    questions = read_questions(questions_path)  # validated before the model loads
    ref = resolve_base(artifact_path(artifact))
    tok = load_tokenizer(ref)
    template = artifact_template(ref.path, tok)
    model = load_model(ref)
    answers = generate_answers(model, tok, template, questions, model_id=model_id or ref.name,
                               max_new_tokens=max_new_tokens, max_turns=max_turns, seed=seed,
                               batch_size=batch_size, progress=progress)
    return write_answers(out, answers)
