"""Data at scale: tokenize + pack N Alpaca-size records, today's per-record path vs the batched one.

N records are built from llamafactory_alpaca_en_demo (999 records, repeated) with the record number
appended to every instruction AND every answer, so no two records share a text piece and neither the
cache nor any deduplication can cheat. Each size is run through
- today: a frozen copy of the code this change replaced (one ``Template.render`` per record, one
  tokenizer call per text piece, Python int lists, the list-based ``make_batch``), the baseline;
- batched: ``tokenize_examples(..., cache=False)``: all pieces through batched tokenizer calls, int32
  arrays; then ``make_batch``;
- cache write / cache hit: the same call with the tokenized-data cache on (a temporary folder): the first
  call tokenizes and writes the cache, the second only reads it.
Every run is timed for tokenize + pack (``make_batch`` over steps of ``--per-step`` records, as a
training step packs them) and measured for peak RSS (``herd.core.phases``; growth = the peak above the
RSS the phase started from) and for the memory its tokenized records hold (MB and bytes per token).

    .venv/bin/python bench/data_scale.py [--sizes 1000,10000,100000] [--max-len 512] [--template alpaca]

Prints one table (records/s, tokens/s, seconds, memory, ratio batched / today) and whether time grows
linearly (records/s of the largest size within 30% of the smallest). Both paths' outputs are checked to
be identical. The machine is shared and noisy: compare ratios, rerun when a line looks off. The 100K
baseline takes minutes; shrink ``--sizes`` for a quick look.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from herd.base import load_tokenizer, smollm2_tokenizer_dir  # noqa: E402
from herd.core.paths import shared_data_dir  # noqa: E402
from herd.core.phases import PhaseLog, current_rss_mb, record, release_memory  # noqa: E402
from herd.data import Example, load_examples  # noqa: E402
from herd.data.packing import Batch, best_fit, make_batch  # noqa: E402
from herd.data.tokenize import TokenizeReport, tokenize_examples  # noqa: E402
from herd.templates import IGNORE_INDEX, TemplateError, get_template  # noqa: E402

# -- today's path, frozen (git HEAD before the batched path): the baseline ---------------------------

@dataclass
class ListTokenized:
    input_ids: list[int]
    labels: list[int]
    source: str
    index: int

    def __len__(self) -> int:
        return len(self.input_ids)


def today_tokenize(examples, template, tokenizer, max_len):
    out, rep = [], TokenizeReport()
    for ex in examples:
        try:
            r = template.render(ex.messages, tokenizer)
        except TemplateError as e:
            rep.dropped[f"template refused it ({e})"] += 1
            rep.examples_dropped.append(f"{ex.source} record {ex.index}")
            continue
        if len(r.input_ids) > max_len:
            rep.dropped[f"longer than max_len {max_len} tokens"] += 1
            rep.examples_dropped.append(f"{ex.source} record {ex.index}")
            continue
        n_tr = sum(1 for x in r.labels if x != IGNORE_INDEX)
        if n_tr == 0:
            rep.dropped["no trained tokens"] += 1
            continue
        out.append(ListTokenized(r.input_ids, r.labels, ex.source, ex.index))
        rep.kept += 1
        rep.tokens += len(r.input_ids)
        rep.trained_tokens += n_tr
    return out, rep


def today_make_batch(items, row_len: int, pad_id: int, *, pack: bool = True) -> Batch:
    groups = best_fit([len(x) for x in items], row_len) if pack else [[i] for i in range(len(items))]
    width = row_len if pack else max(len(x) for x in items)
    ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
    labels = torch.full((len(groups), width), IGNORE_INDEX, dtype=torch.long)
    pos = torch.zeros((len(groups), width), dtype=torch.long)
    row_tokens = torch.zeros(len(groups), dtype=torch.long)
    n_tr = 0
    for r, group in enumerate(groups):
        col = 0
        for i in group:
            x = items[i]
            n = len(x)
            ids[r, col:col + n] = torch.tensor(x.input_ids)
            lab = torch.tensor(x.labels[1:] + [IGNORE_INDEX])
            labels[r, col:col + n] = lab
            pos[r, col:col + n] = torch.arange(n)
            col += n
            n_tr += int((lab != IGNORE_INDEX).sum())
        row_tokens[r] = col
        if col < width:
            pos[r, col:] = torch.arange(width - col)
    return Batch(ids, labels, pos, row_tokens, n_tr)


# -- the runs -------------------------------------------------------------------------------------

def build(n: int) -> list[Example]:
    """``n`` Alpaca records, every one with its own instruction and answer text."""
    path = shared_data_dir() / "llamafactory_alpaca_en_demo" / "alpaca_en_demo.json"
    base = load_examples(path, "alpaca")
    out = []
    for i in range(n):
        ex = base[i % len(base)]
        msgs = [{**m, "content": m["content"] + (f" (record {i})" if m["role"] == "user" else f" [{i}]")}
                for m in ex.messages]
        out.append(Example(msgs, ex.source, i))
    return out


def run(label: str, tokenize, pack, examples, per_step: int) -> dict:
    """Tokenize then pack, timed, with the phase's peak RSS and the memory the records hold."""
    release_memory()
    rss0 = current_rss_mb()
    with PhaseLog() as log, record(label) as row:
        t0 = time.perf_counter()
        items, rep = tokenize(examples)
        t1 = time.perf_counter()
        release_memory()  # untimed: what the records hold, not what the allocator kept
        held = current_rss_mb() - rss0
        t2 = time.perf_counter()
        for i in range(0, len(items), per_step):
            pack(items[i:i + per_step])
        t3 = time.perf_counter()
    assert row is not None and log.rows
    return {"label": label, "items": items, "rep": rep, "tok_s": t1 - t0, "pack_s": t3 - t2,
            "seconds": (t1 - t0) + (t3 - t2), "peak": row.peak_rss_mb, "growth": row.peak_rss_mb - rss0, "held": held,
            "records": len(examples), "tokens": rep.tokens, "exact": log.exact}


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        x.source == y.source and x.index == y.index and np.array_equal(x.input_ids, y.input_ids)
        and np.array_equal(x.labels, y.labels) for x, y in zip(a, b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000", help="record counts, comma-separated")
    ap.add_argument("--max-len", type=int, default=512, help="max_len and row length (herd's sft row)")
    ap.add_argument("--per-step", type=int, default=16, help="records packed per make_batch call")
    ap.add_argument("--template", default="alpaca")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    print(machine())
    tok = load_tokenizer(smollm2_tokenizer_dir())
    template = get_template(args.template)
    par = os.environ.get("TOKENIZERS_PARALLELISM")
    print(f"template {template.name}, max_len {args.max_len}, packed {args.per_step} records per make_batch, "
          f"TOKENIZERS_PARALLELISM={par if par is not None else '(unset: tokenizers uses every core)'}")
    ml, pad, step = args.max_len, tok.pad_token_id, args.per_step
    warm = build(64)  # first-use costs (template compile, tokenizer thread pool) out of every timed run
    today_make_batch(today_tokenize(warm, template, tok, ml)[0], ml, pad)
    make_batch(tokenize_examples(warm, template, tok, ml, cache=False)[0], ml, pad)
    rows, speed = [], {}
    with tempfile.TemporaryDirectory(prefix="herd-bench-cache-") as cache_root:
        for n in sizes:
            exs = build(n)
            new = run("batched", lambda e: tokenize_examples(e, template, tok, ml, cache=False),
                      lambda b: make_batch(b, ml, pad), exs, step)
            os.environ["HERD_CACHE"] = cache_root  # after the tokenizer is loaded: only the tokenized cache
            try:
                write = run("cache write", lambda e: tokenize_examples(e, template, tok, ml, cache=True),
                            lambda b: make_batch(b, ml, pad), exs, step)
                hit = run("cache hit", lambda e: tokenize_examples(e, template, tok, ml, cache=True),
                          lambda b: make_batch(b, ml, pad), exs, step)
            finally:
                del os.environ["HERD_CACHE"]
            ok_cache = same(new["items"], write["items"]) and same(new["items"], hit["items"])
            write["items"] = hit["items"] = None
            old = run("today", lambda e: today_tokenize(e, template, tok, ml),
                      lambda b: today_make_batch(b, ml, pad), exs, step)
            ok = same(old["items"], new["items"]) and old["rep"] == new["rep"] == hit["rep"]
            old["items"] = new["items"] = None
            for r in (old, new, write, hit):
                r["n"] = n
                r["ratio"] = old["seconds"] / r["seconds"]
                rows.append(r)
            speed[n] = new["records"] / new["seconds"]
            print(f"  N={n}: done (batched == today: {'yes' if ok else 'NO'}; "
                  f"cache == batched: {'yes' if ok_cache else 'NO'})", flush=True)
            del exs
    exact = all(r["exact"] for r in rows)
    print(f"\n{'N':>7}  {'path':<12} {'records/s':>10} {'tokens/s':>10} {'tokenize s':>10} {'pack s':>7} "
          f"{'peak RSS MB':>11} {'growth MB':>9} {'held MB':>8} {'B/token':>7} {'x today':>8}")
    for r in rows:
        print(f"{r['n']:>7}  {r['label']:<12} {r['records'] / r['seconds']:>10.0f} {r['tokens'] / r['seconds']:>10.0f} "
              f"{r['tok_s']:>10.2f} {r['pack_s']:>7.2f} {r['peak']:>11.0f} {r['growth']:>9.0f} "
              f"{r['held']:>8.0f} {r['held'] * 2**20 / max(1, r['tokens']):>7.1f} {r['ratio']:>7.2f}x")
    if not exact:
        print("(this kernel would not reset the RSS high-water mark: peaks are the process's so far)")
    if len(sizes) > 1:
        lo, hi = min(sizes), max(sizes)
        drift = speed[hi] / speed[lo]
        verdict = "linear" if abs(drift - 1) <= 0.3 else "NOT linear"
        print(f"\nbatched records/s at N={hi} is {drift:.2f}x that at N={lo}: time grows {verdict} in size")
    print("ratio batched / today, records per second (tokenize + pack): "
          + ", ".join(f"N={r['n']}: {r['ratio']:.2f}x" for r in rows if r["label"] == "batched"))


def machine() -> str:
    """The CPU and what it can do (speed claims depend on it)."""
    try:
        from herd.core.machine import cpu_summary
    except ImportError:
        import platform

        return f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores"
    return cpu_summary()


if __name__ == "__main__":
    main()
