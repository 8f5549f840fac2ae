"""GAP-Replay mixture builder: token shares, determinism, upsampling report, bad shares."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from herd.core.errors import ConfigError
from herd.data.transforms.mixture import MixtureError, Source, mix_stream


class WordTokenizer:
    """One token per whitespace word (ids = word hashes mod 1000): fast and exact for share arithmetic."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [hash(w) % 1000 for w in text.split()]}


def _corpus(name: str, n_docs: int, lo: int, hi: int, seed: int) -> list[str]:
    rng = random.Random(f"{name}{seed}")
    return [" ".join(f"{name}{i}w{j}" for j in range(rng.randint(lo, hi))) for i in range(n_docs)]


SHORT = _corpus("short", 3000, 3, 30, 0)  # ~50k tokens in tiny documents
MEDIUM = _corpus("medium", 300, 100, 400, 0)  # ~75k tokens
LONG = _corpus("long", 40, 800, 3000, 0)  # ~75k tokens in a few huge documents
REPLAY = _corpus("replay", 500, 20, 200, 0)  # ~55k tokens


def _sources(shares: dict[str, float]) -> list[Source]:
    data = {"short": SHORT, "medium": MEDIUM, "long": LONG, "replay": REPLAY}
    return [Source(name, (lambda d=data[name]: iter(d)), share) for name, share in shares.items()]


def _realised(stream) -> tuple[Counter, list[tuple[str, int]]]:
    tokens: Counter = Counter()
    seq = []
    for name, ids in stream:
        tokens[name] += len(ids)
        seq.append((name, len(ids)))
    return tokens, seq


SHARES = {"short": 0.3, "medium": 0.25, "long": 0.44, "replay": 0.01}


@pytest.mark.parametrize("total", [None, 60_000, 400_000])
def test_realised_token_shares_match_targets_within_one_percent(total):
    stream = mix_stream(_sources(SHARES), WordTokenizer(), total_tokens=total, seed=3)
    tokens, seq = _realised(stream)
    all_tokens = sum(tokens.values())
    target_sum = sum(SHARES.values())
    for name, share in SHARES.items():
        realised = tokens[name] / all_tokens
        assert abs(realised - share / target_sum) < 0.01, (name, realised, share)
    rep = stream.report
    assert rep.total_tokens == all_tokens and rep.total_docs == len(seq)
    for s in rep.sources:  # the report is exact: the plan counts what the stream yields
        assert s.tokens == tokens[s.name]
        assert abs(s.realised_share - s.target_share) < 0.01
        longest = max(len(d.split()) for d in {"short": SHORT, "medium": MEDIUM, "long": LONG, "replay": REPLAY}[s.name])
        assert abs(s.tokens - s.target_tokens) <= longest  # within one document of the target
    if total is not None:
        assert abs(all_tokens - total) / total < 0.03
    # interleaved by deficit: the shares already hold over the first quarter of the stream
    head = Counter()
    budget = all_tokens // 4
    for name, n in seq:
        if sum(head.values()) >= budget:
            break
        head[name] += n
    for name in ("short", "medium"):
        assert abs(head[name] / sum(head.values()) - SHARES[name]) < 0.05


def test_default_total_repeats_no_source_and_binding_source_is_used_once():
    stream = mix_stream(_sources({"short": 0.5, "long": 0.5}), WordTokenizer(), seed=0)
    rep = {s["name"]: s for s in stream.report.as_dict()["sources"]}
    short_tokens = sum(len(d.split()) for d in SHORT)
    assert rep["short"]["tokens_available"] == short_tokens
    assert rep["short"]["epochs"] == 1.0 and not rep["short"]["upsampled"]  # short binds (fewer tokens)
    assert rep["long"]["epochs"] < 1.0 and rep["long"]["subsampled"]
    assert all(s["epochs"] <= 1.0 for s in rep.values())
    assert stream.report.as_dict()["total"].startswith("largest total")


def test_deterministic_given_the_seed_and_seed_changes_the_subsample():
    a = list(mix_stream(_sources(SHARES), WordTokenizer(), total_tokens=50_000, seed=7))
    b = list(mix_stream(_sources(SHARES), WordTokenizer(), total_tokens=50_000, seed=7))
    c = list(mix_stream(_sources(SHARES), WordTokenizer(), total_tokens=50_000, seed=8))
    assert a == b
    assert a != c
    stream = mix_stream(_sources(SHARES), WordTokenizer(), total_tokens=50_000, seed=7)
    assert list(stream) == list(stream) == a  # re-iterating replays the same sequence


