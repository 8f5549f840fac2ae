"""Bad input gets one clear error naming file, record/line and field, before any model loads."""

from __future__ import annotations

import json

import pytest

from herd.core.errors import DataError
from herd.data import load_examples
from herd.data.split import split, split_dev
from herd.data.tokenize import tokenize_examples
from herd.templates import get_template
from tests.conftest import ALPACA_DEMO


def _write(tmp_path, name, content: str | bytes):
    p = tmp_path / name
    (p.write_bytes if isinstance(content, bytes) else p.write_text)(content)
    return p


def test_reads_real_alpaca_files():
    exs = load_examples(ALPACA_DEMO, "alpaca")
    assert len(exs) == 999
    assert exs[0].messages[-1]["role"] == "assistant"


def test_truncated_json_names_line(tmp_path):
    p = _write(tmp_path, "t.json", '[\n{"instruction": "a", "output": "b"},\n{"instruction": "c", "out')
    with pytest.raises(DataError, match=r"t\.json:3.*invalid JSON"):
        load_examples(p, "alpaca")


def test_jsonl_bad_line(tmp_path):
    p = _write(tmp_path, "t.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": \n')
    with pytest.raises(DataError, match=r"t\.jsonl:2"):
        load_examples(p, "alpaca")


def test_jsonl_strings_may_hold_unicode_line_separators(tmp_path):
    """JSON Lines end at "\n" only: a raw U+2028, U+0085 or form feed inside a string (what
    ``ensure_ascii=False`` writes) stays inside its record, and CRLF files read too."""
    rows = [{"instruction": "a\u2028b", "output": "c\x85d\x0ce"}, {"instruction": "f", "output": "g\u2029"}]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows)
    assert len(text.splitlines()) > 2
    p = _write(tmp_path, "t.jsonl", text.encode("utf-8"))
    exs = load_examples(p, "alpaca")
    assert [e.messages[-1]["content"] for e in exs] == ["c\x85d\x0ce", "g\u2029"]
    assert "a\u2028b" in exs[0].messages[0]["content"]


def test_wrong_type_names_record_and_field(tmp_path):
    p = _write(tmp_path, "t.json", json.dumps([{"instruction": "a", "output": "b"},
                                               {"instruction": "c", "output": 3}]))
    with pytest.raises(DataError, match=r"record 1 field 'output': expected a string, got int"):
        load_examples(p, "alpaca")


def test_missing_field(tmp_path):
    p = _write(tmp_path, "t.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    with pytest.raises(DataError, match=r"t\.jsonl:2 record 1 field 'output': missing field"):
        load_examples(p, "alpaca")


def test_empty_file_and_empty_field(tmp_path):
    with pytest.raises(DataError, match="file is empty"):
        load_examples(_write(tmp_path, "e.json", "  \n"), "alpaca")
    with pytest.raises(DataError, match="field 'instruction': empty"):
        load_examples(_write(tmp_path, "f.json", json.dumps([{"instruction": " ", "output": "b"}])), "alpaca")


def test_non_utf8_names_line(tmp_path):
    p = _write(tmp_path, "t.jsonl", b'{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "b"}\n')
    with pytest.raises(DataError, match=r"t\.jsonl:2: not UTF-8"):
        load_examples(p, "alpaca")


def test_not_a_list(tmp_path):
    with pytest.raises(DataError, match=r"t\.json:1 record 0: expected an object"):
        load_examples(_write(tmp_path, "t.json", "42"), "alpaca")
    with pytest.raises(DataError, match="no records"):
        load_examples(_write(tmp_path, "u.json", "[]"), "alpaca")


def test_column_mapping(tmp_path):
    p = _write(tmp_path, "t.json", json.dumps([{"prompt": "Hi", "query": "ctx", "response": "Yo"}]))
    exs = load_examples(p, "alpaca", columns={"instruction": "prompt", "input": "query", "output": "response"})
    assert exs[0].messages == [{"role": "user", "content": "Hi", "input": "ctx"},
                               {"role": "assistant", "content": "Yo"}]


def test_over_length_records_dropped_and_counted(tokenizer):
    exs = load_examples(ALPACA_DEMO, "alpaca")[:50]
    items, rep = tokenize_examples(exs, get_template("alpaca"), tokenizer, max_len=128)
    dropped = sum(rep.dropped.values())
    assert dropped > 0 and rep.kept == len(items) == 50 - dropped
    assert all(len(x) <= 128 for x in items)
    assert "longer than max_len 128" in rep.summary()


def test_split_is_deterministic_and_order_free():
    exs = load_examples(ALPACA_DEMO, "alpaca")[:100]
    tr1, ev1 = split(exs, 10, seed=1)
    tr2, ev2 = split(list(reversed(exs)), 10, seed=1)
    assert {e.key() for e in ev1} == {e.key() for e in ev2}
    assert len(tr1) == 90 and not ({e.key() for e in tr1} & {e.key() for e in ev1})
    assert {e.key() for e in split(exs, 10, seed=2)[1]} != {e.key() for e in ev1}


def test_dev_split_is_the_earlier_held_out_set_and_test_is_new():
    exs = load_examples(ALPACA_DEMO, "alpaca")[:200]
    _, old = split(exs, 20, seed=42)
    _, held = split(exs, 60, seed=42)
    dev, test = split_dev(held, 20, seed=42)
    keys = lambda xs: [e.key() for e in xs]  # noqa: E731
    assert set(keys(dev)) == set(keys(old))  # growing eval_size keeps the old held-out set as dev
    assert len(test) == 40 and not set(keys(dev)) & set(keys(test))
    assert sorted(keys(dev) + keys(test)) == sorted(keys(held))
    assert keys(test) == [k for k in keys(held) if k not in set(keys(dev))]  # order kept
    assert split_dev(held, 0) == ([], held)
    with pytest.raises(ValueError, match="leaves no test records"):
        split_dev(held, 60)
