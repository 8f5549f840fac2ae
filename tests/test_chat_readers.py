"""Chat readers (sharegpt, openai_messages, dolly, preference_sft) on the real shared data: validated
records, errors that name file, record/line and field, and repairs that are counted in the report."""

from __future__ import annotations

import gzip
import json

import pytest

from herd.core.errors import DataError
from herd.data import load_examples
from herd.data.readers.dolly import CATEGORIES, stratified_sample
from herd.data.readers.preference_sft import parse_pair
from herd.data.report import DataReport
from herd.templates import TemplateError, get_template
from tests.conftest import ALPACA_TINY, SHARED

GLAIVE = SHARED / "llamafactory_glaive_toolcall_demo" / "glaive_toolcall_en_demo.json"
DPO = SHARED / "llamafactory_preference_demo" / "dpo_en_demo.json"
KTO = SHARED / "llamafactory_preference_demo" / "kto_en_demo.json"
HH = SHARED / "hh_rlhf_harmless_base_test" / "test.jsonl.gz"
STACK = SHARED / "stack_exchange_paired_tiny" / "stack_exchange_paired_tiny.json"


def _write(tmp_path, name, data) -> str:
    p = tmp_path / name
    if name.endswith(".jsonl"):
        p.write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
    else:
        p.write_text(json.dumps(data), encoding="utf-8")
    return str(p)


def _turns(*pairs):
    return [{"from": f, "value": v} for f, v in pairs]


# -- ShareGPT ---------------------------------------------------------------------------------------

def test_sharegpt_reads_glaive_tool_calls_with_tools_and_observations(tokenizer):
    exs = load_examples(GLAIVE, "sharegpt")
    raw = json.loads(GLAIVE.read_text())
    assert len(exs) == len(raw) == 300
    roles = [m["role"] for e in exs for m in e.messages]
    assert roles.count("tool") == 211 and roles.count("user") == 746 and roles.count("assistant") == 746 + 211
    ex = exs[0]
    call = ex.messages[3]
    assert call["role"] == "assistant" and call["content"] == raw[0]["conversations"][3]["value"]
    assert call["tool_calls"][0]["function"]["name"] == "search_recipes"
    assert ex.messages[4]["role"] == "tool"
    assert ex.meta["tools"][0]["name"] == "search_recipes"
    r = get_template("chatml").render(ex.messages, tokenizer)  # chatml carries tool turns
    assert "<|im_start|>tool\n" in r.text and r.n_trained > 0
    with pytest.raises(TemplateError, match="vicuna_v1.1 template"):  # Vicuna has no tool turns
        get_template("vicuna_v1.1").render(ex.messages, tokenizer)


def test_sharegpt_accepts_one_conversation_object_a_bare_turn_list_and_a_top_level_system(tmp_path):
    conv = _turns(("human", "Hi there"), ("gpt", "Hello! How can I help?"))
    one = load_examples(_write(tmp_path, "one.json", {"id": "x1", "conversations": conv}), "sharegpt")
    bare = load_examples(_write(tmp_path, "bare.json", conv), "sharegpt")
    assert one[0].messages == bare[0].messages == [{"role": "user", "content": "Hi there"},
                                                  {"role": "assistant", "content": "Hello! How can I help?"}]
    assert one[0].meta["id"] == "x1"
    lf = load_examples(_write(tmp_path, "lf.json", [{"conversations": conv, "system": "Be kind."}]), "sharegpt")
    assert lf[0].messages[0] == {"role": "system", "content": "Be kind."}


@pytest.mark.parametrize("turns, message, field", [
    (_turns(("human", "a"), ("bot", "b")), "unknown role 'bot'", "conversations[1].from"),
    (_turns(("gpt", "a"), ("human", "b"), ("gpt", "c")), "must open with a user turn", "conversations[0].from"),
    (_turns(("human", "a"), ("human", "b"), ("gpt", "c")), "'user' turn after 'user'", "conversations[1].from"),
    (_turns(("human", "a"), ("gpt", " ")), "empty turn", "conversations[1].value"),
    (_turns(("human", "a"), ("gpt", "b"), ("human", "c")), "ends with a 'user' turn", "conversations[2].from"),
    (_turns(("human", "a"), ("gpt", "b"), ("system", "c"), ("gpt", "d")), "may only come first",
     "conversations[2].from"),
])
def test_sharegpt_errors_name_file_line_record_and_field(tmp_path, turns, message, field):
    good = {"conversations": _turns(("human", "ok"), ("gpt", "fine"))}
    path = _write(tmp_path, "bad.jsonl", [good, good, {"conversations": turns}])
    with pytest.raises(DataError) as e:
        load_examples(path, "sharegpt")
    assert (e.value.path, e.value.line, e.value.record, e.value.field) == (path, 3, 2, field)
    assert message in str(e.value) and f"{path}:3 record 2 field '{field}'" in str(e.value)


