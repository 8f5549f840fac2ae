"""Where herd's GPU training step spends its time: per-step seconds of ``train()`` under each attention and
compile setting, a plain dense loop over the same model as the machine's own baseline, and a profiler
table of the default setting's steady steps. Written after the first H200 run of bench/gpu_check.py
measured herd at 21,663 useful tokens/s (3.5 % MFU), far below what the dense anchors promise.

    PYTHONPATH=/tmp/site:src python3 bench/gpu_probe.py --tokenizer .gpu/tokenizer \\
        --data .gpu/alpaca_en_demo.json --out $OUT
    python bench/gpu_probe.py --smoke --out /tmp/probe     # toy sizes on a CPU: checks the script

Its one run (H200, 2026-12-04, before flat micro-batches; 14 steps each, the first 3 not timed):

    | setting                                   | useful tokens/s | seconds per step                       |
    |-------------------------------------------|-----------------|----------------------------------------|
    | flex attention, compiled layers (default)  |   7,290         | 0.12-0.25, and 20.8 and 6.1 (recompiles) |
    | SDPA, compiled layers                      |  21,827         | 0.15-0.39, and 6.9 and 5.2               |
    | flex attention, eager                      |  88,549         | 0.23-0.49                                |
    | flex attention, compiled, static 16 x 2048 | 142,699         | 0.13-0.30 (row use ~0.5)                 |
    | SDPA, eager                                |  64,351         | 0.26-0.70                                |
    | plain dense loop / + torch.compile         | 152,053 / 228,268 | 0.216 / 0.144                          |

The steady steps were fast; new shapes recompiling mid-run were not. Hence flat micro-batches
(engine/training.flatten): gpu_check.py then measured 1 recompile in 30 steps, 149,444 tokens/s steady.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from gpu_check import (  # noqa: E402
    ROW,
    SMOLLM2,
    TOY,
    Report,
    dev,
    flops_per_token,
    peak_since,
    random_llama,
    reset_peak,
    sync,
    tokenized,
)

from herd.engine import attention, training  # noqa: E402
from herd.engine.training import IGNORE_INDEX, Batch, LoopConfig, train  # noqa: E402

CEILING = 764.6e12  # measured on the H200 by gpu_check.py's 8192^3 bf16 products (2026-12-04)


def plain_dense(rep: Report, config: dict, rows: int, width: int, steps: int, compiled: bool) -> None:
    """The field's plain loop: dense random rows, HF's own loss (full logits), bf16 autocast, fused AdamW."""
    base = reset_peak()
    model = random_llama(config).train()
    fwd = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=dev().type == "cuda")
    ids = torch.randint(0, config["vocab_size"], (rows, width), device=dev())
    times = []
    for _ in range(steps + 3):
        t = time.perf_counter()
        with torch.autocast(dev().type, dtype=torch.bfloat16):
            loss = fwd(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - t)
    s = statistics.median(times[3:])
    tps = rows * width / s
    rep.add("plain", system=f"plain dense loop{' + torch.compile' if compiled else ''}, {rows} x {width}",
            useful_tokens_per_s=tps, mfu=tps * flops_per_token(config, width) / CEILING,
            median_step_s=s, first_steps_s=[round(x, 3) for x in times[:3]], peak_gib=peak_since(base) / 2**30)
    del model, fwd, opt


def static_batches(real):
    """micro_batches padded to micro_batch_rows x row_len: one shape for every compiled call."""

    def padded(items, cfg, pad_id, rank, world, width_step=training.TRIM):
        mbs, n = real(items, cfg, pad_id, rank, world, width_step)
        out = []
        for b in mbs:
            r, w = cfg.micro_batch_rows, cfg.row_len
            ids = torch.full((r, w), pad_id, dtype=b.input_ids.dtype)
            lab = torch.full((r, w), IGNORE_INDEX, dtype=b.labels.dtype)
            pos = torch.arange(w).repeat(r, 1)
            rr, ww = b.input_ids.shape
            ids[:rr, :ww], lab[:rr, :ww], pos[:rr, :ww] = b.input_ids, b.labels, b.position_ids
            pos[:rr, ww:] = torch.arange(w - ww)  # the pad tail: a record of its own
            rt = torch.zeros(r, dtype=b.row_tokens.dtype)
            rt[:rr] = b.row_tokens
            out.append(Batch(ids, lab, pos, rt, b.n_tokens))
        return out, n

    return padded


def herd_variant(rep: Report, items, config: dict, *, impl: str, compile: str, static: bool, steps: int,
                 rows: int, row_len: int, profile_out: Path | None = None) -> None:
    base = reset_peak()
    model = random_llama(config)
    attention.apply(model, impl)
    cfg = LoopConfig(lr=2e-5, epochs=100, max_steps=steps, global_batch=160, micro_batch_rows=rows,
                     row_len=row_len, precision="bf16" if dev().type == "cuda" else "fp32", progress=False,
                     warmup_ratio=0.0, compile=compile, seed=0)
    real = training.micro_batches
    prof = None
    if profile_out is not None:
        from torch.profiler import ProfilerActivity, profile, schedule

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        prof = profile(activities=acts, schedule=schedule(wait=steps - 4, warmup=1, active=2, repeat=1))
        prof.start()
    try:
        if static:
            training.micro_batches = static_batches(real)
        with tempfile.TemporaryDirectory() as d:
            res = train(model, items, cfg, d, pad_id=0, on_log=(lambda rec: prof.step()) if prof else None)
    finally:
        training.micro_batches = real
        if prof is not None:
            prof.stop()
    el = [h["elapsed"] for h in res.history]
    dts = [b - a for a, b in zip([0.0] + el[:-1], el)]
    toks = [h["tokens"] for h in res.history]
    skip = 3
    # the profiler's warm-up and active steps (steps - 4 .. steps - 2) are slower
    timed = [i for i in range(skip, len(dts)) if prof is None or not steps - 4 <= i <= steps - 2]
    tps = sum(toks[i] for i in timed) / sum(dts[i] for i in timed)
    rep.add("herd", system=f"herd {impl}, compile {compile}{', static shapes' if static else ''}, {rows} x {row_len}",
            useful_tokens_per_s=tps, mfu=tps * flops_per_token(config, row_len) / CEILING,
            step_s=[round(x, 3) for x in dts], row_use=[h["row_use"] for h in res.history][:6],
            tokens_per_step=statistics.mean(toks), peak_gib=peak_since(base) / 2**30)
    if prof is not None:
        ka = prof.key_averages()
        sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
        table = ka.table(sort_by=sort, row_limit=30, max_name_column_width=70)
        cpu_table = ka.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=70)
        profile_out.mkdir(parents=True, exist_ok=True)
        (profile_out / "profile.txt").write_text(table + "\n\n" + cpu_table)
        print(table, "\n", cpu_table, flush=True)
        try:
            prof.export_chrome_trace(str(profile_out / "trace.json.gz"))
        except Exception as e:  # the table is what matters
            print("trace export failed:", e)
    del model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer")
    ap.add_argument("--data")
    ap.add_argument("--out", default=os.environ.get("OUT", "runs/gpu-probe"))
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated part numbers to run (default: all)")
    args = ap.parse_args()
    from herd.base import load_tokenizer, smollm2_tokenizer_dir
    from herd.data import load_examples

    rep = Report(Path(args.out))
    tok = load_tokenizer(Path(args.tokenizer) if args.tokenizer else smollm2_tokenizer_dir())
    data = Path(args.data) if args.data else Path(__file__).resolve().parents[2] / "shared" / "data" / \
        "llamafactory_alpaca_en_demo" / "alpaca_en_demo.json"
    config = TOY if args.smoke else SMOLLM2
    row_len = 256 if args.smoke else ROW
    items = tokenized(tok, load_examples(data, "alpaca"), row_len)
    steps = 6 if args.smoke else 14
    flex = "flex_attention" if not args.smoke else "sdpa"  # flex on a CPU compiles for minutes
    parts = [
        ("1", lambda: herd_variant(rep, items, config, impl=flex, compile="on", static=False, steps=steps,
                                   rows=16, row_len=row_len, profile_out=Path(args.out))),
        ("2", lambda: plain_dense(rep, config, 16 if not args.smoke else 2, row_len, 6, compiled=False)),
        ("3", lambda: herd_variant(rep, items, config, impl="sdpa", compile="on", static=False, steps=steps,
                                   rows=16, row_len=row_len)),
        ("4", lambda: herd_variant(rep, items, config, impl=flex, compile="off", static=False, steps=steps,
                                   rows=16, row_len=row_len)),
        ("5", lambda: herd_variant(rep, items, config, impl=flex, compile="on", static=True, steps=steps,
                                   rows=16, row_len=row_len)),
        ("6", lambda: herd_variant(rep, items, config, impl="sdpa", compile="off", static=False, steps=steps,
                                   rows=16, row_len=row_len)),
        ("7", lambda: plain_dense(rep, config, 16 if not args.smoke else 2, row_len, 6, compiled=True)),
    ]
    only = set(filter(None, args.only.split(",")))
    for name, run in parts:
        if only and name not in only:
            continue
        t = time.perf_counter()
        try:
            run()
        except Exception as e:
            rep.add(f"part {name}", error=f"{type(e).__name__}: {e}"[:800], trace=traceback.format_exc()[-2000:])
        rep.add("timing", part=name, seconds=time.perf_counter() - t)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
