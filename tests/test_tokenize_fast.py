"""The batched, compact, cached tokenization is exact: same ids, labels, drops and batches as the per-record
reference path, for every template on real records; the cache is keyed, skips the tokenizer on a hit and
survives a corrupt file. No timing here (bench/data_scale.py measures speed)."""

from __future__ import annotations

import copy
import re
from collections import Counter

import numpy as np
import pytest
import torch

import herd.data.tokenize as tokmod
from herd.core.paths import shared_data_dir
from herd.data import Example, load_examples
from herd.data.packing import Batch, best_fit, make_batch
from herd.data.tokenize import Tokenized, cache_key, tokenize_examples
from herd.templates import IGNORE_INDEX, TEMPLATES, Template, get_template

# (file, reader format, options): the data files of recipes/*.yaml
SOURCES = [
    ("stanford_alpaca_tiny/alpaca_tiny.json", "alpaca", {}, 40),  # alpaca.yaml
    ("llamafactory_alpaca_en_demo/alpaca_en_demo.json", "alpaca", {}, 60),  # alpaca.yaml
    ("llamafactory_preference_demo/dpo_en_demo.json", "preference_sft", {}, 40),  # llama2chat, vicuna
    ("llamafactory_glaive_toolcall_demo/glaive_toolcall_en_demo.json", "sharegpt", {}, 60),  # llama2chat, vicuna
    ("openai_moderation_train/moderation_train_1000.jsonl", "moderation",
     {"split": "train", "taxonomy": "llama_guard_v1"}, 40),  # llamaguard.yaml
    ("gorilla_apibench/apibench/torchhub_train.json", "apibench", {"retrieval": "oracle"}, 40),  # gorilla.yaml
]
MAX_LEN = 384  # drops a share of every source as over-length


@pytest.fixture(scope="module")
def mixed() -> list[Example]:
    """Real records of every recipe's data, plus one every template must refuse (reserved characters)."""
    out = []
    for path, fmt, opts, n in SOURCES:
        out += load_examples(shared_data_dir() / path, fmt, **opts)[:n]
    bad = Example([{"role": "user", "content": "hi \ue000"}, {"role": "assistant", "content": "yo"}], "crafted", 0)
    return out[:7] + [bad] + out[7:]


@pytest.fixture()
def no_cache(monkeypatch):
    monkeypatch.setenv("HERD_NO_CACHE", "1")


@pytest.fixture()
def cache_on(tokenizer, tmp_path, monkeypatch):
    """A private cache folder (the tokenizer is loaded first: it lives in the real HERD_CACHE)."""
    monkeypatch.setenv("HERD_CACHE", str(tmp_path))
    monkeypatch.delenv("HERD_NO_CACHE", raising=False)
    return tmp_path / "tokenized"


def _same(a: list[Tokenized], b: list[Tokenized]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x.source, x.index) == (y.source, y.index)
        assert x.input_ids.tolist() == y.input_ids.tolist()
        assert x.labels.tolist() == y.labels.tolist()
    assert a == b


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_batched_equals_one_by_one_on_real_records(name, tokenizer, mixed, no_cache):
    t = get_template(name)
    ref, ref_rep = tokenize_examples(mixed, t, tokenizer, MAX_LEN, batched=False)
    new, rep = tokenize_examples(mixed, t, tokenizer, MAX_LEN, batched=True)
    _same(ref, new)
    assert rep == ref_rep  # kept, drop reasons and counts, tokens, trained tokens, dropped records in order
    assert rep.dropped["template refused it (message contains reserved private-use characters "
                       "U+E000/U+E001)"] >= 1
    assert "crafted record 0" in rep.examples_dropped
    assert rep.kept + sum(rep.dropped.values()) == len(mixed)
    # and the per-record path is exactly Template.render
    kept = {(x.source, x.index): x for x in new}
    for ex in mixed[:30]:
        if (ex.source, ex.index) in kept:
            r = t.render(ex.messages, tokenizer)
            assert kept[ex.source, ex.index].input_ids.tolist() == r.input_ids
            assert kept[ex.source, ex.index].labels.tolist() == r.labels


def test_every_drop_reason_is_exercised(tokenizer, mixed, no_cache):
    reasons = Counter()
    for t in TEMPLATES.values():
        reasons.update(tokenize_examples(mixed, t, tokenizer, MAX_LEN)[1].dropped)
    assert any(r.startswith("template refused it (") and "U+E000" not in r for r in reasons)  # a template's own
    assert any(r.startswith("longer than max_len") for r in reasons)


def test_no_trained_tokens_is_dropped_the_same(tokenizer, no_cache):
    t = Template(name="no-gen", jinja="{% for m in messages %}{{ m['content'] }}\n{% endfor %}", description="",
                 source="test")
    exs = [Example([{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}], "s", i)
           for i in range(3)]
    ref, ref_rep = tokenize_examples(exs, t, tokenizer, 64, batched=False)
    new, rep = tokenize_examples(exs, t, tokenizer, 64)
    assert ref == new == [] and rep == ref_rep and rep.dropped == Counter({"no trained tokens": 3})


