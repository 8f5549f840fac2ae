"""Peak memory of one reward-model step of the llama2chat tiny profile, one fresh process per setting.

The helpfulness reward model of ``recipes/llama2chat.yaml`` (profile tiny: real SmolLM2, dpo_en_demo
pairs up to 1,024 tokens a side, bf16 autocast where native) takes one optimizer step of 16 real pairs
through the stage itself (``herd.stages.reward_model.run_reward_model``), once per setting, each in its
own process so that one setting's freed memory cannot hide another's peak. Settings: ``micro_batch``
(pairs per forward/backward, each pair two sequences padded to the longest in the micro-batch) and
``gradient_checkpointing`` (each layer's activations recomputed in the backward). Prints the machine,
each setting's peak RSS above the RSS before the weights loaded, its ratio to the first setting's (the
baseline), the step's seconds and its loss (equal across settings up to rounding).

    .venv/bin/python bench/pair_memory.py [--settings 4:0,1:0,4:1,1:1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def one(micro_batch: int, checkpointing: bool) -> dict:
    """One setting, in this process (the child)."""
    from herd.base import resolve_base
    from herd.core.phases import current_rss_mb, process_peak_mb, reset_peak_rss, trim_heap
    from herd.core.recipe import load_recipe, recipe_path
    from herd.stages.reward_model import run_reward_model
    from herd.templates import get_template

    recipe = load_recipe("llama2chat", profile="tiny")
    stage = next(s for s in recipe.stages if s.name == "reward_helpful")
    # 24 pairs read, 16 of them within 1,024 tokens: one step of the profile's global batch
    stage = stage.model_copy(update={"eval_size": 0, "max_train_pairs": 24, "max_steps": 1, "checkpoint_every": 0,
                                     "micro_batch": micro_batch, "gradient_checkpointing": checkpointing})
    ref = resolve_base("smollm2")
    trim_heap()
    reset_peak_rss()
    base = current_rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        _, summary = run_reward_model(stage, ref, get_template(recipe.template), Path(tmp) / "rm", name="bench",
                                      recipe={"file": str(recipe_path("llama2chat")), "name": "llama2chat",
                                              "profile": "tiny"}, progress=False)
    return {"peak_mb": process_peak_mb() - base, "seconds": summary["seconds"], "loss": summary["first_loss"],
            "pairs": summary["train_pairs"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--settings", default="4:0,1:0,4:1,1:1",
                    help="micro_batch:gradient_checkpointing, comma-separated; the first is the baseline")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mb, gc = args.child.split(":")
        print(json.dumps(one(int(mb), gc == "1")))
        return
    from herd.core.machine import cpu_summary

    print(cpu_summary())
    out = []
    for s in args.settings.split(","):
        p = subprocess.run([sys.executable, __file__, "--child", s], capture_output=True, text=True, check=True)
        out.append((s, json.loads(p.stdout.strip().splitlines()[-1])))
    first = out[0][1]
    print(f"llama2chat tiny, reward_helpful: one step of 16 pairs (of the {first['pairs']} read within 1,024 tokens)")
    print(f"{'micro_batch:checkpointing':<26} {'peak MB':>8} {'x base':>7} {'s/step':>7} {'loss':>8}")
    for s, r in out:
        print(f"{s:<26} {r['peak_mb']:>8.0f} {r['peak_mb'] / first['peak_mb']:>7.2f} {r['seconds']:>7.1f} "
              f"{r['loss']:>8.4f}")


if __name__ == "__main__":
    main()
