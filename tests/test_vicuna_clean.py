"""FastChat's ShareGPT cleaning steps for Vicuna (dossier §2.2): each step as a tested function, and a
report that says what was changed or dropped and why."""

from __future__ import annotations

import json

import pytest

from herd.core.errors import HerdError
from herd.data import load_examples
from herd.data.records import Example
from herd.data.report import DataReport
from herd.data.transforms.fastchat_clean import (
    CleanOptions,
    clean_sharegpt,
    convert_html,
    dedup,
    drop_blocked,
    drop_plugins,
    drop_repeated_digits,
    drop_short,
    drop_wrong_format,
    filter_language,
    html_to_markdown,
    split_long,
    truncate_blank,
)
from herd.templates import get_template
from tests.conftest import SHARED

GLAIVE = SHARED / "llamafactory_glaive_toolcall_demo" / "glaive_toolcall_en_demo.json"

# The shape of ShareGPT's saved HTML: a prose div, code blocks with a language label and a "Copy code" button.
SHAREGPT_HTML = (
    '<div class="markdown prose w-full break-words dark:prose-invert light"><p>Here is the code:</p><pre>'
    '<div class="bg-black mb-4 rounded-md"><div class="flex items-center relative"><span class="">python</span>'
    '<button class="flex ml-auto gap-2">Copy code</button></div><div class="p-4 overflow-y-auto">'
    '<code class="!whitespace-pre hljs language-python">my_var = <span class="hljs-number">1</span>\n'
    'print(my_var)\n</code></div></div></pre><p>Use <code>snake_case</code> and <strong>bold</strong>.</p></div>'
)


def ex(*turns, index=0, **meta) -> Example:
    roles = ["user", "assistant"]
    msgs = [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]
    return Example(messages=msgs, source="chats.json", index=index, meta=meta)


def test_html_to_markdown_repairs_code_fences_and_drops_sharegpt_noise():
    assert html_to_markdown(SHAREGPT_HTML) == (
        "Here is the code:\n\n```python\nmy_var = 1\nprint(my_var)\n```\n\nUse `snake_case` and **bold**.")
    assert html_to_markdown("2 / 2<p>Sure thing.</p>Copy12 chars / 3 words") == "Sure thing."
    assert html_to_markdown("<p>a_b</p>") == "a\\_b"  # FastChat's markdownify escaped underscores in text


def test_convert_html_auto_leaves_markdown_turns_alone_and_reports_changes():
    report = DataReport()
    out = convert_html([ex("what is snake_case?", SHAREGPT_HTML), ex("plain *markdown*", "stays_as_is", index=1)],
                       "auto", report=report)
    assert out[0].messages[0]["content"] == "what is snake_case?"
    assert out[0].messages[1]["content"].startswith("Here is the code:\n\n```python\n")
    assert out[1].messages[1]["content"] == "stays_as_is"
    assert report.count("changed", "html") == 1 and "chats.json record 0" in report.places[
        ("changed", "html", "converted HTML to Markdown")]
    assert convert_html([ex("a_b", "c")], "always", report=report)[0].messages[0]["content"] == "a\\_b"
    with pytest.raises(HerdError, match="auto, always or never"):
        convert_html([], "sometimes", report=report)


def test_blocked_words_and_rate_limit_replies_drop_the_conversation():
    report = DataReport()
    exs = [ex("Who made you?", "I was trained by OpenAI."), ex("hi", "Too many requests in 1 hour. Try again later.", index=1),
           ex("Is ChatGPT good?", "Yes.", index=2), ex("hello", "hello to you", index=3)]
    kept = drop_blocked(exs, report=report)
    assert [e.index for e in kept] == [3]
    assert report.count("dropped", "blocked", "blocked word 'openai'") == 1
    assert report.count("dropped", "blocked", "blocked word 'chatgpt'") == 1
    assert report.count("dropped", "blocked", "rate-limit reply") == 1
    assert report.sizes["blocked"] == (4, 1)


def test_truncate_at_first_blank_turn_keeps_whole_exchanges():
    report = DataReport()
    kept = truncate_blank([ex("q1", "a1", "q2", "\u200b"), ex("q", " \n", index=1), ex("q", "a", index=2)],
                          report=report)
    assert [e.messages for e in kept][0] == ex("q1", "a1").messages
    assert [e.index for e in kept] == [0, 2]
    assert report.count("changed", "blank") == 1 and report.count("dropped", "blank") == 1


def test_short_plugins_repetition_and_wrong_format_filters():
    report = DataReport()
    assert [e.index for e in drop_short([ex("hi", "yo"), ex("What is 2+2?", "Four.", index=1)], 16,
                                        report=report)] == [1]
    assert drop_plugins([ex("q", "a", plugins=["web"]), ex("q", "a", index=1, model="Plugins")], report=report) == []
    assert drop_repeated_digits([ex("call 5555555555", "ok")], report=report) == []
    assert drop_wrong_format([ex("list", "Steps:\n1. a\n1. b")], report=report) == []
    assert len(drop_wrong_format([ex("list", "Steps:\n1. a\n2. b\n1. c")], report=report)) == 1
    assert report.count("dropped") == 5


def test_dedup_by_id_then_by_first_exchange():
    report = DataReport()
    exs = [ex("q", "a", id="x"), ex("other", "b", index=1, id="x"), ex("q", "a", index=2, id="y"),
           ex("q", "different", index=3, id="z")]
    assert [e.index for e in dedup(exs, report=report)] == [0, 3]
    assert report.count("dropped", "dedup", "duplicate id") == 1
    assert report.count("dropped", "dedup", "duplicate value") == 1