def test_chunk_boundaries_do_not_matter(tokenizer, mixed, no_cache, monkeypatch):
    t = get_template("vicuna_v1.1")
    ref, ref_rep = tokenize_examples(mixed, t, tokenizer, MAX_LEN, batched=False)
    for n in (1, 3, 7):
        monkeypatch.setattr(tokmod, "BATCH_PIECES", n)
        new, rep = tokenize_examples(mixed, t, tokenizer, MAX_LEN)
        _same(ref, new)
        assert rep == ref_rep


def test_text_renderer_equals_render_text(tokenizer, mixed):
    for t in TEMPLATES.values():
        fast = t.text_renderer(tokenizer)
        for ex in mixed:
            try:
                want = t.render_text(ex.messages, tokenizer)
            except Exception as e:  # the same refusal, same message
                with pytest.raises(type(e), match=re.escape(str(e))):
                    fast(ex.messages)
                continue
            assert fast(ex.messages) == want


# -- compact storage ------------------------------------------------------------------------------

def test_items_are_int32_views_of_one_array(tokenizer, alpaca_examples, no_cache):
    items, rep = tokenize_examples(alpaca_examples[:20], get_template("alpaca"), tokenizer, 512)
    assert all(x.input_ids.dtype == np.int32 and x.labels.dtype == np.int32 for x in items)
    base = items[0].input_ids.base
    assert base is not None and all(x.input_ids.base is base for x in items)
    assert base.nbytes == 4 * rep.tokens  # 4 bytes per token id (and 4 per label): no per-token objects
    x = items[0]
    assert x.n_trained == sum(1 for v in x.labels.tolist() if v != IGNORE_INDEX)
    assert x.n_targets == sum(1 for v in x.labels.tolist()[1:] if v != IGNORE_INDEX)


def test_tokenized_accepts_lists_and_checks_lengths():
    x = Tokenized([1, 2, 3], [IGNORE_INDEX, 2, 3], "s", 0)
    assert x.input_ids.dtype == np.int32 and len(x) == 3 and x.n_targets == 2
    assert x == Tokenized(np.array([1, 2, 3]), np.array([-100, 2, 3]), "s", 0)
    with pytest.raises(ValueError):
        Tokenized([1, 2], [1], "s", 0)


def _reference_make_batch(items, row_len: int, pad_id: int, *, pack: bool = True) -> Batch:
    """make_batch as it was on Python int lists (before the arrays); ``items`` are (ids, labels) lists."""
    groups = best_fit([len(x[0]) for x in items], row_len) if pack else [[i] for i in range(len(items))]
    width = row_len if pack else max(len(x[0]) for x in items)
    ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
    labels = torch.full((len(groups), width), IGNORE_INDEX, dtype=torch.long)
    pos = torch.zeros((len(groups), width), dtype=torch.long)
    row_tokens = torch.zeros(len(groups), dtype=torch.long)
    n_tr = 0
    for r, group in enumerate(groups):
        col = 0
        for i in group:
            ids_i, lab_i = items[i]
            n = len(ids_i)
            ids[r, col:col + n] = torch.tensor(ids_i)
            lab = torch.tensor(lab_i[1:] + [IGNORE_INDEX])
            labels[r, col:col + n] = lab
            pos[r, col:col + n] = torch.arange(n)
            col += n
            n_tr += int((lab != IGNORE_INDEX).sum())
        row_tokens[r] = col
        if col < width:
            pos[r, col:] = torch.arange(width - col)
    return Batch(ids, labels, pos, row_tokens, n_tr)


@pytest.mark.parametrize("pack", [True, False])
def test_packed_batches_identical(tokenizer, mixed, no_cache, pack):
    t = get_template("chatml")
    new, _ = tokenize_examples(mixed, t, tokenizer, MAX_LEN)
    ref, _ = tokenize_examples(mixed, t, tokenizer, MAX_LEN, batched=False)
    lists = [(x.input_ids.tolist(), x.labels.tolist()) for x in ref]
    for i in range(0, len(new), 16):
        a = make_batch(new[i:i + 16], MAX_LEN, tokenizer.pad_token_id, pack=pack)
        b = _reference_make_batch(lists[i:i + 16], MAX_LEN, tokenizer.pad_token_id, pack=pack)
        for f in ("input_ids", "labels", "position_ids", "row_tokens"):
            assert getattr(a, f).dtype == torch.long and torch.equal(getattr(a, f), getattr(b, f)), f
        assert a.n_trained == b.n_trained == sum(x.n_targets for x in new[i:i + 16])


# -- the cache ------------------------------------------------------------------------------------

