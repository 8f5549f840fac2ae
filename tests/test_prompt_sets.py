"""Held-out prompt sets (herd.evals.prompt_sets): FastChat question files and Self-Instruct seed tasks read in
order, the first n prompts kept, bad files named with their line."""

from __future__ import annotations

import json

import pytest

from herd.core.errors import DataError
from herd.core.paths import resolve_data_path
from herd.evals.prompt_sets import missing_prompt_file, read_prompt_set

VICUNA = "shared:vicuna_bench/question.jsonl"
SEEDS = "shared:self_instruct_seed/seed_tasks.jsonl"


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_the_vicuna_questions_then_the_seed_tasks_make_255_single_turn_prompts(tmp_path):
    prompts, source = read_prompt_set([VICUNA, SEEDS], tmp_path, 1000)
    questions = [json.loads(x) for x in resolve_data_path(VICUNA).read_text().splitlines() if x.strip()]
    seeds = [json.loads(x) for x in resolve_data_path(SEEDS).read_text().splitlines() if x.strip()]
    assert len(prompts) == len(questions) + len(seeds) == 255
    assert all(len(p) == 1 and p[0]["role"] == "user" and p[0]["content"].strip() for p in prompts)
    assert [p[0]["content"] for p in prompts[:80]] == [q["turns"][0] for q in questions]  # first turns only
    with_input = next(i for i, s in enumerate(seeds) if s["instances"][0]["input"])
    without = next(i for i, s in enumerate(seeds) if not s["instances"][0]["input"])
    s = seeds[with_input]
    assert prompts[80 + with_input][0]["content"] == s["instruction"] + "\n\n" + s["instances"][0]["input"]
    assert prompts[80 + without][0]["content"] == seeds[without]["instruction"]
    assert not any(s["instances"][0]["output"] in p[0]["content"] for s, p in zip(seeds, prompts[80:])
                   if len(s["instances"][0]["output"]) > 20)  # the reference answer never leaks into the prompt
    assert source == ("80 questions of vicuna_bench/question.jsonl (turn 1) + "
                      "175 seed tasks of self_instruct_seed/seed_tasks.jsonl")


def test_n_counts_across_files_and_a_file_past_n_is_not_read(tmp_path):
    prompts, source = read_prompt_set([VICUNA, SEEDS], tmp_path, 82)
    assert len(prompts) == 82 and source.endswith("+ 2 seed tasks of self_instruct_seed/seed_tasks.jsonl")
    only, source = read_prompt_set([VICUNA, str(tmp_path / "absent.jsonl")], tmp_path, 5)
    assert only == prompts[:5] and source == "5 questions of vicuna_bench/question.jsonl (turn 1)"
    assert read_prompt_set(VICUNA, tmp_path, 5)[0] == only  # one file as a plain string


def test_a_file_of_neither_kind_or_with_a_bad_record_is_named_with_its_line(tmp_path):
    odd = _jsonl(tmp_path / "odd.jsonl", [{"prompt": "hi"}])
    with pytest.raises(DataError, match=r"odd\.jsonl.*FastChat question file"):
        read_prompt_set([odd], tmp_path, 5)
    bad_q = _jsonl(tmp_path / "q.jsonl", [{"question_id": 1, "turns": ["a"]}, {"question_id": 2, "turns": []}])
    with pytest.raises(DataError, match=r"q\.jsonl:2 .*turns"):
        read_prompt_set([bad_q], tmp_path, 5)
    bad_s = _jsonl(tmp_path / "s.jsonl", [{"instruction": "x", "instances": [{"input": ""}]}])
    with pytest.raises(DataError, match=r"s\.jsonl:1 .*instances"):
        read_prompt_set([bad_s], tmp_path, 5)


def test_a_missing_file_anywhere_in_the_set_makes_the_eval_unavailable(tmp_path):
    assert missing_prompt_file([VICUNA, SEEDS], tmp_path) is None
    why = missing_prompt_file([VICUNA, "gone.jsonl"], tmp_path)
    assert why and "gone.jsonl" in why
