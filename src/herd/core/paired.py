"""Paired statistics for parent vs derived: the same items scored by both models, so the question is the
distribution of the DIFFERENCE, not two overlapping intervals.

Every comparison gets a paired percentile bootstrap (items resampled jointly for both models, the
statistic recomputed on each resample: a mean, a token-weighted loss, an AUPRC) and, where the items
give a per-item difference, an exact two-sided sign test. A scorecard row carries ``delta`` (derived −
parent), ``ci95`` ([low, high] of that difference), ``n`` (items) and ``verdict``: ``better``/``worse``
only when the interval excludes 0, else ``no clear change``; below :data:`MIN_ITEMS` items no interval
and the verdict ``too few items``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

N_BOOT = 2000
SEED = 0
# Below 6 items no paired test can say anything at the 5 % level: a unanimous sign test on 5 items has
# two-sided p = 0.0625, and a percentile bootstrap of so few items draws its interval from a handful of
# distinct resamples (one item: every resample is that item, the "interval" a single point).
MIN_ITEMS = 6
TOO_FEW = "too few items"


def mean_stat(values: np.ndarray) -> float:
    return float(values.mean())


def ratio_stat(values: np.ndarray) -> float:
    """Σ numerator / Σ denominator over items given as rows ``(numerator, denominator)``: a token-weighted
    loss whose items are records of different lengths."""
    den = values[:, 1].sum()
    return float(values[:, 0].sum() / den) if den else math.nan


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """scikit-learn's ``average_precision_score`` (Σ (Rₙ − Rₙ₋₁)·Pₙ over distinct thresholds) in numpy,
    fast enough for thousands of bootstrap resamples; NaN without a positive."""
    y, s = np.asarray(y, dtype=float), np.asarray(s, dtype=float)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each distinct score
    tps = np.cumsum(y)[last]
    if len(tps) == 0 or tps[-1] == 0:
        return math.nan
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def auprc_stat(values: np.ndarray) -> float:
    """AUPRC of items given as rows ``(label, score)``."""
    return average_precision(values[:, 0], values[:, 1])


def macro_f1(gold: Sequence[int], pred: Sequence[int], n_classes: int) -> float:
    """Macro-averaged F1 over ``n_classes`` labels (scikit-learn's ``f1_score(average="macro")`` with
    ``labels=range(n_classes)``: a class never gold nor predicted scores 0, as the upstream PubMedQA scorer)."""
    return float(_macro_f1_rows(np.asarray(gold, dtype=int), np.asarray(pred, dtype=int)[None], n_classes)[0])


def _macro_f1_rows(gold: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """:func:`macro_f1` of each row of ``preds`` [k, n] against ``gold`` [n]."""
    if not n_classes:
        return np.full(len(preds), math.nan)
    f1s = []
    for c in range(n_classes):
        tp = ((preds == c) & (gold == c)).sum(axis=1)
        den = (preds == c).sum(axis=1) + int((gold == c).sum())
        f1s.append(np.divide(2 * tp, den, out=np.zeros(len(preds)), where=den > 0))
    return np.mean(f1s, axis=0)


def shuffled_chance(gold: Sequence[int], pred: Sequence[int], n_classes: int, *, n_perm: int = N_BOOT,
                    seed: int = SEED) -> dict:
    """What a model's answers score when they are NOT read off the items: its predictions shuffled over the
    items (``n_perm`` seeded permutations), so that each answer keeps its frequency and loses its item.

    Accuracy and macro-F1 can rise by moving towards the majority label alone; this is the level that
    answer mix reaches by chance, and the one-sided permutation p-value says whether the model's own
    pairing of answers to items beats it (the label prior a fine-tuned classifier learns first)."""
    g, p = np.asarray(gold, dtype=int), np.asarray(pred, dtype=int)
    if not len(g):
        return {}
    rng = np.random.default_rng(seed)
    perm = p[np.argsort(rng.random((n_perm, len(p))), axis=1)]  # each row a permutation of the answers
    acc, f1 = (perm == g).mean(axis=1), _macro_f1_rows(g, perm, n_classes)
    obs_acc, obs_f1 = float((p == g).mean()), macro_f1(g, p, n_classes)

    def summary(samples: np.ndarray, observed: float) -> dict:
        lo, hi = np.percentile(samples, [2.5, 97.5])
        return {"mean": round(float(samples.mean()), 4), "range95": [round(float(lo), 4), round(float(hi), 4)],
                "observed": round(observed, 4),
                "p": round(float((1 + (samples >= observed - 1e-12).sum()) / (1 + n_perm)), 4)}

    return {"accuracy": summary(acc, obs_acc), "macro_f1": summary(f1, obs_f1), "permutations": n_perm}


def macro_f1_stat(n_classes: int) -> Callable[[np.ndarray], float]:
    """Macro-F1 of items given as rows ``(gold, pred)``, for :func:`paired`."""
    def stat(values: np.ndarray) -> float:
        return macro_f1(values[:, 0], values[:, 1], n_classes)
    return stat


def sign_test(diffs: Sequence[float]) -> float | None:
    """Exact two-sided sign test of per-item differences (ties dropped); None without a non-tie."""
    d = np.asarray(diffs, dtype=float)
    pos, neg = int((d > 0).sum()), int((d < 0).sum())
    n = pos + neg
    if n == 0:
        return None
    k = min(pos, neg)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return float(f"{min(1.0, 2 * tail):.4g}")


def verdict(ci: Sequence[float] | None, better: str | None) -> str:
    """``better``/``worse`` when the interval of (derived − parent) excludes 0, else ``no clear change``."""
    if not ci or better not in ("higher", "lower"):
        return "no clear change"
    lo, hi = ci
    if lo > 0 or hi < 0:
        up = lo > 0
        return "better" if up == (better == "higher") else "worse"
    return "no clear change"


def paired(parent: Sequence, derived: Sequence, *, better: str, stat: Callable[[np.ndarray], float] = mean_stat,
           scale: float = 1.0, digits: int = 4, n_boot: int = N_BOOT, seed: int = SEED,
           confidence: float = 0.95, per_item_diff: bool | None = None) -> dict:
    """The paired comparison of ``derived`` against ``parent`` (same items, same order).

    ``stat`` maps an array of items (1-D values, or rows for ``ratio_stat``/``auprc_stat``) to the
    metric; ``scale`` multiplies the reported numbers (100 for percent). A sign test is added when the
    items are scalars (``per_item_diff``, default: 1-D input)."""
    p, d = np.asarray(parent, dtype=float), np.asarray(derived, dtype=float)
    if p.shape != d.shape:
        raise ValueError(f"paired: parent has {p.shape} items, derived {d.shape}")
    n = len(p)
    out: dict = {"n": int(n), "delta": None, "ci95": None, "verdict": "no clear change",
                 "ci_method": f"paired percentile bootstrap over items ({n_boot} resamples)"}
    if n == 0:
        return out
    delta = stat(d) - stat(p)
    out["delta"] = None if math.isnan(delta) else round(scale * delta, digits)
    if per_item_diff if per_item_diff is not None else p.ndim == 1:
        out["sign_test_p"] = sign_test(d - p)
    if n < MIN_ITEMS:
        out["verdict"] = TOO_FEW
        out["ci_method"] = (f"none: {n} item(s), fewer than {MIN_ITEMS}, on which no paired test can reach "
                            "two-sided p < 0.05")
        return out
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (n_boot, n))
    if stat is mean_stat:
        boots = d[idx].mean(axis=1) - p[idx].mean(axis=1)
    else:
        boots = np.array([stat(d[i]) - stat(p[i]) for i in idx])
    boots = boots[~np.isnan(boots)]
    if len(boots) >= n_boot // 2:  # resamples without a positive (AUPRC) are dropped, not zeroed
        lo, hi = np.percentile(boots, [100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2])
        out["ci95"] = [round(scale * float(lo), digits), round(scale * float(hi), digits)]
    out["verdict"] = verdict(out["ci95"], better)
    return out


def mean_ci(values: Sequence[float], *, n_boot: int = N_BOOT, seed: int = SEED, confidence: float = 0.95,
            digits: int = 4) -> list[float] | None:
    """Percentile bootstrap CI of one model's mean (an accuracy against chance, not a comparison)."""
    v = np.asarray(values, dtype=float)
    if not len(v):
        return None
    means = v[np.random.default_rng(seed).integers(0, len(v), (n_boot, len(v)))].mean(axis=1)
    lo, hi = np.percentile(means, [100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2])
    return [round(float(lo), digits), round(float(hi), digits)]


def with_paired(row: dict, parent: Sequence, derived: Sequence, **kw) -> dict:
    """A scorecard row with its paired comparison added (``better`` taken from the row)."""
    return {**row, **paired(parent, derived, better=row["better"], **kw)}


def headline(metrics: list[dict]) -> dict | None:
    """The recipe's defining metric (its first row) in the shape scorecard.json promises."""
    if not metrics:
        return None
    m = metrics[0]
    return {"name": m["task"], "parent": m["parent"], "derived": m["derived"], "better": m.get("better"),
            "delta": m.get("delta"), "ci95": m.get("ci95"), "n": m.get("n"), "verdict": m.get("verdict"),
            "dataset": m.get("dataset")}


def fmt_delta(m: dict) -> str:
    """``+0.012 [0.004, 0.020]`` for a markdown table; ``–`` without a paired comparison."""
    if m.get("delta") is None:
        return "–"
    ci = m.get("ci95")
    return f"{m['delta']:+g}" + (f" [{ci[0]:g}, {ci[1]:g}]" if ci else "")
