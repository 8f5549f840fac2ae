"""One template, everywhere: byte-exact strings, masks that unmask exactly the target, and parity
with ``tokenizer.apply_chat_template`` over the exported jinja."""

from __future__ import annotations

import json

import pytest

from herd.templates import IGNORE_INDEX, TemplateError, get_template
from tests.conftest import ALPACA_DEMO, ALPACA_TINY

# The two PROMPT_DICT strings of stanford_alpaca train.py, as given in recipes.md §1.3.
DOSSIER_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                 "context. Write a response that appropriately completes the request.\n\n"
                 "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
DOSSIER_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
                    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:")


def _alpaca_messages(rec):
    user = {"role": "user", "content": rec["instruction"]}
    if rec.get("input"):
        user["input"] = rec["input"]
    return [user, {"role": "assistant", "content": rec["output"]}]


def _records(n=40):
    recs = json.loads(ALPACA_TINY.read_text())[:n] + json.loads(ALPACA_DEMO.read_text())[:n]
    assert any(r["input"] for r in recs) and any(not r["input"] for r in recs)
    return recs


def test_alpaca_strings_are_byte_exact(tokenizer):
    t = get_template("alpaca")
    for rec in _records():
        expected_prompt = (DOSSIER_INPUT if rec["input"] else DOSSIER_NO_INPUT).format(**rec)
        assert t.prompt(_alpaca_messages(rec)[:1], tokenizer) == expected_prompt
        text = t.render_text(_alpaca_messages(rec), tokenizer)[0]
        assert text == expected_prompt + rec["output"] + tokenizer.eos_token  # no newline after Response:


def test_alpaca_matches_stanford_pre_rendered_text(tokenizer):
    """stanford_alpaca_tiny ships each record's rendered 'text' (prompt + output): ours is identical."""
    t = get_template("alpaca")
    for rec in json.loads(ALPACA_TINY.read_text()):
        ours = t.render_text(_alpaca_messages(rec), tokenizer)[0]
        assert ours == rec["text"].replace("### Response:\n", "### Response:") + tokenizer.eos_token or \
            ours == rec["text"] + tokenizer.eos_token


@pytest.mark.parametrize("name", ["alpaca", "chatml"])
def test_unmasked_tokens_decode_to_target(name, tokenizer):
    t = get_template(name)
    for rec in _records(20):
        msgs = _alpaca_messages(rec)
        r = t.render(msgs, tokenizer)
        trained = tokenizer.decode([x for x in r.labels if x != IGNORE_INDEX])
        end = tokenizer.eos_token if name == "alpaca" else "<|im_end|>"
        assert trained == rec["output"] + end
        if name == "alpaca":  # the target is the tail of the sequence
            assert r.input_ids[len(r.input_ids) - r.n_trained:] == [x for x in r.labels if x != IGNORE_INDEX]


@pytest.mark.parametrize("name", ["alpaca", "chatml"])
def test_render_equals_apply_chat_template(name, tokenizer):
    """The exported jinja, run by transformers, renders our text; its generation prompt is a token prefix
    of our training ids; and where no token straddles a prompt/target boundary the ids and the mask are
    identical to ``apply_chat_template(..., return_assistant_tokens_mask=True)``."""
    t = get_template(name)
    jinja = t.chat_template(tokenizer)
    identical = 0
    recs = _records(40)
    for rec in recs:
        msgs = _alpaca_messages(rec)
        if name == "chatml":
            msgs = [{"role": "system", "content": "You are terse."}] + [{"role": m["role"], "content": m["content"]}
                                                                         for m in msgs]
        ours = t.render(msgs, tokenizer)
        assert tokenizer.apply_chat_template(msgs, chat_template=jinja, tokenize=False) == ours.text
        prompt_ids = tokenizer.apply_chat_template(msgs[:-1], chat_template=jinja, tokenize=True,
                                                   add_generation_prompt=True, return_dict=True)["input_ids"]
        assert ours.input_ids[:len(prompt_ids)] == prompt_ids  # serving prompt == training prefix
        assert all(x == IGNORE_INDEX for x in ours.labels[:len(prompt_ids)])
        hf = tokenizer.apply_chat_template(msgs, chat_template=jinja, tokenize=True, return_dict=True,
                                           return_assistant_tokens_mask=True)
        if hf["input_ids"] == ours.input_ids:
            identical += 1
            assert [i for i, m in zip(hf["input_ids"], hf["assistant_masks"]) if m] == \
                [x for x in ours.labels if x != IGNORE_INDEX]
        else:  # only a boundary merge may differ, and then the text is still the same
            assert tokenizer.decode(hf["input_ids"]) == tokenizer.decode(ours.input_ids)
    assert identical >= len(recs) - 3


