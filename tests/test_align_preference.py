"""Preference readers on the real shared files, their errors, and the deterministic held-out split."""

from __future__ import annotations

import gzip
import json

import pytest

from herd.core.errors import ConfigError, DataError
from herd.core.recipe import DataSource
from herd.data.readers.preference import (
    LabeledReply,
    PreferencePair,
    dedupe_items,
    load_sources,
    normalise_rating,
    read_labeled,
    read_pairs,
    split_by_prompt,
    split_items,
)
from herd.data.report import DataReport

from .conftest import SHARED

DPO_DEMO = SHARED / "llamafactory_preference_demo" / "dpo_en_demo.json"
KTO_DEMO = SHARED / "llamafactory_preference_demo" / "kto_en_demo.json"
HH = SHARED / "hh_rlhf_harmless_base_test" / "test.jsonl.gz"
SE = SHARED / "stack_exchange_paired_tiny" / "stack_exchange_paired_tiny.json"


def test_sharegpt_preference_demo():
    pairs = read_pairs(DPO_DEMO, "sharegpt_preference")
    assert len(pairs) == 299
    raw = json.loads(DPO_DEMO.read_text())
    assert pairs[0].prompt == [{"role": "user", "content": raw[0]["conversations"][0]["value"]}]
    assert pairs[0].chosen == raw[0]["chosen"]["value"] and pairs[0].rejected == raw[0]["rejected"]["value"]
    assert sum(p.prompt[0]["role"] == "system" for p in pairs) == 80
    multi = [p for p in pairs if len(p.prompt) == 5]
    assert len(multi) == 57 and [m["role"] for m in multi[0].prompt] == ["user", "assistant"] * 2 + ["user"]
    assert all(p.prompt[-1]["role"] == "user" and p.rating is None for p in pairs)
    assert read_pairs(DPO_DEMO, "preference")[5].key() == pairs[5].key()  # auto-detection agrees


def test_hh_rlhf_transcripts_split_into_prompt_and_replies():
    report = DataReport()
    pairs = read_pairs(HH, "hh_rlhf", repair=True, report=report)
    assert len(pairs) == 2299 and report.sizes["read"] == (2312, 2299)
    assert report.count(reason="prompts differ") == 5
    assert report.count(reason="empty reply") == 4
    assert report.count(reason="roles out of order") == 4  # two Assistant turns in a row
    with gzip.open(HH, "rt") as fh:
        first = json.loads(fh.readline())
    p = pairs[0]
    assert p.line == 1 and p.prompt[0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert [m["role"] for m in p.prompt] == ["user", "assistant"] * 2 + ["user"]
    assert first["chosen"].endswith(p.chosen) and first["rejected"].endswith(p.rejected)
    assert p.chosen != p.rejected


def test_hh_rlhf_strict_errors_name_file_line_and_field():
    with pytest.raises(DataError) as e:
        read_pairs(HH, "hh_rlhf")
    assert e.value.line == 87 and e.value.record == 86 and e.value.field == "chosen"
    assert "test.jsonl.gz:87 record 86 field 'chosen': empty reply" in str(e.value)


def test_hh_rlhf_prefix_mismatch_refused(tmp_path):
    f = tmp_path / "hh.jsonl"
    good = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
    bad = {"chosen": "\n\nHuman: hi\n\nAssistant: a\n\nHuman: more\n\nAssistant: b",
           "rejected": "\n\nHuman: hi\n\nAssistant: DIFFERENT\n\nHuman: more\n\nAssistant: c"}
    f.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match="differ before their final reply") as e:
        read_pairs(f, "hh_rlhf")
    assert (e.value.line, e.value.field) == (2, "rejected")
    assert read_pairs(f, "hh_rlhf", repair=True)[0].rejected == "go away"


def test_stack_exchange_paired_columns():
    pairs = read_pairs(SE, "stack_exchange_paired")
    raw = json.loads(SE.read_text())
    assert len(pairs) == 25
    assert pairs[3].prompt == [{"role": "user", "content": raw[3]["question"]}]
    assert (pairs[3].chosen, pairs[3].rejected) == (raw[3]["response_j"], raw[3]["response_k"])
    assert pairs[3].line is None and pairs[3].index == 3  # a JSON array: records are numbered, no lines


def test_kto_labeled_replies():
    items = read_labeled(KTO_DEMO)
    raw = json.loads(KTO_DEMO.read_text())
    assert len(items) == 300 and sum(x.desirable for x in items) == 150
    assert isinstance(items[0], LabeledReply)
    assert items[0].reply == raw[0]["messages"][-1]["content"] and items[0].desirable is raw[0]["label"]
    assert items[0].prompt == [{"role": m["role"], "content": m["content"]} for m in raw[0]["messages"][:-1]]
    with pytest.raises(DataError, match="read the file with format kto") as e:
        read_pairs(KTO_DEMO, "preference")
    assert (e.value.record, e.value.field) == (0, "label")