def test_upsampling_repeats_whole_passes_and_reports_epochs():
    # replay has ~55k tokens; ask for 50% of 400k = 200k → ~3.6 epochs
    stream = mix_stream(_sources({"medium": 0.5, "replay": 0.5}), WordTokenizer(), total_tokens=400_000, seed=1)
    rep = {s.name: s for s in stream.report.sources}
    replay = rep["replay"]
    assert replay.full_passes == 3 and 3.4 < replay.epochs < 3.9
    assert replay.as_dict()["upsampled"] and not replay.as_dict()["subsampled"]
    counts = Counter(tuple(ids) for name, ids in stream if name == "replay")
    assert min(counts.values()) == 3 and max(counts.values()) == 4  # every doc 3×, a subsample a 4th time
    assert sum(counts.values()) == replay.docs
    md = stream.report.markdown()
    assert "| replay | 50.00% |" in md and "epochs" in md
    d = stream.report.as_dict()
    assert d["total"] == "given" and {s["name"] for s in d["sources"]} == {"medium", "replay"}


def test_doc_overhead_counts_the_eos_the_caller_appends():
    stream = mix_stream(_sources({"short": 0.5, "long": 0.5}), WordTokenizer(), total_tokens=40_000, seed=0,
                        doc_overhead=1)
    tokens = Counter()
    for name, ids in stream:
        tokens[name] += len(ids) + 1
    assert abs(tokens["short"] / sum(tokens.values()) - 0.5) < 0.01
    assert stream.report.total_tokens == sum(tokens.values())


def test_zero_share_source_is_left_out_and_empty_documents_are_skipped():
    docs = ["", "a b c", "", "d e"]
    stream = mix_stream([Source("x", lambda: docs, 1.0), Source("off", lambda: SHORT, 0.0)], WordTokenizer())
    assert list(stream) == [("x", [hash(w) % 1000 for w in "a b c".split()]), ("x", [hash(w) % 1000 for w in "d e".split()])]
    assert [s.name for s in stream.report.sources] == ["x"]
    assert stream.report.as_dict()["empty_docs_skipped"] == {"x": 2}


@pytest.mark.parametrize("shares, match", [
    ({"short": 0.5, "long": -0.1}, "source 'long' has share -0.1"),
    ({"short": 0.0, "long": 0.0}, "all shares are zero.*'short'.*'long'"),
    ({"short": float("nan"), "long": 1.0}, "source 'short' has share nan"),
    ({"short": "lots", "long": 1.0}, "source 'short' has share 'lots', not a number"),
])
def test_bad_shares_name_the_source(shares, match):
    with pytest.raises(MixtureError, match=match) as e:
        mix_stream(_sources(shares), WordTokenizer())
    assert isinstance(e.value, ValueError) and isinstance(e.value, ConfigError)


def test_bad_mixtures_name_the_source():
    with pytest.raises(MixtureError, match="source 'dup' appears twice"):
        mix_stream([Source("dup", lambda: SHORT, 1), Source("dup", lambda: LONG, 1)], WordTokenizer())
    with pytest.raises(MixtureError, match="source 'empty' has share 1 but no tokens"):
        mix_stream([Source("empty", lambda: ["", ""], 1), Source("short", lambda: SHORT, 1)], WordTokenizer())
    with pytest.raises(MixtureError, match="total_tokens must be positive"):
        mix_stream(_sources({"short": 1}), WordTokenizer(), total_tokens=0)
    with pytest.raises(MixtureError, match="no sources"):
        mix_stream([], WordTokenizer())


def test_a_stream_that_changes_between_passes_is_refused():
    calls = {"n": 0}

    def unstable():
        calls["n"] += 1
        return SHORT[:50] if calls["n"] == 1 else SHORT[:40]

    stream = mix_stream([Source("flaky", unstable, 1.0)], WordTokenizer())
    with pytest.raises(MixtureError, match="source 'flaky' yielded 40 documents, 50 when counted"):
        list(stream)


def test_real_tokenizer_on_replay_text(tokenizer):
    """With SmolLM2's tokenizer, the token ids are the tokenizer's own (no special tokens added)."""
    docs = [d[:400] for d in MEDIUM[:60]]
    stream = mix_stream([Source("a", lambda: docs[:30], 0.7), Source("b", lambda: docs[30:], 0.3)], tokenizer,
                        total_tokens=5_000, seed=0)
    encoded = {name: {tuple(tokenizer(d, add_special_tokens=False)["input_ids"]) for d in part}
               for name, part in (("a", docs[:30]), ("b", docs[30:]))}
    tokens = Counter()
    for name, ids in stream:
        assert tuple(ids) in encoded[name]
        tokens[name] += len(ids)
    assert abs(tokens["a"] / sum(tokens.values()) - 0.7) < 0.02