def test_boundary_merge_keeps_target_whole(tokenizer):
    """An output starting with punctuation would merge with ``Response:``; its first char stays trained."""
    msgs = [{"role": "user", "content": "Invent a word."}, {"role": "assistant", "content": '"Chillax" - relax.'}]
    r = get_template("alpaca").render(msgs, tokenizer)
    assert tokenizer.decode([x for x in r.labels if x != IGNORE_INDEX]) == '"Chillax" - relax.<|im_end|>'


def test_chatml_equals_smollm2_own_template(tokenizer):
    """With a system message, herd's chatml renders exactly what SmolLM2-Instruct's template renders."""
    own = tokenizer.chat_template
    t = get_template("chatml")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}]
    assert t.render_text(msgs, tokenizer)[0] == tokenizer.apply_chat_template(msgs, chat_template=own,
                                                                              tokenize=False)
    assert t.prompt(msgs[:-1], tokenizer) == tokenizer.apply_chat_template(
        msgs[:-1], chat_template=own, tokenize=False, add_generation_prompt=True)


def test_alpaca_multi_turn_trains_every_output(tokenizer):
    t = get_template("alpaca")
    msgs = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another."}, {"role": "assistant", "content": "Red."},
            {"role": "user", "content": "One more."}, {"role": "assistant", "content": "Green."}]
    r = t.render(msgs, tokenizer)
    assert tokenizer.decode([x for x in r.labels if x != IGNORE_INDEX]) == \
        "Blue.<|im_end|>Red.<|im_end|>Green.<|im_end|>"


def test_alpaca_refuses_system_role(tokenizer):
    with pytest.raises(TemplateError, match="role system"):
        get_template("alpaca").render([{"role": "system", "content": "x"}], tokenizer)


def test_reserved_characters_refused(tokenizer):
    with pytest.raises(TemplateError, match="reserved"):
        get_template("chatml").render([{"role": "user", "content": "a\ue000b"}], tokenizer)


@pytest.mark.parametrize("name", ["alpaca", "chatml", "llama2_chat", "vicuna_v1.1", "dolly"])
def test_an_open_reply_ends_with_its_own_text(name, tokenizer):
    """A reply marked ``"open": true`` (cut at a token cap) renders and trains up to its last character:
    the template's end of turn is neither in the text nor in the labels, on both tokenization paths."""
    from herd.data.records import Example
    from herd.data.tokenize import tokenize_examples

    t = get_template(name)
    user = {"role": "user", "content": "Name three rivers."}
    reply = "The Nile, the Amazon and the"
    whole_text, whole_spans = t.render_text([user, {"role": "assistant", "content": reply}], tokenizer)
    text, spans = t.render_text([user, {"role": "assistant", "content": reply, "open": True}], tokenizer)
    assert text.endswith(reply) and whole_text.startswith(text) and len(whole_text) > len(text)
    assert spans[-1][0] == whole_spans[-1][0] and text[spans[-1][0]:spans[-1][1]].strip() == reply
    r = t.render([user, {"role": "assistant", "content": reply, "open": True}], tokenizer)
    trained = [x for x in r.labels if x != IGNORE_INDEX]
    assert tokenizer.decode(trained).strip() == reply and r.input_ids[-len(trained):] == trained
    assert tokenizer.eos_token_id not in r.input_ids[-len(trained):]
    ex = Example(messages=[user, {"role": "assistant", "content": reply, "open": True}], source="t", index=0)
    fast, _ = tokenize_examples([ex], t, tokenizer, 512, cache=False)
    slow, _ = tokenize_examples([ex], t, tokenizer, 512, batched=False, cache=False)
    assert fast[0] == slow[0] and list(fast[0].input_ids) == r.input_ids
    with pytest.raises(TemplateError, match="open"):
        t.render_text([{**user, "open": True}], tokenizer)
