"""Peak memory of one pair-stage step of the llama2chat tiny profile, one fresh process per setting.

The helpfulness reward model (``--stage reward_helpful``) or the DPO stage (``--stage dpo``) of
``recipes/llama2chat.yaml`` (profile tiny: real SmolLM2, dpo_en_demo pairs up to 1,024 tokens a side,
bf16 autocast where native) takes one optimizer step of real pairs (16 for the reward model, 8 for DPO:
each profile's global batch) through the stage itself, once per setting, each in its own process so
that one setting's freed memory cannot hide another's peak. Settings ``micro_batch:checkpointing[:variant]``:
pairs per forward/backward (each pair two sequences padded to the longest in the micro-batch), each
layer's activations recomputed in the backward (1) or kept (0); and a variant: ``full`` (DPO) the LM
head as full logits instead of over the labelled positions in chunks (the default), ``shared`` each pair's
prompt once for both replies (``shared_prompt: true``) instead of both sequences whole (the default);
``+`` joins two. ``--rounds N`` runs the settings N times, alternating, and prints each round.
Prints the machine, each setting's peak RSS above the RSS before the weights loaded, its ratio to the
first setting's (the baseline), the step's seconds and its loss (equal across settings up to rounding;
DPO's first loss is log 2 by construction, so its bench prints the step's gradient norm instead).

    .venv/bin/python bench/pair_memory.py [--stage reward_helpful] [--settings 4:0,1:0,4:1,1:1]
    .venv/bin/python bench/pair_memory.py --stage dpo --settings 1:0:full,1:0:chunked,1:1:chunked
    .venv/bin/python bench/pair_memory.py [--stage dpo] --settings 1:1,1:1:shared --rounds 2
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


def one(stage_name: str, micro_batch: int, checkpointing: bool, variant: str) -> dict:
    """One setting, in this process (the child)."""
    import herd.engine.logprobs as logprobs
    from herd.base import resolve_base
    from herd.core.phases import current_rss_mb, process_peak_mb, reset_peak_rss, trim_heap
    from herd.core.recipe import load_recipe, recipe_path
    from herd.stages.dpo import run_dpo
    from herd.stages.reward_model import run_reward_model
    from herd.templates import get_template

    logprobs.CHUNKED_HEAD = "full" not in variant
    recipe = load_recipe("llama2chat", profile="tiny")
    stage = next(s for s in recipe.stages if s.name == stage_name)
    # 24 pairs read, 16 of them within 1,024 tokens: one step of the reward model's global batch (DPO: 8)
    stage = stage.model_copy(update={"eval_size": 0, "max_train_pairs": 24, "max_steps": 1, "checkpoint_every": 0,
                                     "micro_batch": micro_batch, "gradient_checkpointing": checkpointing,
                                     "shared_prompt": "shared" in variant})
    run = run_dpo if stage.kind == "dpo" else run_reward_model
    ref = resolve_base("smollm2")
    trim_heap()
    reset_peak_rss()
    base = current_rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        _, summary = run(stage, ref, get_template(recipe.template), Path(tmp) / "out", name="bench",
                         recipe={"file": str(recipe_path("llama2chat")), "name": "llama2chat", "profile": "tiny"},
                         progress=False)
        loss = summary["first_loss"]
        if stage.kind == "dpo":  # its first loss is log 2 whatever the setting: compare the gradient instead
            rows = [json.loads(x) for x in (Path(tmp) / "out" / "metrics.jsonl").read_text().splitlines()]
            loss = rows[0]["grad_norm"]
    return {"peak_mb": process_peak_mb() - base, "seconds": summary["seconds"], "loss": loss,
            "pairs": summary["train_pairs"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", default="reward_helpful", choices=["reward_helpful", "dpo"])
    ap.add_argument("--settings", default="4:0,1:0,4:1,1:1",
                    help="micro_batch:gradient_checkpointing[:variant: full (dpo's head), shared (shared_prompt)], "
                         "comma-separated; the first is the baseline")
    ap.add_argument("--rounds", type=int, default=1, help="run the settings this many times, alternating")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mb, gc, variant = ([*args.child.split(":"), ""])[:3]
        print(json.dumps(one(args.stage, int(mb), gc == "1", variant)))
        return
    from herd.core.machine import cpu_summary

    print(cpu_summary())
    out = []
    for _ in range(args.rounds):
        for s in args.settings.split(","):
            p = subprocess.run([sys.executable, __file__, "--stage", args.stage, "--child", s], capture_output=True,
                               text=True, check=True)
            out.append((s, json.loads(p.stdout.strip().splitlines()[-1])))
    first = out[0][1]
    batch = 8 if args.stage == "dpo" else 16
    print(f"llama2chat tiny, {args.stage}: one step of {batch} pairs (of the {first['pairs']} read within 1,024 "
          "tokens)")
    last = "grad norm" if args.stage == "dpo" else "loss"
    print(f"{'micro_batch:checkpointing':<26} {'peak MB':>8} {'x base':>7} {'s/step':>7} {'x base':>7} {last:>8}")
    n = len(args.settings.split(","))
    for i, (s, r) in enumerate(out):  # each round's ratios against that round's baseline
        base = out[i - i % n][1]
        print(f"{s:<26} {r['peak_mb']:>8.0f} {r['peak_mb'] / base['peak_mb']:>7.2f} {r['seconds']:>7.1f} "
              f"{base['seconds'] / r['seconds']:>6.2f}x {r['loss']:>8.4f}")


if __name__ == "__main__":
    main()
