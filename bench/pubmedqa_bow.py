"""How much of PubMedQA's label is in the words: a bag-of-words baseline on the 500 non-test PQA-L questions.

Why: Meditron's per-benchmark fine-tuning (recipes/meditron.yaml, stage pubmedqa_sft) trains SmolLM2 on
400 of these questions and has so far only learned the "yes" prior. This asks whether 400 expert-labelled
questions carry a label signal that a simple model can learn at all: tf-idf weighted word presence over
question + abstract, a softmax regression (numpy, L2), 5-fold cross-validation over the 500 questions
(never the 500 test questions), accuracy and macro-F1 beside the always-"yes" baseline.

    python bench/pubmedqa_bow.py
"""

from __future__ import annotations

import collections
import json
import random
import re

import numpy as np

from herd.core.paired import macro_f1
from herd.core.paths import shared_data_dir

LABELS = ["yes", "no", "maybe"]


def _fit(x: np.ndarray, y: np.ndarray, lam: float, iters: int = 300, lr: float = 2.0):
    w, b, onehot = np.zeros((x.shape[1], 3)), np.zeros(3), np.eye(3)[y]
    for _ in range(iters):
        z = x @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        w -= lr * (x.T @ (p - onehot) / len(y) + lam * w)
        b -= lr * (p - onehot).mean(0)
    return w, b


def _scores(pred: np.ndarray, gold: np.ndarray) -> tuple[float, float]:
    return float((pred == gold).mean()), macro_f1(gold, pred, 3)


def main() -> None:
    root = shared_data_dir() / "pubmedqa"
    data = json.loads((root / "ori_pqal.json").read_text())
    test = set(json.loads((root / "test_ground_truth.json").read_text()))
    pool = [v for k, v in sorted(data.items()) if k not in test]
    random.Random(0).shuffle(pool)
    docs = [re.findall(r"[a-z]+", (v["QUESTION"] + " " + " ".join(v["CONTEXTS"])).lower()) for v in pool]
    y = np.array([LABELS.index(v["final_decision"]) for v in pool])
    df = collections.Counter(w for d in docs for w in set(d))
    vocab = {w: i for i, w in enumerate(w for w, c in df.items() if c >= 3)}
    x = np.zeros((len(docs), len(vocab)))
    for i, d in enumerate(docs):
        for w in d:
            if w in vocab:
                x[i, vocab[w]] = 1.0
    x *= np.log(len(docs) / np.array([df[w] for w in vocab]))
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-9
    fold = len(pool) // 5
    print(f"{len(pool)} non-test PQA-L questions ({(y == 0).mean():.3f} yes), {len(vocab)} words, 5-fold CV")
    print(f"{'model':<28} {'accuracy':>8} {'macro-F1':>8}")
    for lam in (1e-4, 1e-3, 1e-2):
        res = []
        for f in range(5):
            te = np.arange(f * fold, (f + 1) * fold)
            tr = np.setdiff1d(np.arange(len(pool)), te)
            w, b = _fit(x[tr], y[tr], lam)
            res.append(_scores((x[te] @ w + b).argmax(1), y[te]))
        acc, f1 = np.mean(res, 0)
        print(f"{'bag of words, L2 ' + format(lam, 'g'):<28} {acc:>8.3f} {f1:>8.3f}")
    acc, f1 = _scores(np.zeros_like(y), y)
    print(f"{'always yes':<28} {acc:>8.3f} {f1:>8.3f}")


if __name__ == "__main__":
    main()