def test_sharegpt_hints_at_the_right_format(tmp_path):
    path = _write(tmp_path, "msgs.json", [{"messages": [{"role": "user", "content": "a"}]}])
    with pytest.raises(DataError, match="use format openai_messages"):
        load_examples(path, "sharegpt")


def test_sharegpt_repair_applies_fastchat_repairs_and_counts_them(tmp_path):
    recs = [
        {"conversations": _turns(("gpt", "stray greeting"), ("human", "q1"), ("gpt", "a1"), ("human", "left"))},
        {"conversations": _turns(("human", "q"), ("gpt", "a"), ("human", ""), ("gpt", "b"))},
        {"conversations": _turns(("human", "q"), ("bot", "b"))},
        {"conversations": _turns(("human", "q"), ("human", "q again"), ("gpt", "b"))},
        {"conversations": _turns(("human", "fine"), ("gpt", "also fine"))},
    ]
    report = DataReport()
    exs = load_examples(_write(tmp_path, "r.json", recs), "sharegpt", repair=True, report=report)
    assert [[m["content"] for m in e.messages] for e in exs] == [["q1", "a1"], ["q", "a"], ["fine", "also fine"]]
    assert report.count("changed", reason="dropped turns before the first user turn") == 1
    assert report.count("changed", reason="dropped turns after the last assistant reply") == 1
    assert report.count("changed", reason="truncated at the first empty turn") == 1
    assert report.count("dropped", reason="unknown role") == 1
    assert report.count("dropped", reason="roles out of order") == 1
    assert report.sizes["read"] == (5, 3)
    assert "record 3" in report.summary() or "record 3" in str(report)
    assert report.as_dict()["sizes"]["read"] == {"in": 5, "out": 3}


def test_sharegpt_function_call_must_be_json(tmp_path):
    recs = [{"conversations": _turns(("human", "q"), ("function_call", "{not json"), ("observation", "{}"),
                                     ("gpt", "a"))}]
    with pytest.raises(DataError, match="function_call is not valid JSON") as e:
        load_examples(_write(tmp_path, "f.json", recs), "sharegpt")
    assert e.value.field == "conversations[1].value"


# -- OpenAI messages --------------------------------------------------------------------------------

def test_openai_messages_reads_parts_developer_and_tool_calls(tmp_path):
    rec = {"messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in "}, {"type": "text", "text": "Paris?"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "{\"temp\": 21}"},
        {"role": "assistant", "content": "21 degrees."}],
        "tools": [{"name": "weather"}]}
    ex = load_examples(_write(tmp_path, "o.jsonl", [rec]), "openai_messages")[0]
    assert ex.messages[0] == {"role": "system", "content": "Be brief."}
    assert ex.messages[1]["content"] == "Weather in Paris?"
    assert json.loads(ex.messages[2]["content"]) == {"name": "weather", "arguments": {"city": "Paris"}}
    assert ex.messages[3]["tool_call_id"] == "c1" and ex.meta["tools"] == [{"name": "weather"}]
    assert ex.meta["line"] == 1


def test_openai_messages_refuses_kto_undesirable_replies_unless_repairing():
    with pytest.raises(DataError, match="label is false") as e:
        load_examples(KTO, "openai_messages")
    assert e.value.field == "label"
    report = DataReport()
    exs = load_examples(KTO, "openai_messages", repair=True, report=report)
    assert len(exs) == 150 and report.count("dropped", reason="label false") == 150


def test_openai_messages_errors_name_the_message_field(tmp_path):
    rec = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": 3}]}
    with pytest.raises(DataError, match="expected a string") as e:
        load_examples(_write(tmp_path, "o.jsonl", [rec]), "openai_messages")
    assert (e.value.line, e.value.field) == (1, "messages[1].content")


# -- Dolly ------------------------------------------------------------------------------------------

@pytest.fixture()
def dolly_file(tmp_path):
    """A dolly-15k-format file built from real Alpaca records (no offline copy of dolly-15k exists)."""
    recs = [{"instruction": r["instruction"], "context": r["input"], "response": r["output"],
             "category": CATEGORIES[i % len(CATEGORIES)]}
            for i, r in enumerate(json.loads(ALPACA_TINY.read_text()))]
    return _write(tmp_path, "databricks-dolly-15k.jsonl", recs), recs


