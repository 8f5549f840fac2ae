"""Greedy answers at several decode batch sizes: what the evaluations' ``batch_size`` (8 today) costs.

Every recipe's scorecard answers the 80 Vicuna questions greedily with parent and derived (Llama-2-Chat:
three policies), in fp32 (greedy evaluations keep fp32, so parent numbers repeat across machines), 8
sequences a decode step. A decode step reads every weight once whatever the batch, so more sequences per
step should buy tokens/s until the matmuls are compute-bound; but fp32 matrix products may round a row
differently in another batch shape, which can flip a greedy token. This bench answers the questions at each
``--batches`` size, one process, and prints time, tokens/s, the ratio against the first size, and how many
answers are identical to the first size's.

    .venv/bin/python bench/greedy_batches.py [--batches 8,16,32] [--n 80] [--max-new 96] [--template chatml]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    import torch

    from herd.base import load_model, load_tokenizer, resolve_base
    from herd.core.machine import cpu_summary
    from herd.core.paths import shared_data_dir
    from herd.core.phases import process_peak_mb, reset_peak_rss
    from herd.engine.generation import generate_ids, stop_token_ids
    from herd.evals.mtbench import read_questions
    from herd.templates import get_template

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="smollm2")
    ap.add_argument("--template", default="chatml", help="SmolLM2's own format, so the parent answers at length")
    ap.add_argument("--batches", default="8,16,32")
    ap.add_argument("--n", type=int, default=80, help="first turns of the first N Vicuna questions")
    ap.add_argument("--max-new", type=int, default=96)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    print(cpu_summary())
    ref = resolve_base(args.base)
    tok, model = load_tokenizer(ref), load_model(ref)  # fp32, as the evaluations load it
    template = get_template(args.template)
    qs = read_questions(shared_data_dir() / "vicuna_bench" / "question.jsonl")[:args.n]
    texts = [template.prompt([{"role": "user", "content": q.turns[0]}], tok) for q in qs]
    enc = tok(texts, add_special_tokens=False)["input_ids"]
    ids, text_stops = stop_token_ids(tok, template.stop_strings(tok))
    pad = tok.pad_token_id if tok.pad_token_id is not None else (ids[0] if ids else 0)
    print(f"base {ref.name}, template {args.template}, {len(enc)} questions (prompts {min(map(len, enc))} to "
          f"{max(map(len, enc))} tokens), greedy, up to {args.max_new} new tokens, fp32\n")
    print(f"{'batch':>5} {'tokens':>7} {'seconds':>8} {'tok/s':>7} {'x first':>8} {'same answers':>13} {'peak RSS':>9}")
    first = None
    for b in [int(x) for x in args.batches.split(",")]:
        reset_peak_rss()
        t = time.perf_counter()
        rows = generate_ids(model, enc, max_new_tokens=args.max_new, stop_ids=ids, stop_strings=text_stops,
                            tokenizer=tok, pad_id=pad, batch_size=b)
        secs = time.perf_counter() - t
        answers = [r[0].ids for r in rows]
        tokens = sum(map(len, answers))
        if first is None:
            first = (tokens / secs, answers)
        same = sum(a == f for a, f in zip(answers, first[1]))
        print(f"{b:>5} {tokens:>7} {secs:>8.1f} {tokens / secs:>7.1f} {tokens / secs / first[0]:>7.2f}x "
              f"{same:>6}/{len(answers):<6} {process_peak_mb() / 1024:>6.2f} GB", flush=True)


if __name__ == "__main__":
    main()
