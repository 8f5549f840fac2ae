"""A recipe file with a ``test`` profile small enough for a tiny-base derive in seconds (alpaca, 2 steps)."""

from __future__ import annotations

from pathlib import Path

import yaml

from herd.core.paths import repo_root


def tiny_alpaca_recipe(folder: Path, **extra) -> Path:
    """``folder/alpaca-test.yaml``: the alpaca recipe plus a ``test`` profile (24 records, 2 samples)."""
    raw = yaml.safe_load((repo_root() / "recipes" / "alpaca.yaml").read_text())
    raw["profiles"]["test"] = {"max_train_records": 24, "eval_size": 6,
                               "stages": {"sft": {"epochs": 1, "global_batch": 8, "lr": 1e-3, "max_len": 256,
                                                  "precision": "fp32", "compile": "off"}},
                               "evals": {"side_by_side": {"n": 2, "max_new_tokens": 8}}}
    raw.update(extra)
    path = folder / "alpaca-test.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path
