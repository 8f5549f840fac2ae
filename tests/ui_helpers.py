"""A recipe file with a ``test`` profile small enough for a tiny-base derive in seconds (alpaca, 2 steps)."""

from __future__ import annotations

from pathlib import Path

import yaml

from herd.core.paths import repo_root


def tiny_alpaca_recipe(folder: Path, **extra) -> Path:
    """``folder/alpaca-test.yaml``: the alpaca recipe plus a ``test`` profile (24 records, 2 samples)."""
    raw = yaml.safe_load((repo_root() / "recipes" / "alpaca.yaml").read_text())
    raw["profiles"]["test"] = {"max_train_records": 24, "eval_size": 6, "dev_size": 0,
                               "stages": {"sft": {"epochs": 1, "global_batch": 8, "lr": 1e-3, "max_len": 256,
                                                  "precision": "fp32", "compile": "off"}},
                               "evals": {"side_by_side": {"n": 2, "max_new_tokens": 8}, "mtbench_pairwise": {"enabled": False}}}
    raw.update(extra)
    path = folder / "alpaca-test.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def guard_scorecard(n: int = 80) -> dict:
    """A scorecard as the guard eval writes one (its own row and curve functions), over synthetic scores:
    a parent near chance and a derived model that separates the labels, overall and in two categories."""
    import numpy as np

    from herd.core.paired import headline
    from herd.evals.guard import GuardReport, metric_rows, pr_curves
    from herd.evals.guard_metrics import binary_metrics

    rng = np.random.default_rng(0)
    labels = {"unsafe (binary)": rng.integers(0, 2, n), "Violence and Hate": rng.integers(0, 2, n),
              "Criminal Planning": rng.integers(0, 2, n)}
    reports = {}
    for role, skill in (("parent", 0.1), ("derived", 0.7)):
        scores = {k: np.clip(skill * y + (1 - skill) * rng.random(n), 0, 1) for k, y in labels.items()}
        rep = GuardReport(overall=binary_metrics(labels["unsafe (binary)"], scores["unsafe (binary)"], 0.5),
                          curves={k: (labels[k], scores[k]) for k in labels})
        for k in list(labels)[1:]:
            rep.per_category[k] = binary_metrics(labels[k], scores[k], 0.5)
            rep.category_thresholds[k] = 0.5
        reports[role] = rep
    rows = metric_rows(reports, f"synthetic scores ({n} records)")
    return {"recipe": "llamaguard", "title": "Llama Guard (synthetic scores)", "profile": "test",
            "paper_base": "Llama 2 7B", "template": "llama_guard", "metrics": rows, "headline": headline(rows),
            "published": [], "deviations": ["synthetic scores written by a UI test"], "not_run": [], "samples": [],
            "extra": {"guard_pr_curves": pr_curves(reports)}, "sections": []}
