"""Scoring rejection sampling's K replies per prompt: each sequence whole (the path before) against
replies that share a prompt scored off one pass of it (``herd.engine.reward_model.score_shared``).

The workload is the llama2chat ``small`` profile's rejection stage: its first ``--prompts`` training
prompts (dpo_en_demo and hh-rlhf, rendered in the llama2_chat template), K replies each. Replies are
real text of the same length the stage samples: with ``--samples`` the stage's own cached samples
(``<run>/04-rejection-*.rs-work/samples.jsonl``), else assistant turns of other prompts (dpo_en_demo and
hh-rlhf transcripts) cut to the stage's ``max_new_tokens`` tokens. The reward model is SmolLM2 with a seeded random scalar head
in float32, as the stage loads its reward models (timing does not depend on the head's values).

Prints the machine, each path's seconds and scored tokens (tokens the model computed), the speed-up
(whole / shared, same process, alternating runs), the largest reward difference between the paths and
whether every prompt keeps the same best reply.

    .venv/bin/python bench/reward_scoring.py [--prompts 24] [--repeats 2] [--samples PATH]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8, help="sequences per forward (the stage's score_batch)")
    ap.add_argument("--samples", help="a rejection stage's samples.jsonl to take the replies from")
    args = ap.parse_args()

    import torch
    from transformers import LlamaForSequenceClassification

    from herd.base import load_tokenizer, resolve_base
    from herd.core.machine import cpu_summary
    from herd.core.recipe import load_recipe, recipe_path
    from herd.data.report import DataReport
    from herd.engine.logprobs import encode_reply
    from herd.engine.reward_model import (
        group_prefix_len,
        prompt_groups,
        reward_pad_id,
        score_encoded,
        score_shared,
    )
    from herd.stages.sampling import load_prompts, split_prompts
    from herd.templates import get_template

    recipe = load_recipe("llama2chat", profile="small")
    stage = next(s for s in recipe.stages if s.kind == "rejection_sampling")
    prompts, _ = load_prompts(stage.data, relative_to=recipe_path("llama2chat").parent, report=DataReport())
    train_p = split_prompts(prompts, stage)[0][: args.prompts]
    ref = resolve_base("smollm2")
    tok = load_tokenizer(ref)
    template = get_template(recipe.template)
    k = stage.k
    if args.samples:
        from pathlib import Path

        from herd.stages.rejection_sampling import _read_cache

        done = _read_cache(Path(args.samples), stage.gen_batch)  # either cache format
        replies = [done[i][0] for i in range(len(train_p))]
        source = f"the stage's samples ({args.samples})"
    else:
        pool = [p["messages"] for p in prompts]
        texts = [m["content"] for msgs in pool for m in msgs if m["role"] == "assistant"] or ["stone cloud " * 60]
        cut = [tok.decode(tok(t, add_special_tokens=False)["input_ids"][: stage.max_new_tokens]) for t in texts]
        replies = [[cut[(7 * i + j) % len(cut)] for j in range(k)] for i in range(len(train_p))]
        source = f"text of the prompts' earlier assistant turns, cut to {stage.max_new_tokens} tokens"
    seqs = [encode_reply(template, tok, p["messages"], r) for p, rs in zip(train_p, replies) for r in rs]
    groups, singles = prompt_groups(seqs)
    whole_tokens = sum(len(s) for s in seqs)
    shared_tokens = sum(len(seqs[i]) for i in singles)
    for g in groups:
        rows = [seqs[i].input_ids for i in g]
        p = group_prefix_len(rows)
        shared_tokens += p + sum(len(r) - p for r in rows)

    torch.manual_seed(0)
    model = LlamaForSequenceClassification.from_pretrained(str(ref.path), num_labels=1, dtype=torch.float32).eval()
    pad = reward_pad_id(tok)
    paths = {"whole": lambda: score_encoded(model, seqs, pad, args.batch),
             "shared": lambda: score_shared(model, seqs, pad, args.batch)}
    secs: dict[str, list[float]] = {n: [] for n in paths}
    out: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats):
        for name, fn in paths.items():
            t = time.perf_counter()
            out[name] = fn()
            secs[name].append(time.perf_counter() - t)
    print(cpu_summary())
    print(f"workload: {len(train_p)} prompts x K = {k} replies ({source}); {len(groups)} prompt groups, "
          f"{len(singles)} sequences scored alone; batch {args.batch}; float32")
    print(f"{'path':8} {'tokens computed':>16} {'seconds (best)':>15} {'seconds (all)':>24}")
    for name, toks in (("whole", whole_tokens), ("shared", shared_tokens)):
        print(f"{name:8} {toks:>16,} {min(secs[name]):>15.2f} {', '.join(f'{s:.2f}' for s in secs[name]):>24}")
    diff = float((out["whole"] - out["shared"]).abs().max())
    same_best = bool((out["whole"].view(-1, k).argmax(1) == out["shared"].view(-1, k).argmax(1)).all())
    print(f"speed-up whole/shared: {min(secs['whole']) / min(secs['shared']):.2f}x "
          f"(tokens {whole_tokens / shared_tokens:.2f}x); max |reward difference| {diff:.2e}; "
          f"same best reply for every prompt: {same_best}")


if __name__ == "__main__":
    main()
