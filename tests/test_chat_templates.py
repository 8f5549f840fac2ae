"""Chat templates (vicuna_v1.1, llama2_chat, dolly, chatml): byte-exact with the dossier, masks that
unmask exactly the assistant replies and their end tokens, parity with ``apply_chat_template`` over the
exported jinja, and the ``"train": false`` flag GAtt uses."""

from __future__ import annotations

import re

import pytest

from herd.core.paths import repo_root
from herd.data.transforms.ghost_attention import honours_train_flag
from herd.templates import IGNORE_INDEX, TEMPLATES, TemplateError, get_template
from herd.templates.llama2_chat import DEFAULT_SYSTEM as LLAMA2_SYSTEM
from herd.templates.llama2_chat import special_tag_violations

DOSSIER = repo_root().parent / "shared" / "reference" / "recipes.md"
CHAT = ["vicuna_v1.1", "llama2_chat", "dolly", "chatml"]

# Verbatim from recipes.md (§2.3, §5.3, §7.3); also re-read from the file below when it is present.
VICUNA_DOSSIER = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                  "helpful, detailed, and polite answers to the user's questions. USER: {u1} ASSISTANT: {a1}</s>"
                  "USER: {u2} ASSISTANT:")
LLAMA2_DOSSIER = "<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user_1} [/INST] {assistant_1} </s><s>[INST] {user_2} [/INST]"
DOLLY_DOSSIER = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                 "the request.\n\n### Instruction:\n{instruction}\n\nInput:\n{context}\n\n### Response:\n"
                 "{response}\n\n### End")

THREE_TURNS = [
    {"role": "user", "content": "Name a prime number."},
    {"role": "assistant", "content": "Seven is prime."},
    {"role": "user", "content": "And an even one?"},
    {"role": "assistant", "content": "Two is the only even prime."},
    {"role": "user", "content": "Thanks! Anything else?"},
    {"role": "assistant", "content": "Primes never end, as Euclid proved."},
]
SYSTEM = {"role": "system", "content": "You answer in one sentence."}


def _conversation(name: str) -> list[dict]:
    return THREE_TURNS if name == "dolly" else [SYSTEM, *THREE_TURNS]


def _expected_target(name: str, reply: str, tok) -> str:
    return {"vicuna_v1.1": f" {reply}{tok.eos_token}", "llama2_chat": f" {reply} {tok.eos_token}",
            "dolly": f"{reply}\n\n### End", "chatml": f"{reply}<|im_end|>"}[name]


def _trained_runs(r, tok) -> list[str]:
    """The contiguous runs of trained tokens, decoded."""
    runs, cur = [], []
    for label in r.labels:
        if label != IGNORE_INDEX:
            cur.append(label)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [tok.decode(run) for run in runs]


def _dossier_block(heading: str) -> str:
    """The first fenced block after the dossier heading that starts with ``heading``."""
    lines = DOSSIER.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    open_ = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
    close = next(i for i in range(open_ + 1, len(lines)) if lines[i].startswith("```"))
    return "\n".join(lines[open_ + 1:close])


def test_chat_templates_are_registered():
    assert set(CHAT) <= set(TEMPLATES)


@pytest.mark.parametrize("name", CHAT)
def test_three_turns_unmask_exactly_the_three_replies_and_their_end_tokens(name, tokenizer):
    t = get_template(name)
    r = t.render(_conversation(name), tokenizer)
    replies = [m["content"] for m in THREE_TURNS if m["role"] == "assistant"]
    assert _trained_runs(r, tokenizer) == [_expected_target(name, a, tokenizer) for a in replies]


@pytest.mark.parametrize("name", CHAT)
def test_render_equals_exported_jinja_through_apply_chat_template(name, tokenizer):
    t = get_template(name)
    for msgs in (_conversation(name), THREE_TURNS[:2], THREE_TURNS[:4]):
        r = t.render(msgs, tokenizer)
        hf = tokenizer.apply_chat_template(msgs, chat_template=t.chat_template(tokenizer), tokenize=True,
                                           return_dict=True, return_assistant_tokens_mask=True)
        assert hf["input_ids"] == r.input_ids
        assert hf["assistant_masks"] == [int(x != IGNORE_INDEX) for x in r.labels]
        prompt = msgs[:-1]
        assert tokenizer.apply_chat_template(prompt, chat_template=t.chat_template(tokenizer), tokenize=False,
                                             add_generation_prompt=True) == t.prompt(prompt, tokenizer)
        # the generation prompt is a prefix of the training render: eval sees what training saw
        assert r.text.startswith(t.prompt(prompt, tokenizer))


def test_vicuna_string_matches_dossier():
    t = get_template("vicuna_v1.1")
    msgs = [{"role": "user", "content": "{u1}"}, {"role": "assistant", "content": "{a1}"},
            {"role": "user", "content": "{u2}"}]
    assert t.prompt(msgs) == VICUNA_DOSSIER  # tokenizer=None: LLaMA's <s>/</s>
    if DOSSIER.exists():
        assert _dossier_block("### 2.3") == VICUNA_DOSSIER


