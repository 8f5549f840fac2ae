"""Token-healed SPM infilling: one prefill per prompt (the engine's ``heal``) vs two, in one run.

The Code Llama recipe's infilling eval heals every single-line SPM prompt (its last token, a newline
that SmolLM2's BPE would merge with the middle's indentation, is dropped and re-written by the model).
Until the engine took the constraint, the eval ran two passes: a one-token generation for the
constrained first token, then a second prefill of the prompt with that token and the decode (frozen
below as the baseline). Both paths run greedily, alternately ``--rounds`` times, on the same dev-split
tasks with real SmolLM2 (fp32, as the eval); the bench prints the machine, each path's best seconds,
the ratio, and how many middles agree (greedy decoding: all of them, up to float rounding between a
prefilled and a decoded token).

    .venv/bin/python bench/infill_healing.py [--tasks 48] [--rounds 2] [--batch 8]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from herd.base import load_model, load_tokenizer, resolve_base  # noqa: E402
from herd.core.machine import cpu_summary  # noqa: E402
from herd.core.paths import shared_data_dir  # noqa: E402
from herd.evals import humaneval as he  # noqa: E402


def two_pass(model, tok, problems: list[dict], batch: int) -> list[str]:
    """The eval before the engine's ``heal``: the constrained first token by a one-token generation per
    dropped text, then the prompt with that token prefilled again and decoded on."""
    heads = [he.healed_prompt(tok, p["prompt"], p["suffix"], "spm") for p in problems]
    vocab = tok.batch_decode([[i] for i in range(len(tok))], clean_up_tokenization_spaces=False)
    prompts, leads = [ids for ids, _ in heads], [""] * len(heads)
    for d in sorted({d for _, d in heads if d}):
        idx = [i for i, (_, x) in enumerate(heads) if x == d]
        banned = [t for t, v in enumerate(vocab) if not v.startswith(d)]
        rows = he.generate_ids(model, tok, [heads[i][0] for i in idx], max_new_tokens=1, batch_size=batch,
                               suppress_ids=banned)
        for i, (ids,) in zip(idx, rows, strict=True):
            prompts[i] = prompts[i] + [ids[0]]
            leads[i] = vocab[ids[0]][len(d):]
    rows = he.generate_ids(model, tok, prompts, max_new_tokens=32, stop_strings=["\n"], batch_size=batch)
    return [he.first_line(lead + he.decode_continuation(tok, ids)) for lead, (ids,) in zip(leads, rows, strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--base", default="smollm2")
    args = ap.parse_args()
    torch.manual_seed(0)
    every = he.load_infilling(shared_data_dir() / "humaneval_infilling" / "HumanEval-SingleLineInfilling.jsonl.gz")
    problems = he.infilling_split(every, "dev")[: args.tasks]
    ref = resolve_base(args.base)
    tok, model = load_tokenizer(ref), load_model(ref).eval()
    print(cpu_summary())
    print(f"base {args.base}, {len(problems)} dev single-line SPM tasks, greedy, fp32, batch {args.batch}")
    systems = {"two prefills (before)": lambda: two_pass(model, tok, problems, args.batch),
               "engine heal (one prefill)": lambda: he.infill(model, tok, problems, "spm", single_line=True,
                                                             max_new_tokens=32, batch_size=args.batch, heal=True)}
    best, out = {}, {}
    for _ in range(args.rounds):
        for name, fn in systems.items():
            t0 = time.perf_counter()
            out[name] = fn()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
    base_name, new_name = list(systems)
    agree = sum(a == b for a, b in zip(out[base_name], out[new_name], strict=True))
    print(f"{'system':<28} {'seconds':>8} {'x before':>9}")
    for name in systems:
        print(f"{name:<28} {best[name]:>8.1f} {best[base_name] / best[name]:>8.2f}x")
    print(f"middles identical: {agree}/{len(problems)}")


if __name__ == "__main__":
    main()