def test_cache_hit_returns_identical_items_and_skips_tokenization(tokenizer, mixed, cache_on, monkeypatch):
    t = get_template("llama2_chat")
    first, rep1 = tokenize_examples(mixed, t, tokenizer, MAX_LEN)
    files = list(cache_on.glob("*.npz"))
    assert len(files) == 1 and not list(cache_on.glob("*.tmp"))  # written, atomically

    def boom(*a, **k):
        raise AssertionError("tokenized on a cache hit")

    monkeypatch.setattr(type(tokenizer), "__call__", boom)
    monkeypatch.setattr(Template, "render", boom)
    monkeypatch.setattr(Template, "text_renderer", boom)
    again, rep2 = tokenize_examples(mixed, t, tokenizer, MAX_LEN)
    _same(first, again)
    assert rep2 == rep1 and rep2.examples_dropped == rep1.examples_dropped
    assert all(x.input_ids.dtype == np.int32 for x in again)


def test_cache_key_covers_records_template_tokenizer_and_max_len(tokenizer, mixed):
    t = get_template("chatml")
    k = cache_key(mixed, t, tokenizer, MAX_LEN)
    assert k == cache_key(list(mixed), t, tokenizer, MAX_LEN)
    assert k != cache_key(mixed, t, tokenizer, MAX_LEN + 1)
    assert k != cache_key(mixed, get_template("vicuna_v1.1"), tokenizer, MAX_LEN)
    assert k != cache_key(mixed[:-1], t, tokenizer, MAX_LEN)
    edited = [Example([{**m, "content": m["content"] + "!"} for m in mixed[0].messages], mixed[0].source,
                      mixed[0].index)] + mixed[1:]
    assert k != cache_key(edited, t, tokenizer, MAX_LEN)
    renumbered = [Example(mixed[0].messages, mixed[0].source, mixed[0].index + 1)] + mixed[1:]
    assert k != cache_key(renumbered, t, tokenizer, MAX_LEN)
    other = copy.deepcopy(tokenizer)
    other.add_tokens(["<|herd-test-token|>"])
    assert k != cache_key(mixed, t, other, MAX_LEN)  # another vocabulary


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "other_key"])
def test_corrupt_cache_file_is_ignored_and_rebuilt(tokenizer, mixed, cache_on, damage, capsys):
    t = get_template("gorilla")
    first, rep1 = tokenize_examples(mixed, t, tokenizer, MAX_LEN)
    (path,) = cache_on.glob("*.npz")
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file" * 100)
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a complete file of another input under this name
        tokenize_examples(mixed[:50], t, tokenizer, MAX_LEN)
        (other,) = [p for p in cache_on.glob("*.npz") if p != path]
        path.write_bytes(other.read_bytes())
    again, rep2 = tokenize_examples(mixed, t, tokenizer, MAX_LEN)
    _same(first, again)
    assert rep2 == rep1
    assert "ignoring the unreadable tokenized cache" in capsys.readouterr().err
    hit, _ = tokmod._load(path, path.stem)  # rewritten: a valid file again
    _same(first, hit)


def test_no_cache_env_disables_it(tokenizer, mixed, cache_on, monkeypatch):
    monkeypatch.setenv("HERD_NO_CACHE", "1")
    tokenize_examples(mixed[:20], get_template("alpaca"), tokenizer, MAX_LEN)
    assert not cache_on.exists() or not list(cache_on.iterdir())
    tokenize_examples(mixed[:20], get_template("alpaca"), tokenizer, MAX_LEN, cache=True)  # explicit wins
    assert len(list(cache_on.glob("*.npz"))) == 1
    monkeypatch.delenv("HERD_NO_CACHE")
    tokenize_examples(mixed[:21], get_template("alpaca"), tokenizer, MAX_LEN, cache=False)
    assert len(list(cache_on.glob("*.npz"))) == 1


def test_empty_result_is_cached_too(tokenizer, cache_on):
    exs = [Example([{"role": "user", "content": "x \ue001"}, {"role": "assistant", "content": "y"}], "s", 0)]
    a = tokenize_examples(exs, get_template("alpaca"), tokenizer, 64)
    b = tokenize_examples(exs, get_template("alpaca"), tokenizer, 64)
    assert a[0] == b[0] == [] and a[1] == b[1] and a[1].dropped and len(list(cache_on.glob("*.npz"))) == 1


def test_unusable_cache_folder_only_costs_the_cache(tokenizer, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("HERD_CACHE", str(blocker))
    monkeypatch.delenv("HERD_NO_CACHE", raising=False)
    exs = [Example([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "s", 0)]
    items, rep = tokenize_examples(exs, get_template("alpaca"), tokenizer, 64)
    assert rep.kept == 1 and len(items) == 1
    assert "tokenized cache unavailable" in capsys.readouterr().err
