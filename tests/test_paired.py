"""Paired parent-vs-derived statistics: the numbers a scorecard's headline and every comparison carry."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from herd.core.paired import (
    MIN_ITEMS,
    auprc_stat,
    average_precision,
    headline,
    macro_f1,
    mean_ci,
    paired,
    ratio_stat,
    shuffled_chance,
    sign_test,
    verdict,
)


def test_average_precision_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(3)
    for _ in range(20):
        y = rng.integers(0, 2, 60)
        s = rng.integers(0, 8, 60) / 8  # many ties: the step function must group them as sklearn does
        assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert math.isnan(average_precision(np.zeros(5), np.arange(5)))


def test_paired_mean_finds_a_real_gain_and_no_gain_in_noise():
    rng = np.random.default_rng(0)
    parent = rng.integers(0, 2, 300).astype(float)
    derived = parent.copy()
    flip = rng.choice(np.flatnonzero(parent == 0), 40, replace=False)  # 40 items fixed, none broken
    derived[flip] = 1
    out = paired(parent, derived, better="higher")
    assert out["n"] == 300 and out["delta"] == pytest.approx(40 / 300, abs=1e-4)
    assert 0 < out["ci95"][0] < out["delta"] < out["ci95"][1]
    assert out["verdict"] == "better"
    assert out["sign_test_p"] == pytest.approx(2 / 2 ** 40, rel=1e-3)
    # the same gain is "worse" when lower is better; pure noise is "no clear change"
    assert paired(parent, derived, better="lower")["verdict"] == "worse"
    noise = paired(rng.integers(0, 2, 300), rng.integers(0, 2, 300), better="higher")
    assert noise["ci95"][0] < 0 < noise["ci95"][1] and noise["verdict"] == "no clear change"


def test_paired_bootstrap_resamples_items_jointly():
    """Large per-item spread but an identical shift: unpaired intervals would overlap, the paired one is tight."""
    rng = np.random.default_rng(1)
    parent = rng.normal(0, 10, 200)
    out = paired(parent, parent - 0.5, better="lower")
    assert out["ci95"] == [-0.5, -0.5] and out["verdict"] == "better"


def test_ratio_and_auprc_statistics_are_recomputed_per_resample():
    # token-weighted loss: a long record counts by its tokens, not as one item
    p = np.array([[10.0, 10], [1.0, 1], [30.0, 10]])
    assert ratio_stat(p) == pytest.approx(41 / 21)
    d = p.copy()
    d[:, 0] *= 0.5
    out = paired(p, d, better="lower", stat=ratio_stat)
    assert out["delta"] == pytest.approx(-41 / 42, abs=1e-4) and "sign_test_p" not in out
    y = np.array([1, 0, 1, 0, 1, 0, 0, 0] * 10)
    good, bad = y + np.linspace(0, 0.5, len(y)), np.linspace(0, 1, len(y))
    out = paired(np.c_[y, bad], np.c_[y, good], better="higher", stat=auprc_stat)
    assert out["delta"] == pytest.approx(1 - average_precision_score(y, bad), abs=1e-4)
    assert out["verdict"] == "better"


def test_sign_test_verdict_headline_and_shape_errors():
    assert sign_test([0, 0]) is None
    assert sign_test([1, -1, 1, -1]) == 1.0
    assert sign_test([1] * 5 + [-1]) == pytest.approx(2 * 7 / 64, rel=1e-3)
    assert verdict([-0.2, 0.1], "higher") == "no clear change" and verdict(None, "higher") == "no clear change"
    assert verdict([-0.3, -0.1], "lower") == "better"
    assert mean_ci([1, 1, 1]) == [1.0, 1.0]
    with pytest.raises(ValueError, match="parent has"):
        paired([1, 2], [1, 2, 3], better="higher")
    row = {"task": "t", "parent": 0.5, "derived": 0.6, "better": "higher", "dataset": "d",
           **paired([0, 1, 0, 1, 0, 1], [1, 1, 1, 1, 1, 1], better="higher")}
    h = headline([row])
    assert {k: h[k] for k in ("name", "parent", "derived", "better", "n")} == \
        {"name": "t", "parent": 0.5, "derived": 0.6, "better": "higher", "n": 6}
    assert h["delta"] == 0.5 and len(h["ci95"]) == 2
    assert headline([]) is None


def test_heldout_loss_per_record_pairs_and_sums_to_the_total(tiny_model, tokenizer, alpaca_examples):
    """Per-record losses of the packed held-out pass add up to MaskedLMLoss's total, record by record."""
    import torch

    from herd.data.packing import make_batch
    from herd.data.tokenize import tokenize_examples
    from herd.engine.heldout import heldout_loss
    from herd.engine.training import MaskedLMLoss
    from herd.templates import get_template

    items, _ = tokenize_examples(alpaca_examples[:24], get_template("alpaca"), tokenizer, 256)
    res = heldout_loss(tiny_model, items, tokenizer.pad_token_id, row_len=256, rows_per_batch=2)
    assert len(res["per_record"]) == len(items)
    assert sorted(c for _, c in res["per_record"]) == sorted(int(it.n_targets) for it in items)
    assert sorted(res["order"]) == list(range(len(items)))  # order names each record's item
    assert [c for _, c in res["per_record"]] == [int(items[i].n_targets) for i in res["order"]]
    batch = make_batch(items, 256, tokenizer.pad_token_id, pack=True)
    with torch.no_grad():
        total = float(MaskedLMLoss(tiny_model, chunked=False)(batch.input_ids, batch.position_ids, batch.labels))
    assert sum(x for x, _ in res["per_record"]) == pytest.approx(total, rel=1e-4)
    assert res["loss"] == pytest.approx(total / batch.n_trained, rel=1e-4)


