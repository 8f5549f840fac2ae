"""Rejection sampling's scoring arithmetic: the K samples of a finished stage rescored in fp32 and under
bf16 autocast (``score_precision: auto`` where the CPU has native bf16), one process.

The workload is a finished rejection stage's own samples (``rejection_samples.jsonl`` in its folder) and
its reward models (named in its lineage), every ``--every``-th training prompt; the combined reward
(helpfulness and safety, Llama 2's ``Rc``) as the stage computes it. Prints the machine, seconds for each
arithmetic, the ratio, the largest and mean reward difference, and for how many prompts the kept (highest)
and the lowest reply stay the same: the lowest is DPO's rejected reply under ``pairs_from: rejection``.
``--bf16-weights`` also times the reward models cast to bf16 (no fp32 residual stream).

    .venv/bin/python bench/score_precision.py --stage runs/l2c/small/04-rejection-<hash> [--every 5]
        [--recipe llama2chat] [--profile small]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", required=True, help="a finished rejection_sampling stage's folder")
    ap.add_argument("--every", type=int, default=5, help="take every n-th training prompt")
    ap.add_argument("--recipe", default="llama2chat")
    ap.add_argument("--profile", default="small")
    ap.add_argument("--bf16-weights", action="store_true")
    args = ap.parse_args()

    import torch

    from herd.core.machine import cpu_summary
    from herd.core.recipe import load_recipe, recipe_path
    from herd.data.report import DataReport
    from herd.engine.generation import sampling_model
    from herd.engine.reward_model import load_reward_model
    from herd.engine.training import autocast
    from herd.stages.sampling import Scorer, load_prompts, split_prompts
    from herd.templates import get_template

    stage = Path(args.stage)
    lineage = json.loads((stage / "lineage.json").read_text())
    recipe = load_recipe(args.recipe, profile=args.profile)
    cfg = next(s for s in recipe.stages if s.kind == "rejection_sampling")
    prompts, _ = load_prompts(cfg.data, relative_to=recipe_path(args.recipe).parent, report=DataReport())
    train_p = split_prompts(prompts, cfg)[0]
    rows = [json.loads(x) for x in (stage / "rejection_samples.jsonl").read_text().splitlines()]
    if len(rows) != len(train_p) or any(r["prompt"] != p["messages"] for r, p in zip(rows, train_p)):
        raise SystemExit(f"{stage}: its samples are not the {args.recipe} {args.profile} stage's prompts")
    sel = range(0, len(rows), args.every)
    k = cfg.k
    template = get_template(recipe.template)
    rms = [load_reward_model(p, template) for p in lineage["metrics"]["reward_models"]]
    flat_p = [rows[i]["prompt"] for i in sel for _ in range(k)]
    flat_r = [x for i in sel for x in rows[i]["replies"]]
    flat_s = [bool(train_p[i]["safety"]) for i in sel for _ in range(k)]

    def scorer(models) -> Scorer:
        return Scorer(models[0], models[1] if len(models) > 1 else None, cfg.safety_threshold, cfg.score_batch)

    def bf16(rm):
        out = copy.copy(rm)
        out.model = sampling_model(rm.model, "bf16")  # a bf16 copy, as rejection sampling's sampler
        return out

    systems = {"fp32": (scorer(rms), False), "bf16 autocast": (scorer(rms), True)}
    if args.bf16_weights:
        systems["bf16 weights"] = (scorer([bf16(m) for m in rms]), False)
    print(cpu_summary())
    print(f"{args.recipe} {args.profile}: {len(sel)} prompts (every {args.every}-th) x K = {k} samples of {stage}; "
          f"{len(rms)} reward model(s), batch {cfg.score_batch}")
    res = {}
    for name, (sc, amp) in systems.items():
        t = time.perf_counter()
        with autocast("bf16" if amp else "fp32"):
            r = sc(flat_p, flat_r, flat_s).view(-1, k)
        res[name] = (r, time.perf_counter() - t)
        print(f"  {name}: {res[name][1]:.1f} s", flush=True)
    ref, ref_s = res["fp32"]
    stored = torch.tensor([x for i in sel for x in rows[i]["rewards"]]).view(-1, k)
    print(f"fp32 against the stage's stored rewards: max |difference| {float((ref - stored).abs().max()):.1e}")
    gaps = ref.sort(1).values
    print(f"fp32: median gap between the best and second-best reply {float((gaps[:, -1] - gaps[:, -2]).median()):.4f}")
    print(f"\n{'arithmetic':<16} {'seconds':>8} {'x fp32':>7} {'max |diff|':>11} {'mean |diff|':>12} "
          f"{'same best':>10} {'same lowest':>12}")
    for name, (r, s) in res.items():
        d = (r - ref).abs()
        print(f"{name:<16} {s:>8.1f} {ref_s / s:>6.2f}x {float(d.max()):>11.4f} {float(d.mean()):>12.4f} "
              f"{int((r.argmax(1) == ref.argmax(1)).sum()):>6}/{len(sel)} "
              f"{int((r.argmin(1) == ref.argmin(1)).sum()):>8}/{len(sel)}")


if __name__ == "__main__":
    main()