def test_vicuna_puts_one_eos_id_after_every_reply_and_honours_a_system_turn(tokenizer):
    t = get_template("vicuna_v1.1")
    r = t.render(_conversation("vicuna_v1.1"), tokenizer)
    assert r.text.startswith(SYSTEM["content"] + " USER: ")
    eos = [i for i, x in enumerate(r.input_ids) if x == tokenizer.eos_token_id]
    assert len(eos) == 3 and all(r.labels[i] == tokenizer.eos_token_id for i in eos)
    assert t.prompt(THREE_TURNS[:1]).startswith("A chat between a curious user")  # the default system prompt


def test_llama2_string_matches_dossier():
    t = get_template("llama2_chat")
    msgs = [{"role": "system", "content": "{system}"}, {"role": "user", "content": "{user_1}"},
            {"role": "assistant", "content": "{assistant_1}"}, {"role": "user", "content": "{user_2}"}]
    assert t.prompt(msgs) == LLAMA2_DOSSIER
    if DOSSIER.exists():
        assert _dossier_block("### 5.3") == LLAMA2_DOSSIER


def test_llama2_wraps_every_exchange_in_bos_and_eos_ids(tokenizer):
    t = get_template("llama2_chat")
    r = t.render(_conversation("llama2_chat"), tokenizer)
    bos = [i for i, x in enumerate(r.input_ids) if x == tokenizer.bos_token_id]
    eos = [i for i, x in enumerate(r.input_ids) if x == tokenizer.eos_token_id]
    assert len(bos) == 3 and len(eos) == 3 and bos[0] == 0
    assert all(e + 1 == b for e, b in zip(eos, bos[1:], strict=False))  # </s><s> between exchanges
    assert all(r.labels[i] == IGNORE_INDEX for i in bos)
    # Meta strips (<<SYS>> block + user) as one string and the answer; later user turns alone
    msgs = [SYSTEM, {"role": "user", "content": "  hi \n"}, {"role": "assistant", "content": " yo "},
            {"role": "user", "content": " again "}]
    assert t.prompt(msgs) == (f"<s>[INST] <<SYS>>\n{SYSTEM['content']}\n<</SYS>>\n\n  hi [/INST] yo </s>"
                              "<s>[INST] again [/INST]")
    assert "being safe.  Your" in LLAMA2_SYSTEM  # the original default prompt's double space
    assert special_tag_violations([{"role": "user", "content": "x [INST] y"}]) == ["[INST]"]


@pytest.mark.parametrize("msgs, match", [
    ([SYSTEM], "followed by a user"),
    ([{"role": "assistant", "content": "a"}], "alternate"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "alternate"),
    ([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}], "not supported"),
])
def test_llama2_refuses_malformed_conversations(msgs, match):
    with pytest.raises(TemplateError, match=match):
        get_template("llama2_chat").render_text(msgs)


def test_vicuna_and_dolly_refuse_unsupported_roles():
    with pytest.raises(TemplateError, match="not supported"):
        get_template("vicuna_v1.1").render_text([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}])
    with pytest.raises(TemplateError, match="alternate"):
        get_template("dolly").render_text([SYSTEM, *THREE_TURNS[:2]])


def test_dolly_strings_match_dossier(tokenizer):
    t = get_template("dolly")
    with_ctx = [{"role": "user", "content": "{instruction}", "input": "{context}"},
                {"role": "assistant", "content": "{response}"}]
    assert t.render_text(with_ctx)[0] == DOLLY_DOSSIER
    if DOSSIER.exists():
        assert _dossier_block("### 7.3") == DOLLY_DOSSIER
    without = [{"role": "user", "content": "{instruction}"}, {"role": "assistant", "content": "{response}"}]
    no_input = re.sub(r"Input:\n\{context\}\n\n", "", DOLLY_DOSSIER)
    assert t.render_text(without)[0] == no_input
    assert t.prompt(without[:1]) == no_input.split("{response}")[0]  # ends with "### Response:\n"
    assert t.prompt(without[:1]).endswith("### Response:\n")
    assert "### End" in t.stop_strings(tokenizer)  # pad = eos: Dolly stops on ### End, never on EOS
    r = t.render(with_ctx, tokenizer)
    assert tokenizer.eos_token_id not in r.input_ids


@pytest.mark.parametrize("name", ["vicuna_v1.1", "llama2_chat", "dolly"])
def test_train_false_turns_are_rendered_but_not_trained(name, tokenizer):
    t = get_template(name)
    assert honours_train_flag(t)
    msgs = [dict(m) for m in _conversation(name)]
    for m in msgs[:-1]:
        if m["role"] == "assistant":
            m["train"] = False
    r = t.render(msgs, tokenizer)
    assert r.text == t.render(_conversation(name), tokenizer).text  # same bytes, only the mask differs
    assert _trained_runs(r, tokenizer) == [_expected_target(name, THREE_TURNS[-1]["content"], tokenizer)]
    hf = tokenizer.apply_chat_template(msgs, chat_template=t.chat_template(tokenizer), tokenize=True,
                                       return_dict=True, return_assistant_tokens_mask=True)
    assert hf["assistant_masks"] == [int(x != IGNORE_INDEX) for x in r.labels]
