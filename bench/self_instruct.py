"""Self-Instruct novelty filter: kept instructions per second, brute force vs herd, at pools of 1K and 10K.

Alpaca rejects a generated instruction whose ROUGE-L F against ANY seed or kept instruction exceeds 0.7
(recipes.md §1.2). The published code scores every pool member (``rouge_scorer._score_lcs`` on
pre-tokenized text; Alpaca spreads that over a multiprocessing pool, here both run on one core). herd
makes the same decision (tests/test_selfinstruct.py proves it) but skips pool members whose token-
overlap bound cannot reach 0.7 and reads only the inverted-index postings of the query's rarest tokens.

Texts are real and instruction-like, from the shared datasets: Alpaca-format instructions, Gorilla
APIBench instructions, MBPP problems, PubMedQA questions, OpenAI-moderation prompts and sentences of
the C4/Wikipedia demo text. For each pool size the pool is filled with the first P texts, then the
next texts are checked one by one (kept ones join the pool, as in a run); the figure is kept
instructions per second of filtering. Every decision of both systems is compared.

    .venv/bin/python bench/self_instruct.py [--queries 300] [--brute-queries 30]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import time

from herd.core.paths import shared_data_dir
from herd.data.builds.selfinstruct.novelty import BruteForcePool, NoveltyPool

POOLS = (1_000, 10_000)


def corpus() -> list[str]:
    d = shared_data_dir()
    texts: list[str] = [json.loads(x)["instruction"] for x in (d / "self_instruct_seed/seed_tasks.jsonl").open()]
    for f in ("stanford_alpaca_tiny/alpaca_tiny.json", "llamafactory_alpaca_en_demo/alpaca_en_demo.json"):
        texts += [r["instruction"] for r in json.loads((d / f).read_text())]
    for f in sorted((d / "gorilla_apibench/apibench").glob("*.json")):
        for line in f.open():
            m = re.search(r"###Instruction:(.*?)\n###", json.loads(line).get("code", ""), re.S)
            if m:
                texts.append(m.group(1).strip())
    texts += [json.loads(x)["text"] for x in (d / "mbpp/mbpp.jsonl").open()]
    texts += [v["QUESTION"] for v in json.loads((d / "pubmedqa/ori_pqal.json").read_text()).values()]
    texts += [json.loads(x)["prompt"] for x in (d / "openai_moderation_train/moderation_train_1000.jsonl").open()]
    prose = [json.loads(x)["text"] for x in (d / "llamafactory_pretrain_text_demo/c4_demo.jsonl").open()]
    prose += (d / "llamafactory_pretrain_text_demo/wiki_demo.txt").read_text().splitlines()
    with gzip.open(d / "hh_rlhf_harmless_base_test/test.jsonl.gz", "rt") as f:
        prose += [json.loads(x)["chosen"] for x in f]
    for p in prose:
        texts += [s for s in re.split(r"(?<=[.!?])\s+|\n+", p) if 4 <= len(s.split()) <= 40]
    seen, out = set(), []
    for t in texts:
        t = " ".join(t.split())
        if 4 <= len(t.split()) <= 150 and t not in seen:
            seen.add(t)
            out.append(t)
    random.Random(0).shuffle(out)
    return out


def run(pool_cls, pool_texts: list[str], queries: list[str]) -> tuple[float, list[bool], int]:
    pool = pool_cls(pool_texts)
    decisions = []
    t0 = time.perf_counter()
    for q in queries:
        v = pool.check(q)
        decisions.append(v.novel)
        if v.novel:
            pool.add(q, v.tokens)
    return time.perf_counter() - t0, decisions, getattr(pool, "lcs_computed", len(pool_texts) * len(queries))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=300, help="instructions checked by herd per pool size")
    ap.add_argument("--brute-queries", type=int, default=30, help="instructions checked by brute force")
    args = ap.parse_args()
    texts = corpus()
    need = max(POOLS) + args.queries
    if len(texts) < need:
        raise SystemExit(f"only {len(texts)} distinct texts; need {need}")
    print(f"{len(texts)} distinct real texts; ROUGE-L > 0.7 rejection, one core\n")
    print(f"{'pool':>6}  {'system':<12} {'checked':>7} {'kept':>5} {'s/check':>10} {'kept/s':>9} {'LCS/check':>9}")
    per_check: dict[tuple[str, int], float] = {}
    for n in POOLS:
        pool, queries = texts[:n], texts[n:n + args.queries]
        results, kept_rate = {}, {}
        for name, cls, q in (("brute force", BruteForcePool, queries[:args.brute_queries]),
                             ("herd", NoveltyPool, queries)):
            secs, dec, lcs = run(cls, pool, q)
            results[name] = dec
            per_check[(name, n)] = secs / len(q)
            kept_rate[name] = sum(dec) / secs
            print(f"{n:>6}  {name:<12} {len(q):>7} {sum(dec):>5} {secs / len(q):>10.5f} "
                  f"{sum(dec) / secs:>9.1f} {lcs / len(q):>9.1f}")
        k = args.brute_queries
        assert results["herd"][:k] == results["brute force"], "decisions differ"
        print(f"{'':>6}  herd / brute force: {kept_rate['herd'] / kept_rate['brute force']:.0f}x kept/s "
              f"({per_check[('brute force', n)] / per_check[('herd', n)]:.0f}x per check), same {k} decisions\n")
    lo, hi = POOLS
    for name in ("brute force", "herd"):
        g = per_check[(name, hi)] / per_check[(name, lo)]
        print(f"cost per check, pool {lo:,} → {hi:,} ({hi // lo}x): {name} grows {g:.1f}x")


if __name__ == "__main__":
    main()