def test_dolly_reads_context_as_input_and_category_as_meta(dolly_file, tokenizer):
    path, recs = dolly_file
    exs = load_examples(path, "dolly")
    assert len(exs) == 100
    for ex, rec in zip(exs, recs, strict=True):
        user, reply = ex.messages
        assert user["content"] == rec["instruction"] and reply["content"] == rec["response"]
        assert user.get("input", "") == rec["context"] and ex.meta["category"] == rec["category"]
    with_ctx = next(e for e in exs if "input" in e.messages[0])
    text = get_template("dolly").render_text(with_ctx.messages, tokenizer)[0]
    assert f"\n\nInput:\n{with_ctx.messages[0]['input']}\n\n### Response:\n" in text
    assert "### Input:" in get_template("alpaca").render_text(with_ctx.messages, tokenizer)[0]


def test_dolly_missing_response_names_line_and_field(tmp_path):
    path = _write(tmp_path, "d.jsonl", [{"instruction": "a", "response": "b"}, {"instruction": "c", "context": ""}])
    with pytest.raises(DataError, match="missing field") as e:
        load_examples(path, "dolly")
    assert (e.value.line, e.value.record, e.value.field) == (2, 1, "response")


def test_dolly_stratifies_by_category(dolly_file):
    exs = load_examples(dolly_file[0], "dolly")
    sample = stratified_sample(exs, 40, seed=42)
    assert len(sample) == 40 and {e.meta["category"] for e in sample} == set(CATEGORIES)
    assert all(sum(e.meta["category"] == c for e in sample) == 5 for c in CATEGORIES)
    assert [e.index for e in sample] == [e.index for e in stratified_sample(exs, 40, seed=42)]


# -- preference records as SFT data -----------------------------------------------------------------

def test_preference_sft_keeps_prompt_and_chosen_of_llamafactory_dpo_pairs():
    raw = json.loads(DPO.read_text())
    exs = load_examples(DPO, "preference_sft")
    assert len(exs) == len(raw) == 299
    for ex, rec in zip(exs, raw, strict=True):
        assert ex.messages[-1] == {"role": "assistant", "content": rec["chosen"]["value"]}
        assert len(ex.messages) == len(rec["conversations"]) + 1
    assert sum(e.messages[0]["role"] == "system" for e in exs) == 80
    pair = parse_pair(DPO, raw[0], 0, None)
    assert pair.rejected["content"] == raw[0]["rejected"]["value"]


def test_preference_sft_reads_kto_stack_exchange_and_hh_rlhf(tmp_path):
    report = DataReport()
    kto = load_examples(KTO, "preference_sft", report=report)
    assert len(kto) == 150 and report.count("dropped", reason="undesirable reply (KTO label false)") == 150
    stack = load_examples(STACK, "preference_sft")
    assert len(stack) == 25 and stack[0].messages[1]["content"] == json.loads(STACK.read_text())[0]["response_j"]
    hh = tmp_path / "hh.jsonl"  # the reader takes JSON/JSONL; the shared copy is gzipped
    hh.write_bytes(gzip.decompress(HH.read_bytes()))
    with pytest.raises(DataError, match="empty turn") as e:
        load_examples(hh, "preference_sft")
    assert e.value.line == 87 and e.value.field == "chosen (turn 3)"
    report = DataReport()
    exs = load_examples(hh, "preference_sft", repair=True, report=report)
    first = json.loads(hh.read_text().splitlines()[0])
    assert exs[0].messages[0]["content"] == "what are some pranks with a pen i can do?"
    assert first["chosen"].endswith(exs[0].messages[-1]["content"])
    assert report.sizes["read"][0] == 2312 and len(exs) == 2312 - report.count("dropped") > 2250


def test_preference_sft_reads_trl_and_alpaca_pairs_and_refuses_unknown_shapes(tmp_path):
    recs = [{"prompt": "2+2?", "chosen": "4", "rejected": "5"},
            {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello"}],
             "rejected": [{"role": "assistant", "content": "Go away"}]},
            {"instruction": "Add", "input": "2 and 2", "chosen": "4", "rejected": "22"}]
    exs = load_examples(_write(tmp_path, "p.json", recs), "preference_sft")
    assert [e.messages[-1]["content"] for e in exs] == ["4", "Hello", "4"]
    assert exs[2].messages[0]["input"] == "2 and 2"
    with pytest.raises(DataError, match="not a known preference format") as e:
        load_examples(_write(tmp_path, "u.json", [{"foo": 1}]), "preference_sft")
    assert e.value.record == 0
