"""Ghost Attention as a data transform (dossier §5.2.6, §10.4): the instruction rides on every user turn
while sampling, stays only at the start of the training record, and the loss is zero on earlier turns."""

from __future__ import annotations

import random
import re

import pytest

from herd.core.errors import HerdError
from herd.data import load_examples
from herd.data.records import Example
from herd.data.report import DataReport
from herd.data.transforms.ghost_attention import (
    CONSTRAINTS,
    gatt_example,
    gatt_transform,
    honours_train_flag,
    sample_instruction,
    sampling_messages,
)
from herd.templates import IGNORE_INDEX, get_template
from tests.conftest import SHARED

DPO = SHARED / "llamafactory_preference_demo" / "dpo_en_demo.json"
INST = "Speak in French."


def dialogue(n: int = 3, system: str | None = None) -> Example:
    msgs = [{"role": "system", "content": system}] if system else []
    for k in range(1, n + 1):
        msgs += [{"role": "user", "content": f"question {k}"}, {"role": "assistant", "content": f"answer {k}"}]
    return Example(messages=msgs, source="dialogues.json", index=7)


def _trained_text(t, msgs, tok) -> str:
    r = t.render(msgs, tok)
    return tok.decode([x for x in r.labels if x != IGNORE_INDEX])


def test_sampled_instructions_combine_the_paper_constraint_families():
    insts = [sample_instruction(random.Random(0)) for _ in range(3)]
    assert len(set(insts)) == 1  # deterministic for a seed
    rng = random.Random(0)
    insts = [sample_instruction(rng) for _ in range(50)]
    one = r"(You enjoy|Speak in|Act as) [^.]+\."
    assert all(re.fullmatch(f"{one}( {one})?", i) for i in insts)
    assert any(i.count(".") == 2 for i in insts) and len(set(insts)) > 10
    assert set(CONSTRAINTS) == {"hobby", "language", "figure"}


def test_the_sampler_sees_the_instruction_in_every_user_turn():
    assert [m["content"] for m in sampling_messages(dialogue(), INST) if m["role"] == "user"] == [
        f"{INST}\n\nquestion {k}" for k in (1, 2, 3)]
    seen = []

    def respond(msgs):
        seen.append(msgs)
        return f"réponse {len(seen)}"

    rec = gatt_example(dialogue(), INST, respond)
    assert len(seen) == 3 and [len(s) for s in seen] == [1, 3, 5]
    assert all(m["content"].startswith(INST) for s in seen for m in s if m["role"] == "user")
    assert seen[2][1]["content"] == "réponse 1" and seen[2][3]["content"] == "réponse 2"  # its own earlier replies
    assert [m["content"] for m in rec.messages if m["role"] == "assistant"] == ["réponse 1", "réponse 2",
                                                                               "réponse 3"]
    assert rec.meta["gatt_resampled"] is True and rec.meta["gatt_instruction"] == INST


def test_training_record_keeps_the_instruction_once_and_trains_only_the_last_turn(tokenizer):
    rec = gatt_example(dialogue(), INST)
    assert rec.messages[0] == {"role": "system", "content": INST}
    assert [m["content"] for m in rec.messages if m["role"] == "user"] == ["question 1", "question 2", "question 3"]
    assert [m.get("train", True) for m in rec.messages if m["role"] == "assistant"] == [False, False, True]
    t = get_template("llama2_chat")
    text = t.render_text(rec.messages, tokenizer)[0]
    assert text.count(INST) == 1 and text.startswith(f"{tokenizer.bos_token}[INST] <<SYS>>\n{INST}\n<</SYS>>\n\n")
    assert _trained_text(t, rec.messages, tokenizer) == f" answer 3 {tokenizer.eos_token}"
    # the same record through the exported jinja: identical mask
    hf = tokenizer.apply_chat_template(rec.messages, chat_template=t.chat_template(tokenizer), tokenize=True,
                                       return_dict=True, return_assistant_tokens_mask=True)
    assert hf["assistant_masks"] == [int(x != IGNORE_INDEX) for x in t.render(rec.messages, tokenizer).labels]


def test_keep_prefix_and_an_existing_system_prompt():
    rec = gatt_example(dialogue(2), INST, keep="prefix")
    assert rec.messages[0] == {"role": "user", "content": f"{INST}\n\nquestion 1"}
    assert rec.messages[2]["content"] == "question 2"
    rec = gatt_example(dialogue(2, system="You are helpful."), INST)
    assert rec.messages[0] == {"role": "system", "content": f"You are helpful.\n\n{INST}"}
    with pytest.raises(HerdError, match="keep must be"):
        gatt_example(dialogue(2), INST, keep="everywhere")
    with pytest.raises(HerdError, match="empty reply"):
        gatt_example(dialogue(2), INST, lambda msgs: " ")


@pytest.mark.parametrize("name", ["llama2_chat", "vicuna_v1.1", "dolly"])
def test_templates_used_with_gatt_honour_the_train_flag(name):
    assert honours_train_flag(get_template(name))


def test_gatt_transform_on_real_multi_turn_dialogues(tokenizer):
    exs = load_examples(DPO, "preference_sft")  # prompt + chosen reply: real multi-turn conversations
    report = DataReport()
    out = gatt_transform(exs, seed=1, report=report)
    multi = [e for e in exs if sum(m["role"] == "user" for m in e.messages) >= 2]
    assert len(out) == len(multi) > 50
    assert report.count("dropped", "gatt", "fewer than 2 exchanges") == len(exs) - len(multi)
    t = get_template("llama2_chat")
    for rec in out[:25]:
        last = rec.messages[-1]["content"].strip()
        assert _trained_text(t, rec.messages, tokenizer) == f" {last} {tokenizer.eos_token}"
        assert t.render_text(rec.messages)[0].count(rec.meta["gatt_instruction"]) == 1
    again = gatt_transform(exs, seed=1)
    assert [r.meta["gatt_instruction"] for r in again] == [r.meta["gatt_instruction"] for r in out]


def test_gatt_transform_drops_dialogues_with_tool_turns():
    tool = Example(messages=[{"role": "user", "content": "q"},
                             {"role": "assistant", "content": "{}", "tool_calls": [{"function": {"name": "f"}}]},
                             {"role": "tool", "content": "r"}, {"role": "assistant", "content": "a"}],
                   source="t.json", index=0)
    report = DataReport()
    assert gatt_transform([tool, dialogue(2)], report=report)[0].index == 7
    assert report.count("dropped", "gatt", "not a user/assistant dialogue") == 1
