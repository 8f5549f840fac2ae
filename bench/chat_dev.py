"""Score a llama2chat run's policies on DEV: the rejection stage's held-out prompts, never the Vicuna test.

How the small profile's DPO learning rate was chosen (recipes/llama2chat.yaml, its deviations): each
policy answers the rejection stage's held-out prompts greedily (``eval_size`` of them, which no stage
trains on), and the run's own reward models score the replies with the rejection stage's combined
reward. ``--dpo-lr`` first trains a DPO variant from the run's rejection stage at that learning rate
(the profile's DPO otherwise) into ``--out``, and scores it beside the run's stages (the reward
models loaded once for all). A DPO stage with ``pairs_from`` reports the same figure for its own
policy (``heldout_greedy_reward`` in its summary).

    flock /tmp/herd-heavy.lock python bench/chat_dev.py --run runs/l2c-small --profile small \
        --dpo-lr 5e-5 --out /tmp/chat-dev
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> int:
    from herd.base import load_model, load_tokenizer, resolve_base
    from herd.core.paths import repo_root
    from herd.core.recipe import load_recipe
    from herd.stages.dpo import run_dpo
    from herd.stages.sampling import heldout_greedy_reward, rejection_dev, stage_folder
    from herd.templates import get_template

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, type=Path, help="a finished llama2chat derive workspace (--out)")
    p.add_argument("--profile", default="small")
    p.add_argument("--recipe", default="llama2chat")
    p.add_argument("--stages", default="sft,rejection,dpo", help="the run's stages to score, by name")
    p.add_argument("--dpo-lr", type=float, help="also train DPO at this learning rate and score it")
    p.add_argument("--out", type=Path, help="where the DPO variant goes (with --dpo-lr)")
    args = p.parse_args()

    rec = load_recipe(args.recipe, args.profile)
    st = {s.name: s for s in rec.stages}
    rs = next(s for s in rec.stages if s.kind == "rejection_sampling")
    template = get_template(rec.template)
    recipe = {"file": str(repo_root() / "recipes" / f"{args.recipe}.yaml"), "name": args.recipe,
              "profile": args.profile}
    rs_dir = stage_folder(args.run, rs.name)
    if rs_dir is None:
        p.error(f"{args.run}: no finished {rs.name} stage")
    models = {n: d for n in args.stages.split(",") if (d := stage_folder(args.run, n))}
    if args.dpo_lr is not None:
        if args.out is None:
            p.error("--dpo-lr needs --out")
        dpo = next(s for s in rec.stages if s.kind == "dpo")
        cfg = dpo.model_copy(update={"lr": args.dpo_lr})
        out = args.out / f"dpo-lr{args.dpo_lr:g}"
        run_dpo(cfg, resolve_base(rs_dir), template, out, name=dpo.name, resume=True, recipe=recipe,
                earlier={n: d for n in st if (d := stage_folder(args.run, n))})
        models[f"dpo lr {args.dpo_lr:g}"] = out

    dev = rejection_dev(rs_dir, template, recipe=recipe, workspace=args.run)
    if dev is None:
        p.error(f"{rs_dir}: its lineage does not carry the rejection stage's settings")
    print(f"dev: the {len(dev.prompts)} held-out prompts of stage {rs.name}; greedy, {rs.max_new_tokens} new tokens")
    for label, d in models.items():
        ref = resolve_base(d)
        score = heldout_greedy_reward(load_model(ref), load_tokenizer(ref), template, dev.prompts, dev.scorer, dev.cfg)
        print(label, json.dumps(score), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
