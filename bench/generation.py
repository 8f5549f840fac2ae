"""Generation on the rejection-sampling workload: herd's engine vs transformers ``generate``, one run.

The workload of llama2chat's tiny rejection-sampling stage: prompts rendered in the artifact's
template, K samples each at temperature 1.0, up to ``--max-new`` tokens, stop strings honoured. Each
system generates the same samples and is timed on generated tokens per second (tokens up to each
sample's stop):

- **before**: the path herd used until the engine (transformers ``generate``, fp32 weights, left-padded
  batches of prompts x K, each of the K rows prefilling its prompt again), frozen below as the baseline;
- **engine**: ``herd.engine.generation.generate`` (one prefill per prompt for its K samples, a KV cache
  grown in place, finished sequences leave the batch), fp32 weights;
- **engine, bf16 weights**: the same with the model cast to bf16 (only where the CPU has native bf16);
- **llama.cpp**: the model exported to an f16 GGUF and sampled with llama-cpp-python, one sequence at a
  time; the K samples of a prompt reuse its evaluated prompt (llama-cpp-python keeps the KV cache of
  the longest common prefix).

Greedy agreement: the first ``--greedy`` prompts are also decoded greedily by each system and
compared with the transformers fp32 path (the number of identical replies is printed).

    .venv/bin/python bench/generation.py [--prompts 16] [--k 4] [--max-new 96] [--base smollm2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from herd.base import load_model, load_tokenizer, resolve_base  # noqa: E402
from herd.core.paths import shared_data_dir  # noqa: E402
from herd.engine.generation import cut_at_stop, generate, stop_token_ids  # noqa: E402
from herd.engine.training import resolve_precision  # noqa: E402
from herd.templates import get_template  # noqa: E402


def prompts(n: int) -> list[list[dict]]:
    """The first ``n`` user prompts of the shared DPO demo file (llama2chat's rejection prompts)."""
    path = shared_data_dir() / "llamafactory_preference_demo" / "dpo_en_demo.json"
    out = []
    for rec in json.loads(path.read_text()):
        turns = rec.get("conversations") or []
        user = next((t.get("value") for t in turns if t.get("from") in ("human", "user")), None)
        if user and len(user) < 1500:
            out.append([{"role": "user", "content": user}])
        if len(out) == n:
            break
    return out


def count_tokens(tok, replies: list[str]) -> int:
    return sum(len(tok(r, add_special_tokens=False)["input_ids"]) for r in replies)


def before_generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, temperature: float,
                    stop: list[str], batch_size: int, seed: int = 0) -> list[str]:
    """herd's generation before the engine (frozen: the baseline must not follow the engine's changes)."""
    eos_ids, text_stops = stop_token_ids(tokenizer, stop)
    old_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    outs: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            kw: dict = dict(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=eos_ids or None)
            if temperature > 0:
                torch.manual_seed(seed + i)
                kw.update(do_sample=True, temperature=temperature, top_p=1.0)
            else:
                kw.update(do_sample=False)
            if text_stops:
                kw.update(stop_strings=text_stops, tokenizer=tokenizer)
            with torch.no_grad():
                gen = model.generate(**enc, **kw)
            outs += [cut_at_stop(tokenizer.decode(r, skip_special_tokens=True), text_stops)
                     for r in gen[:, enc["input_ids"].shape[1]:]]
    finally:
        tokenizer.padding_side = old_side
    return outs


def run_hf(model, tok, texts: list[str], stops: list[str], k: int, max_new: int, batch: int,
           temperature: float, fn=generate) -> tuple[list[str], float]:
    flat = [t for t in texts for _ in range(k)]
    t0 = time.perf_counter()
    out = fn(model, tok, flat, max_new_tokens=max_new, temperature=temperature, stop=stops, batch_size=batch,
             seed=0)
    return out, time.perf_counter() - t0