def test_language_filter_keeps_or_skips_with_a_pluggable_detector():
    def detect(text):
        return "ko" if "안녕" in text else "en"

    exs = [ex("안녕하세요", "안녕"), ex("hello", "hi there", index=1)]
    report = DataReport()
    assert [e.index for e in filter_language(exs, skip_lang="ko", detect=detect, report=report)] == [1]
    assert [e.index for e in filter_language(exs, keep_lang="ko", detect=detect, report=report)] == [0]
    assert filter_language(exs, report=report) == exs  # no language option: untouched
    with pytest.raises(HerdError, match="exclusive"):
        filter_language(exs, keep_lang="en", skip_lang="ko", detect=detect, report=report)


def test_split_long_makes_chunks_of_whole_exchanges_that_fit(tokenizer):
    t = get_template("vicuna_v1.1")
    turns = []
    for k in range(6):
        turns += [f"Question {k}: " + "why is the sky blue? " * 6, f"Answer {k}: " + "Rayleigh scattering. " * 8]
    long = ex(*turns, id="c1")
    long.messages.insert(0, {"role": "system", "content": "Be brief."})
    full = len(t.render(long.messages, tokenizer).input_ids)
    report = DataReport()
    chunks = split_long([long], t, tokenizer, full // 2, report=report)
    assert len(chunks) >= 2
    assert sum(len(c.messages) - 1 for c in chunks) == 12  # every exchange kept, none cut
    for c in chunks:
        assert c.messages[0]["content"] == "Be brief." and c.messages[1]["role"] == "user"
        assert c.messages[-1]["role"] == "assistant"
        assert len(t.render(c.messages, tokenizer).input_ids) <= full // 2
    assert chunks[0].meta["id"] == "c1_1" and chunks[1].meta["id"].startswith("c1_")
    assert report.count("changed", "split") == 1
    # fits whole: returned unchanged; one exchange longer than the limit on its own: dropped, counted
    assert split_long([long], t, tokenizer, full, report=report) == [long]
    assert split_long([ex("q " * 50, "a " * 50)], t, tokenizer, 20, report=report) == []
    assert report.count("dropped", "split") == 1


def test_clean_sharegpt_pipeline_reports_every_change(tmp_path, tokenizer):
    recs = [
        {"id": "a", "conversations": [{"from": "gpt", "value": "stray"}, {"from": "human", "value": "Explain it."},
                                      {"from": "gpt", "value": SHAREGPT_HTML}]},
        {"id": "b", "conversations": [{"from": "human", "value": "Are you ChatGPT?"}, {"from": "gpt", "value": "Yes"}]},
        {"id": "a", "conversations": [{"from": "human", "value": "dup id"}, {"from": "gpt", "value": "dup id reply"}]},
        {"id": "c", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
        {"id": "d", "conversations": [{"from": "human", "value": "Tell me a fact."},
                                      {"from": "gpt", "value": "Octopuses have three hearts."}]},
    ]
    path = tmp_path / "sharegpt_html.json"
    path.write_text(json.dumps(recs), encoding="utf-8")
    report = DataReport()
    exs = load_examples(path, "sharegpt", repair=True, report=report)
    out = clean_sharegpt(exs, CleanOptions(max_length=256), template=get_template("vicuna_v1.1"),
                         tokenizer=tokenizer, report=report)
    assert [e.meta["id"] for e in out] == ["a", "d"]
    assert out[0].messages[0]["content"] == "Explain it." and "```python" in out[0].messages[1]["content"]
    counts = {(a, s, r): n for (a, s, r), n in report.counts.items()}
    assert counts == {("changed", "read", "dropped turns before the first user turn"): 1,
                      ("changed", "html", "converted HTML to Markdown"): 1,
                      ("dropped", "blocked", "blocked word 'chatgpt'"): 1,
                      ("dropped", "short", "< 16 characters"): 1,
                      ("dropped", "dedup", "duplicate id"): 1}
    assert report.as_dict()["sizes"]["wrong_format"] == {"in": 2, "out": 2}
    with pytest.raises(HerdError, match="template and tokenizer"):
        clean_sharegpt(exs, CleanOptions(max_length=256))


def test_clean_sharegpt_on_real_tool_chats_splits_to_fit(tokenizer):
    exs = load_examples(GLAIVE, "sharegpt")[:40]
    report = DataReport()
    t = get_template("chatml")  # glaive has tool turns: chatml renders them
    out = clean_sharegpt(exs, CleanOptions(max_length=384), template=t, tokenizer=tokenizer, report=report)
    assert out and all(len(t.render(e.messages, tokenizer).input_ids) <= 384 for e in out)
    assert report.sizes["split"][1] >= report.sizes["split"][0] - report.count("dropped", "split")


def test_missing_optional_packages_say_what_to_install(monkeypatch):
    import sys

    from herd.data.transforms.fastchat_clean import default_language_detector

    monkeypatch.setitem(sys.modules, "langdetect", None)
    monkeypatch.setitem(sys.modules, "markdownify", None)
    with pytest.raises(HerdError, match="pip install langdetect, or pass detect="):
        default_language_detector()
    with pytest.raises(HerdError, match="pip install markdownify"):
        html_to_markdown("<p>x</p>")
