"""Peak memory of shared-prefix SFT steps on the longest Llama Guard groups, one fresh process per setting.

The llamaguard tiny profile's training examples (moderation training split, augmented with layouts from a
pool of 12, up to 2,048 tokens) are grouped as its training groups them (global batch 16); the ``--groups``
groups with the longest members (where a run reaches its peak) are trained with the real SmolLM2 weights
through ``herd.engine.shared_prefix.train_shared_prefix`` (AdamW, bf16 autocast where native), once per
setting, each in its own process, so that one setting's freed memory cannot hide another's peak.
Settings: ``rows`` (micro_batch_rows: suffix micro-batches of rows x 2,048 padded tokens), ``recompute``
(0: none; 1: the prefix pass recomputed for its backward instead of kept, as gradient_checkpointing did
until 2026-12-04; 2: that and the suffixes' decoder layers checkpointed, what gradient_checkpointing does
now) and ``state``
(AdamW's moments fp32 or bf16). Prints the machine, each setting's peak RSS above the RSS before the
weights loaded, seconds per step and the first step's loss (equal across settings up to rounding), and
each peak's ratio to the first setting's (the baseline).

    .venv/bin/python bench/shared_prefix_memory.py [--groups 3] [--settings 2:0:fp32,1:0:fp32,1:1:fp32,1:1:bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def one(rows: int, recompute: int, state: str, groups: int) -> dict:
    """One setting, in this process (the child)."""
    import torch

    from herd.engine import shared_prefix

    shared_prefix.SUFFIX_CHECKPOINT = recompute >= 2

    from herd.base import load_model, load_tokenizer, resolve_base
    from herd.core.paths import shared_data_dir
    from herd.core.phases import current_rss_mb, process_peak_mb, reset_peak_rss, trim_heap
    from herd.data import load_examples
    from herd.data.tokenize import tokenize_examples
    from herd.engine.shared_prefix import plan_groups, train_shared_prefix
    from herd.engine.training import LoopConfig
    from herd.templates import get_template

    ref = resolve_base("smollm2")
    tok = load_tokenizer(ref)
    exs = load_examples(shared_data_dir() / "openai_moderation_train" / "moderation_train_1000.jsonl", "moderation",
                        split="train", test_size=250, dev_size=200, split_seed=42, taxonomy="llama_guard_v1",
                        augment=True, shuffle_codes=True, seed=42, layouts=12)  # the tiny profile's options
    items, _ = tokenize_examples(exs, get_template("llama_guard"), tok, 2048)
    longest = sorted(plan_groups(items, 16, seed=42), key=lambda g: -max(len(items[m]) for m in g.members))[:groups]
    chosen = [items[m] for g in longest for m in g.members]
    trim_heap()
    reset_peak_rss()
    base = current_rss_mb()
    torch.manual_seed(0)
    model = load_model(ref)
    cfg = LoopConfig(lr=5e-5, global_batch=16, micro_batch_rows=rows, row_len=2048, precision="auto",
                     gradient_checkpointing=recompute > 0, optimizer_state=state, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        result, report = train_shared_prefix(model, chosen, cfg, Path(tmp), pad_id=tok.pad_token_id)
        seconds = time.perf_counter() - t
    return {"peak_mb": process_peak_mb() - base, "s_per_step": seconds / result.steps, "steps": result.steps,
            "loss1": result.history[0]["loss"], "longest": max(len(it) for it in chosen),
            "prefix": report["mean_prefix_tokens"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--groups", type=int, default=3, help="the groups with the longest members, one step each")
    ap.add_argument("--settings", default="2:0:fp32,1:0:fp32,1:1:fp32,1:1:bf16",
                    help="rows:recompute:state, comma-separated; the first is the baseline")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        rows, rec, state = args.child.split(":")
        print(json.dumps(one(int(rows), int(rec), state, args.groups)))
        return
    from herd.core.machine import cpu_summary

    print(cpu_summary())
    out = []
    for s in args.settings.split(","):
        p = subprocess.run([sys.executable, __file__, "--groups", str(args.groups), "--child", s],
                           capture_output=True, text=True, check=True)
        out.append((s, json.loads(p.stdout.strip().splitlines()[-1])))
    first = out[0][1]
    print(f"{args.groups} groups of 16 with the longest members (up to {first['longest']} tokens; mean prefix "
          f"{first['prefix']} tokens), one step each")
    print(f"{'rows:recompute:state':<22} {'peak MB':>8} {'x base':>7} {'s/step':>7} {'loss step 1':>11}")
    for s, r in out:
        print(f"{s:<22} {r['peak_mb']:>8.0f} {r['peak_mb'] / first['peak_mb']:>7.2f} {r['s_per_step']:>7.1f} "
              f"{r['loss1']:>11.4f}")


if __name__ == "__main__":
    main()