def run_llamacpp(gguf: Path, texts: list[str], stops: list[str], k: int, max_new: int, temperature: float,
                 threads: int) -> tuple[list[str], float]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=2048, n_threads=threads, n_batch=512, verbose=False, seed=0)
    out = []
    t0 = time.perf_counter()
    for text in texts:
        for j in range(k):
            r = llm.create_completion(text, max_tokens=max_new, temperature=temperature if temperature > 0 else 0.0,
                                      top_p=1.0, top_k=0, stop=stops, seed=j)
            out.append(r["choices"][0]["text"].strip())
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="smollm2")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8, help="prompts per generate call (x K sequences)")
    ap.add_argument("--greedy", type=int, default=8, help="prompts also decoded greedily for the agreement check")
    ap.add_argument("--no-llamacpp", action="store_true")
    args = ap.parse_args()
    from herd.core.machine import cpu_summary

    print(cpu_summary())
    ref = resolve_base(args.base)
    tok = load_tokenizer(ref)
    template = get_template("chatml")
    convs = prompts(args.prompts)
    texts = [template.prompt(c, tok) for c in convs]
    stops = template.stop_strings(tok)
    print(f"base {ref.name}, {len(texts)} prompts x K={args.k}, max_new {args.max_new}, temperature 1.0, "
          f"batch {args.batch} prompts = {args.batch * args.k} sequences per call")
    fp32 = load_model(ref)
    batch = args.batch * args.k
    systems = {"before (fp32, transformers generate)": (fp32, before_generate),
               "engine (fp32)": (fp32, generate)}
    if resolve_precision("auto") == torch.bfloat16:
        systems["engine, bf16 weights"] = (load_model(ref).to(torch.bfloat16), generate)
    rows, greedy = [], {}
    g_texts = texts[: args.greedy]
    for name, (model, fn) in systems.items():
        run_hf(model, tok, texts[:2], stops, 1, 4, 2, 1.0, fn)  # warm-up: first-call costs are not the path's
        out, secs = run_hf(model, tok, texts, stops, args.k, args.max_new, batch, 1.0, fn)
        n = count_tokens(tok, out)
        rows.append((name, n, secs))
        greedy[name], _ = run_hf(model, tok, g_texts, stops, 1, args.max_new, len(g_texts), 0.0, fn)
        print(f"  {name}: {n} tokens in {secs:.1f} s", flush=True)
    if not args.no_llamacpp:
        from herd.artifacts import new_lineage, save_model_folder, template_record, write_lineage
        from herd.export.gguf_file import export_gguf

        with tempfile.TemporaryDirectory() as d:
            art = Path(d) / "artifact"
            art.mkdir()
            save_model_folder(fp32, tok, template, art)
            write_lineage(art, new_lineage(f"bench-{ref.name}", parent=ref.describe(),
                                           template=template_record(template, tok)))
            gguf = export_gguf(art, Path(d) / "model.f16.gguf", "f16", progress=False)
            threads = os.cpu_count() or 2
            out, secs = run_llamacpp(gguf, texts, stops, args.k, args.max_new, 1.0, threads)
            n = count_tokens(tok, out)
            rows.append(("llama.cpp f16 (one sequence at a time)", n, secs))
            greedy["llama.cpp f16 (one sequence at a time)"], _ = run_llamacpp(gguf, g_texts, stops, 1,
                                                                              args.max_new, 0.0, threads)
            print(f"  llama.cpp: {n} tokens in {secs:.1f} s", flush=True)
    base_rate = rows[0][1] / rows[0][2]
    ref_greedy = greedy[rows[0][0]]
    print(f"\n{'system':<42} {'tokens':>7} {'seconds':>8} {'tok/s':>7} {'x before':>9} {'greedy = fp32':>14}")
    for name, n, secs in rows:
        same = sum(a == b for a, b in zip(greedy[name], ref_greedy))
        print(f"{name:<42} {n:>7} {secs:>8.1f} {n / secs:>7.1f} {n / secs / base_rate:>8.2f}x "
              f"{same:>7}/{len(ref_greedy)}")


if __name__ == "__main__":
    main()
