"""Shared-prefix SFT vs packed SFT on Llama Guard training examples: time per example, same gradients.

The examples are the llamaguard tiny profile's (the moderation training split, augmented with layouts
from a pool of 12, rows up to 1,024 tokens), tokenized once. Both paths train the real SmolLM2 weights
on the SAME groups of ``--group`` examples (the shared-prefix plan's groups), forward and backward, in
the loop's precision (bf16 autocast where the CPU has native bf16):
- packed (baseline): the examples best-fit packed into rows of 1,024 tokens, ``MaskedLMLoss`` over
  micro-batches of ``--rows`` rows (what ``herd.engine.training.train`` does);
- shared prefix: ``herd.engine.shared_prefix.group_step`` (the prefix once, suffixes in micro-batches of
  ``--rows`` x 1,024 padded tokens).
Each group's loss is checked equal between the two (relative 2e-2: bf16 rounding differs). Prints the
machine, examples/s and useful tokens/s of each, the ratio shared/packed, tokens computed, and peak RSS.

    .venv/bin/python bench/shared_prefix.py [--groups 4] [--group 16] [--rows 2]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from herd.base import load_model, load_tokenizer, resolve_base  # noqa: E402
from herd.core.machine import cpu_summary  # noqa: E402
from herd.core.paths import shared_data_dir  # noqa: E402
from herd.core.phases import PhaseLog, record, release_memory  # noqa: E402
from herd.data import load_examples  # noqa: E402
from herd.data.packing import make_batch  # noqa: E402
from herd.data.tokenize import tokenize_examples  # noqa: E402
from herd.engine.shared_prefix import group_step, plan_groups  # noqa: E402
from herd.engine.training import MaskedLMLoss, autocast  # noqa: E402
from herd.templates import get_template  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--groups", type=int, default=4, help="groups (steps) timed per path")
    ap.add_argument("--group", type=int, default=16, help="examples per group (the global batch)")
    ap.add_argument("--rows", type=int, default=2, help="micro-batch rows of 1,024 tokens")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(cpu_summary())
    ref = resolve_base("smollm2")
    tok = load_tokenizer(ref)
    model = load_model(ref)
    model.train()
    exs = load_examples(shared_data_dir() / "openai_moderation_train" / "moderation_train_1000.jsonl", "moderation",
                        split="train", layouts=12)
    items, _ = tokenize_examples(exs, get_template("llama_guard"), tok, 1024)
    full = [g for g in plan_groups(items, args.group, seed=42) if len(g.members) == args.group]
    groups = full[:: max(1, len(full) // args.groups)][: args.groups]  # spread over layouts (prefix lengths)
    loss_fn = MaskedLMLoss(model)
    amp = lambda: autocast("auto")  # noqa: E731
    res = {}
    with PhaseLog() as log:
        for name in ("packed", "shared prefix"):
            release_memory()
            seconds, useful, computed, losses = 0.0, 0, 0, []
            with record(name):
                for g in groups:
                    members = [items[m] for m in g.members]
                    t = time.perf_counter()
                    if name == "packed":
                        batch = make_batch(members, 1024, tok.pad_token_id, pack=True)
                        total = 0.0
                        for r in range(0, batch.input_ids.shape[0], args.rows):
                            sl = slice(r, r + args.rows)
                            with amp():
                                loss = loss_fn(batch.input_ids[sl], batch.position_ids[sl], batch.labels[sl])
                            (loss / batch.n_trained).backward()
                            total += float(loss.detach())
                        n, comp = batch.n_trained, int(batch.input_ids.numel())
                    else:
                        total, n, comp = group_step(model, items, g, tok.pad_token_id,
                                                    micro_tokens=args.rows * 1024, amp=amp)
                    seconds += time.perf_counter() - t
                    model.zero_grad(set_to_none=True)
                    useful += sum(len(it) for it in members)
                    computed += comp
                    losses.append(total / n)
            res[name] = (seconds, useful, computed, losses)
    peaks = {row["phase"]: row["peak_rss_mb"] for row in log.as_list()}
    for a, b in zip(res["packed"][3], res["shared prefix"][3]):
        assert abs(a - b) <= 2e-2 * abs(a) + 1e-3, f"group loss differs: packed {a:.4f} vs shared {b:.4f}"
    n_ex = len(groups) * args.group
    print(f"{len(groups)} groups x {args.group} examples, mean prefix "
          f"{sum(g.prefix for g in groups) / len(groups):.0f} tokens; losses equal within bf16 rounding")
    print(f"{'path':<14} {'examples/s':>10} {'useful tok/s':>12} {'tokens computed':>15} {'peak RSS MB':>11}")
    for name, (sec, useful, comp, _) in res.items():
        print(f"{name:<14} {n_ex / sec:>10.2f} {useful / sec:>12.0f} {comp:>15,} {peaks.get(name, 0):>11.0f}")
    print(f"ratio shared/packed: {res['packed'][0] / res['shared prefix'][0]:.2f}x examples/s")


if __name__ == "__main__":
    main()