def test_too_few_items_get_no_interval_and_no_verdict():
    """One held-out item once got the "interval" [-0.24, -0.24] and the verdict "better" (Meditron's tiny
    card): below MIN_ITEMS no paired test can reach p < 0.05, so none is claimed."""
    assert sign_test([1] * (MIN_ITEMS - 1)) > 0.05 and sign_test([1] * MIN_ITEMS) < 0.05
    for n in (1, MIN_ITEMS - 1):
        out = paired([3.0] * n, [2.7] * n, better="lower")
        assert out["n"] == n and out["delta"] == pytest.approx(-0.3) and out["ci95"] is None
        assert out["verdict"] == "too few items" and "fewer than" in out["ci_method"]
        assert out["sign_test_p"] == sign_test([-0.3] * n)
    out = paired([3.0] * MIN_ITEMS, [2.7] * MIN_ITEMS, better="lower")
    assert out["ci95"] == [-0.3, -0.3] and out["verdict"] == "better"
    rows = np.array([[10.0, 10], [1.0, 1]])  # ratio statistics too
    assert paired(rows, rows * [0.5, 1], better="lower", stat=ratio_stat)["verdict"] == "too few items"


def test_shuffled_chance_separates_reading_from_the_label_prior():
    rng = np.random.default_rng(5)
    gold = rng.choice(3, 500, p=[0.55, 0.34, 0.11])
    # a model that answers "yes" (0) to 95 % of items, ignoring them: above the parent's accuracy by the prior only
    prior = np.where(rng.random(500) < 0.95, 0, 1)
    out = shuffled_chance(gold, prior, 3, n_perm=1000, seed=0)
    acc, f1 = out["accuracy"], out["macro_f1"]
    assert acc["observed"] == pytest.approx((prior == gold).mean(), abs=1e-4)
    assert f1["observed"] == pytest.approx(macro_f1(gold, prior, 3), abs=1e-4)
    expected = sum((prior == c).mean() * (gold == c).mean() for c in range(3))  # exact mean under permutation
    assert acc["mean"] == pytest.approx(expected, abs=0.003)
    assert acc["range95"][0] <= acc["observed"] <= acc["range95"][1] and acc["p"] > 0.05 and f1["p"] > 0.05
    # a model that reads: right on 40 % of the items it would otherwise guess, same kind of answer mix
    reads = np.where(rng.random(500) < 0.4, gold, prior)
    out = shuffled_chance(gold, reads, 3, n_perm=1000, seed=0)
    assert out["accuracy"]["p"] < 0.01 and out["macro_f1"]["p"] < 0.01
    assert out["accuracy"]["observed"] > out["accuracy"]["range95"][1]
    assert shuffled_chance([], [], 3) == {}
