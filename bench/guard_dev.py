"""Train the llamaguard recipe with changed settings and score parent vs derived on the DEV split only.

For choosing the tiny profile's settings without touching the test split: the recipe's own derive
(same data, augmentations, training, guard eval) with ``evals.guard.split: dev``, so the guard eval
scores every dev record (up to the eval's max_len) instead of the test split, with the paired
bootstrap CI of the scorecard. Training stages are cached by their inputs, so rerunning with the same
training settings into the same --out only re-scores.

    flock /tmp/herd-heavy.lock python bench/guard_dev.py --out /tmp/guard-exp/e1 \
        --set stages.sft.max_len=2048 --set dev_size=200
"""

from __future__ import annotations

import argparse
import json
import time

import yaml


def _put(d: dict, dotted: str, value) -> None:
    *head, last = dotted.split(".")
    for k in head:
        d = d.setdefault(k, {})
    d[last] = value


def main() -> int:
    from herd.core.recipe import load_recipe
    from herd.derive import derive

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="llamaguard")
    p.add_argument("--profile", default="tiny")
    p.add_argument("--out", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                   help="recipe override (stages.sft.lr=1e-4); data options by bare name (dev_size=200)")
    p.add_argument("--max-steps", type=int)
    args = p.parse_args()

    overrides: dict = {"evals": {"guard": {"split": "dev"}}}
    data_opts = {}
    for item in args.set:
        key, _, val = item.partition("=")
        val = yaml.safe_load(val)
        if "." in key or key in ("eval_size", "split_seed"):
            _put(overrides, key, val)
        else:
            data_opts[key] = val
    if data_opts:  # data is a list: give the whole list back with the options changed
        data = [s.model_dump(mode="json") for s in load_recipe(args.recipe, args.profile).data]
        for src in data:
            if src["format"] == "moderation":
                src["options"] = {**src["options"], **data_opts}
        overrides["data"] = data
    t0 = time.perf_counter()
    res = derive(args.recipe, profile=args.profile, out=args.out, overrides=overrides, max_steps=args.max_steps)
    wall = time.perf_counter() - t0
    head = next(m for m in res.scorecard["metrics"] if m["name"] == "auprc")
    print(json.dumps({"out": args.out, "set": args.set, "auprc_parent": head["parent"], "auprc_derived": head["derived"],
                      "delta": head.get("delta"), "ci95": head.get("ci95"), "n": head.get("n"),
                      "dataset": head["dataset"], "wall_s": round(wall, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