def _write(tmp_path, recs, name="p.jsonl"):
    f = tmp_path / name
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return f


def test_missing_and_bad_fields_are_named(tmp_path):
    f = _write(tmp_path, [{"question": "q", "response_j": "a", "response_k": "b"},
                          {"question": "q2", "response_j": "a2"}])
    with pytest.raises(DataError) as e:
        read_pairs(f, "stack_exchange_paired")
    assert (e.value.line, e.value.record, e.value.field) == (2, 1, "response_k")
    f = _write(tmp_path, [{"prompt": "q", "chosen": "same", "rejected": "same "}])
    with pytest.raises(DataError, match="identical"):
        read_pairs(f)
    f = _write(tmp_path, [{"prompt": "q", "chosen": "a", "rejected": ""}])
    with pytest.raises(DataError, match="empty reply") as e:
        read_pairs(f)
    assert e.value.field == "rejected"
    f = _write(tmp_path, [{"prompt": "q", "chosen": "a", "rejected": "b", "rating": "much better"}])
    with pytest.raises(DataError, match="unknown rating") as e:
        read_pairs(f)
    assert e.value.field == "rating"
    with pytest.raises(DataError, match="missing field") as e:
        read_pairs(_write(tmp_path, [{"conversations": [{"from": "human", "value": "x"}], "chosen": {}}]),
                   "sharegpt_preference")
    assert e.value.field == "rejected"


def test_ratings_margins_and_column_mapping(tmp_path):
    f = _write(tmp_path, [{"q": "x", "good": "a", "bad": "b", "rating": "Slightly Better"},
                          {"q": "y", "good": "a", "bad": "b", "rating": "unsure", "margin": 0.5}])
    pairs = read_pairs(f, "stack_exchange_paired", columns={"question": "q", "response_j": "good",
                                                             "response_k": "bad"}, safety=True)
    assert [p.rating for p in pairs] == ["slightly_better", "negligibly_better"]
    assert pairs[1].margin == 0.5 and pairs[0].margin is None and pairs[0].meta["safety"] is True
    assert normalise_rating("significantly-better") == "significantly_better" and normalise_rating(3) is None


def _pair(i: int) -> PreferencePair:
    return PreferencePair([{"role": "user", "content": f"q{i}"}], f"a{i}", f"b{i}", "f", i)


def test_split_is_deterministic_by_content():
    pairs = [_pair(i) for i in range(40)]
    train, held = split_items(pairs, 8, seed=1)
    assert len(held) == 8 and len(train) == 32
    rev_train, rev_held = split_items(list(reversed(pairs)) + [_pair(99)], 8, seed=1)
    # adding a record can take one eval slot, never move the others out of eval
    assert len({p.key() for p in held} & {p.key() for p in rev_held}) >= 7
    assert {p.key() for p in split_items(pairs, 8, seed=2)[1]} != {p.key() for p in held}
    assert split_items(pairs, 0) == (pairs, [])
    with pytest.raises(ConfigError, match="leaves no training"):
        split_items(pairs, 40)
    kept, dups = dedupe_items(pairs + [_pair(3)])
    assert dups == 1 and len(kept) == 40


def test_split_by_prompt_keeps_prompts_on_one_side():
    items = [_pair(i % 10) for i in range(30)]
    for i, p in enumerate(items):
        p.chosen = f"c{i}"
    train, held = split_by_prompt(items, 3)
    assert len(held) == 9 and {p.prompt[0]["content"] for p in train}.isdisjoint(
        {p.prompt[0]["content"] for p in held})


def test_load_sources_shared_paths():
    items, records = load_sources([DataSource(name="se", path="shared:stack_exchange_paired_tiny/"
                                              "stack_exchange_paired_tiny.json", format="stack_exchange_paired",
                                              max_records=10),
                                   DataSource(name="kto", path=str(KTO_DEMO), format="kto")])
    assert len(items) == 310 and records[0]["records"] == 10 and len(records[1]["sha256"]) == 64
    with pytest.raises(DataError, match="unknown option"):
        load_sources([DataSource(name="x", path=str(SE), format="stack_exchange_paired", options={"repar": True})])
    with pytest.raises(DataError, match="not a preference format"):
        load_sources([DataSource(name="x", path=str(SE), format="alpaca")])
