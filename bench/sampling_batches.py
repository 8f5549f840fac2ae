"""Rejection sampling's batches: prompts in input order (the path before) against batches of similar
length (``herd.stages.rejection_sampling.sample_replies``), on the stage's own prompts, one run.

A batch of prompts is padded to its longest: the prefill computes every row to that width, and every
decode step attends over it. The llama2chat ``small`` profile's 310 training prompts run from a few
dozen to 4,074 tokens, so batches in input order computed about three times the prompt tokens. The
workload is every ``--every``-th of those prompts (the length mix kept), K samples each at the stage's
temperature, up to its ``max_new_tokens``, in the stage's sampling precision and ``gen_batch``:

- **input order**: batches of ``gen_batch`` prompts as they come, each batch seeded by its index (the
  previous release's ``sample_replies``, frozen below);
- **by length**: herd's ``sample_replies`` (longest batch first; each prompt's samples from its own
  streams);
- with ``--generate``, first: **transformers generate**, the path before herd's engine (fp32 weights,
  batches of ``gen_batch`` prompts x K rows in input order, each row prefilling its prompt again; the
  frozen copy in ``bench/generation.py``), the baseline of the engine's ratio on this workload.

``--precision fp32`` samples the engine's systems in fp32 instead of the stage's ``sample_precision``
(what a CPU without native bf16 runs).

The two draw different samples (other seeds), so each is timed on its own generated tokens: tokens up to
each sample's stop per second, and prompts per second. Runs alternate (``--rounds``), one process.

    .venv/bin/python bench/sampling_batches.py [--every 5] [--rounds 1] [--profile small] [--generate]
        [--precision fp32]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def in_input_order(tok, template, prompts, cfg, draw) -> list[list[str]]:
    """Batches of ``gen_batch`` prompts x K rows as they come, the c-th seeded ``cfg.seed + 7919 c``;
    ``draw(texts, seed)`` returns one reply per text."""
    out = []
    for c in range(math.ceil(len(prompts) / cfg.gen_batch)):
        part = prompts[c * cfg.gen_batch:(c + 1) * cfg.gen_batch]
        flat = draw([template.prompt(p["messages"], tok) for p in part for _ in range(cfg.k)], cfg.seed + 7919 * c)
        out += [flat[i * cfg.k:(i + 1) * cfg.k] for i in range(len(part))]
    return out


def before(model, tok, template, prompts, cfg) -> list[list[str]]:
    """The previous release's batching: herd's engine on batches in input order, seeded per batch (frozen)."""
    from herd.engine.generation import completions

    stops = template.stop_strings(tok)
    return in_input_order(tok, template, prompts, cfg, lambda texts, seed: [x.text for x in completions(
        model, tok, texts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
        top_k=cfg.top_k, stop=stops, batch_size=cfg.gen_batch * cfg.k, seed=seed)])


def transformers_generate(model, tok, template, prompts, cfg) -> list[list[str]]:
    """The path before the engine: ``generate`` on batches in input order, each of a prompt's K rows
    prefilling it again (fp32)."""
    if str(Path(__file__).parent) not in sys.path:
        sys.path.insert(0, str(Path(__file__).parent))
    from generation import before_generate  # the frozen copy bench/generation.py times

    stops = template.stop_strings(tok)
    return in_input_order(tok, template, prompts, cfg, lambda texts, seed: before_generate(
        model, tok, texts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, stop=stops,
        batch_size=cfg.gen_batch * cfg.k, seed=seed))


def padded(lengths: list[int], g: int) -> int:
    return sum(max(lengths[c:c + g]) * len(lengths[c:c + g]) for c in range(0, len(lengths), g))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", type=int, default=5, help="take every n-th training prompt (the length mix kept)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--profile", default="small")
    ap.add_argument("--generate", action="store_true",
                    help="also time transformers generate in fp32, the path before the engine (the baseline)")
    ap.add_argument("--precision", choices=["stage", "fp32", "bf16"], default="stage",
                    help="the engine's sampling precision (stage: the stage's sample_precision)")
    args = ap.parse_args()

    from herd.base import load_model, load_tokenizer, resolve_base
    from herd.core.machine import cpu_summary
    from herd.core.recipe import load_recipe, recipe_path
    from herd.data.report import DataReport
    from herd.engine.generation import sampling_model
    from herd.stages.rejection_sampling import sample_replies
    from herd.stages.sampling import load_prompts, split_prompts
    from herd.templates import get_template

    print(cpu_summary())
    recipe = load_recipe("llama2chat", profile=args.profile)
    cfg = next(s for s in recipe.stages if s.kind == "rejection_sampling")
    prompts, _ = load_prompts(cfg.data, relative_to=recipe_path("llama2chat").parent, report=DataReport())
    train_p = split_prompts(prompts, cfg)[0][:: args.every]
    ref = resolve_base("smollm2")
    tok = load_tokenizer(ref)
    template = get_template(recipe.template)
    lengths = [len(x) for x in tok([template.prompt(p["messages"], tok) for p in train_p],
                                   add_special_tokens=False)["input_ids"]]
    g = cfg.gen_batch
    if args.precision != "stage":
        cfg = cfg.model_copy(update={"sample_precision": args.precision})
    fp32 = load_model(ref)
    model = sampling_model(fp32, cfg.sample_precision)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    print(f"llama2chat {args.profile}, rejection: {len(train_p)} prompts (every {args.every}-th of the training "
          f"prompts; {min(lengths)}-{max(lengths)} tokens, mean {sum(lengths) / len(lengths):.0f}) x K={cfg.k}, "
          f"max_new {cfg.max_new_tokens}, temperature {cfg.temperature}, {g} prompts a batch, {dtype} weights")
    print(f"prompt tokens a prefill computes: input order {padded(lengths, g):,}, by length "
          f"{padded(sorted(lengths, reverse=True), g):,} (the prompts hold {sum(lengths):,})")

    def count(replies: list[list[str]]) -> int:
        return sum(len(x) for x in tok([r for rs in replies for r in rs], add_special_tokens=False)["input_ids"])

    def by_length(m, t, tpl, ps, c) -> list[list[str]]:
        with tempfile.TemporaryDirectory() as d:
            return sample_replies(m, t, tpl, ps, c, Path(d) / "samples.jsonl", progress=False)[0]

    sample_replies(model, tok, template, train_p[:2], cfg.model_copy(update={"max_new_tokens": 4}),
                   Path(tempfile.mkdtemp()) / "warm.jsonl", progress=False)  # first-call costs are no path's
    systems = {"input order (before)": (model, before), "by length (herd)": (model, by_length)}
    if args.generate:
        transformers_generate(fp32, tok, template, train_p[:2], cfg.model_copy(update={"max_new_tokens": 4}))
        systems = {"transformers generate, fp32": (fp32, transformers_generate), **systems}
    rates: dict[str, list[tuple[int, float]]] = {n: [] for n in systems}
    for r in range(args.rounds):
        for name, (m, fn) in systems.items():
            t0 = time.perf_counter()
            replies = fn(m, tok, template, train_p, cfg)
            secs = time.perf_counter() - t0
            rates[name].append((count(replies), secs))
            print(f"  round {r + 1}, {name}: {rates[name][-1][0]} tokens in {secs:.1f} s", flush=True)
    first = next(iter(rates))
    print(f"\n{'system':<28} {'tokens':>7} {'seconds':>8} {'tok/s':>7} {'prompts/s':>10} {'x first':>8}")
    base = [n / s for n, s in rates[first]]
    for name, runs in rates.items():
        for (n, s), b in zip(runs, base):
            print(f"{name:<28} {n:>7} {s:>8.1f} {n / s:>7.1f} {len(train_p) / s:>10.3f} {n / s / b:>7.2f}x")


if __name__ == "__main__":
    main()
