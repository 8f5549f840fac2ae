"""Classification metrics of a guard (scikit-learn): precision, recall, F1 at a threshold chosen on the
dev split, and AUPRC (average precision, threshold-free), overall and per category; a PR-curve plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, precision_recall_fscore_support


def choose_threshold(y: np.ndarray, s: np.ndarray, default: float = 0.5) -> float:
    """The score threshold with the best F1 on (dev) labels ``y``; ``default`` when y has no positive."""
    y, s = np.asarray(y, dtype=int), np.asarray(s, dtype=float)
    if y.sum() == 0 or y.sum() == len(y):
        return default
    prec, rec, thr = precision_recall_curve(y, s)
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)[:-1]
    return float(thr[int(np.argmax(f1))])


def binary_metrics(y: np.ndarray, s: np.ndarray, threshold: float) -> dict:
    """P/R/F1 of ``s >= threshold`` and AUPRC of ``s`` against labels ``y`` (None where undefined)."""
    y, s = np.asarray(y, dtype=int), np.asarray(s, dtype=float)
    out = {"n": int(len(y)), "positives": int(y.sum()), "threshold": float(threshold),
           "precision": None, "recall": None, "f1": None, "auprc": None}
    if len(y) == 0:
        return out
    pred = (s >= threshold).astype(int)
    p, r, f, _ = precision_recall_fscore_support(y, pred, average="binary", zero_division=0)
    out.update(precision=float(p), recall=float(r), f1=float(f))
    if 0 < y.sum():
        out["auprc"] = float(average_precision_score(y, s))
    return out


def pr_points(y: np.ndarray, s: np.ndarray, max_points: int = 200) -> list[list[float]]:
    """The precision-recall curve as ``[[recall, precision], ...]`` (recall rising), thinned to about
    ``max_points`` (the ends kept) so a scorecard stays small; [] without a positive label."""
    y = np.asarray(y, dtype=int)
    if len(y) == 0 or y.sum() == 0:
        return []
    prec, rec, _ = precision_recall_curve(y, np.asarray(s, dtype=float))
    pts = [[round(float(r), 4), round(float(p), 4)] for r, p in zip(rec[::-1], prec[::-1])]
    if len(pts) > max_points:
        keep = np.unique(np.linspace(0, len(pts) - 1, max_points).round().astype(int))
        pts = [pts[i] for i in keep]
    return pts


def pr_curve_png(panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], path: str | Path, title: str
                 ) -> Path:
    """One panel per label set (binary, then each category), one curve per model in each, with the
    positive rate as the no-skill baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {k: v for k, v in panels.items() if any(np.asarray(y).sum() > 0 for y, _ in v.values())}
    cols = 2 if len(panels) in (2, 4) else min(3, max(1, len(panels)))
    rows = -(-max(1, len(panels)) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.0 * rows), dpi=100, squeeze=False)
    for ax, (panel, curves) in zip(axes.flat, panels.items()):
        base = None
        for label, (y, s) in curves.items():
            y = np.asarray(y, dtype=int)
            if y.sum() == 0:
                continue
            prec, rec, _ = precision_recall_curve(y, s)
            ax.step(rec, prec, where="post", label=f"{label} (AUPRC {average_precision_score(y, s):.3f})")
            base = y.mean()
        if base is not None:
            ax.axhline(base, color="grey", ls=":", lw=1, label=f"positive rate {base:.3f}")
        ax.set(xlabel="recall", ylabel="precision", title=panel, xlim=(0, 1), ylim=(0, 1.02))
        ax.legend(loc="upper right", fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
