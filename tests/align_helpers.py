"""Test helper: a toy alignment recipe (SFT records and separable preference pairs) in a folder.

Every chosen reply ends with the word "banana", so a reward model learns the pairs within a few steps."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

WORDS = "apple river stone cloud green quick table music paper light window summer".split()


def toy_recipe(folder: Path, stages: list[dict], *, name: str = "toy", evals: dict | None = None,
               template: str = "llama2_chat") -> Path:
    """``folder/NAME.yaml`` with ``stages``; ``sft.json`` (alpaca) and ``pairs.jsonl`` (preference) beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    pairs, sft = [], []
    for i in range(40):
        q = " ".join(WORDS[(i + j) % 12] for j in range(4))
        a = " ".join(WORDS[(3 * i + j) % 12] for j in range(5))
        pairs.append({"prompt": f"Tell me about {q} {i}", "chosen": f"{a} banana", "rejected": a})
        sft.append({"instruction": f"Tell me about {q} {i}", "input": "", "output": f"{a} banana"})
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    (folder / "sft.json").write_text(json.dumps(sft))
    recipe = {"name": name, "title": f"toy {name}", "method": "alignment stages", "dossier": "recipes.md §5",
              "paper_base": "Llama 2", "template": template, "eval_size": 4,
              "data": [{"name": "sft", "path": "sft.json", "format": "alpaca"}], "stages": stages,
              "evals": {"heldout_loss": {}, **(evals or {})}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path
