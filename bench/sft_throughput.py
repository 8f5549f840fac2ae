"""SFT throughput: herd's training loop vs TRL's SFTTrainer, same machine, same run.

Same base (SmolLM2-135M-Instruct), same data (llamafactory_alpaca_en_demo rendered with the Alpaca
template, response-only loss), same LoRA config (r 16, alpha 32, dropout 0.05, all 7 projections),
same precision (the one herd's ``auto`` picks on this CPU), rows of at most 512 tokens. ``--lora-dropout 0``
runs both with no adapter dropout (LLaMA-Factory's, torchtune's and Unsloth's default; on the 2-core
AVX2 EPYC both ran 34-44 % faster without it, README). The figure is
USEFUL tokens per second: non-pad tokens that went through a training step, timed from the end of the
first (warm-up) step to the end of the last.

    .venv/bin/python bench/sft_throughput.py [--steps 8] [--trl-steps 16] [--base smollm2]

Prints both systems side by side and the ratio herd / TRL. Machines are shared and noisy: compare the
ratio, not absolute numbers, and rerun if the two systems' runs saw different load.

Also measured in the same run: this machine's matmul ceiling for the model's own shapes (the
projections and the LM head, forward and both backward products, in the training precision), and
herd's model FLOPs utilisation against it: 6N FLOPs per token for full fine-tuning (N = the parameters
that multiply: every linear layer and the LM head, not the embedding lookup), 4N + 6N_lora for LoRA
(the frozen weights need no weight gradient). ``--method full`` also times full fine-tuning.

``--budget 1,0`` runs each herd configuration once per activation budget (the share of a compiled
layer's activations kept for the backward; 0 recomputes them all, engine/compiling.py) and prints each
run's peak RSS beside its speed: the memory lever and its time cost, measured in one process.
``--state fp32,bf16`` does the same for AdamW's moments (bf16: stochastic rounding, engine/optimizers.py).
``--rounds 3`` runs TRL and each herd configuration three times, alternating, and prints the median
of the per-round ratios beside each round's: one run's ratio moves with the load of a shared machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from herd.base import load_model, load_tokenizer, resolve_base  # noqa: E402
from herd.core.paths import shared_data_dir  # noqa: E402
from herd.core.recipe import LoraSpec  # noqa: E402
from herd.data import load_examples  # noqa: E402
from herd.data.tokenize import tokenize_examples  # noqa: E402
from herd.engine.training import LoopConfig, resolve_precision, train  # noqa: E402
from herd.stages.sft import apply_lora  # noqa: E402
from herd.templates import IGNORE_INDEX, get_template  # noqa: E402

LORA = LoraSpec(r=16, alpha=32, dropout=0.05)
ROW = 512


def data(tok, n: int):
    exs = load_examples(shared_data_dir() / "llamafactory_alpaca_en_demo" / "alpaca_en_demo.json", "alpaca")
    items, _ = tokenize_examples(exs[:n], get_template("alpaca"), tok, ROW)
    return items


def herd_setup(ref, method: str, max_steps: int, precision: str, per_step: int, compile_: str = "on", *,
               budget: float = 1.0, state: str = "fp32"):
    """(tokenizer, model, loop config) of one herd run of this bench: seed 0, LoRA or full, 4-row micro-batches."""
    tok = load_tokenizer(ref)
    torch.manual_seed(0)
    model = load_model(ref)
    if method == "lora":
        model = apply_lora(model, LORA)
    cfg = LoopConfig(lr=2e-4 if method == "lora" else 2e-5, epochs=1, max_steps=max_steps, global_batch=per_step,
                     micro_batch_rows=4, row_len=ROW, precision=precision, progress=False, warmup_ratio=0.0,
                     compile=compile_, activation_budget=budget, optimizer_state=state)
    return tok, model, cfg


def bench_herd(ref, items, steps: int, precision: str, per_step: int, method: str = "lora",
               compile_: str = "on", budget: float = 1.0, state: str = "fp32") -> dict:
    from herd.core.phases import process_peak_mb, reset_peak_rss, trim_heap

    trim_heap()
    reset_peak_rss()
    tok, model, cfg = herd_setup(ref, method, steps + 2, precision, per_step, compile_, budget=budget, state=state)
    import tempfile

    compiles = []  # dynamo's compiled frames so far, after each step: a step that compiled is not steady state

    def count(rec: dict) -> None:
        compiles.append(_compiled_frames())

    with tempfile.TemporaryDirectory() as d:
        res = train(model, items, cfg, d, pad_id=tok.pad_token_id, on_log=count)
    h = res.history[1:]  # the first step compiles (and, with it, the second shape of a short last micro-batch)
    toks = sum(x["tokens"] for x in h[1:])
    secs = h[-1]["elapsed"] - h[0]["elapsed"]
    step_s = [b["elapsed"] - a["elapsed"] for a, b in zip(h, h[1:])]
    compiled_in = [b - a for a, b in zip(compiles[1:], compiles[2:])]
    label = (f"herd {method}, compile {compile_}" + (f", budget {budget:g}" if budget < 1 else "")
             + (f", {state} moments" if state != "fp32" else ""))
    return {"system": label, "steps": len(h) - 1, "method": method, "peak_mb": process_peak_mb(),
            "useful_tokens": toks, "seconds": secs, "tokens_per_s": toks / secs,
            "tokens_per_step": toks / (len(h) - 1), "final_loss": h[-1]["loss"],
            "flops_per_token": flops_per_token(model, method), "step_seconds": step_s, "compiled_in": compiled_in}


def _compiled_frames() -> int:
    """Frames dynamo has compiled in this process (a new graph, or a recompile for a new shape)."""
    from torch._dynamo.utils import counters

    return int(counters["frames"]["ok"])


def matmul_shapes(model) -> list[tuple[int, int]]:
    """(in, out) of every linear layer the model multiplies by, the LM head included."""
    from herd.engine.training import causal_lm

    lm = causal_lm(model)
    return [(m.in_features, m.out_features) for n, m in lm.named_modules()
            if isinstance(m, torch.nn.Linear) and "lora_" not in n]


def flops_per_token(model, method: str) -> float:
    n = sum(i * o for i, o in matmul_shapes(model))
    if method == "full":
        return 6.0 * n
    n_lora = sum(p.numel() for name, p in model.named_parameters() if p.requires_grad)
    return 4.0 * n + 6.0 * n_lora


def matmul_ceiling(model, dtype: torch.dtype | None, tokens: int = 2048, repeats: int = 3) -> float:
    """FLOP/s of this machine on the model's own matmuls: for each linear layer, the forward product and
    the two backward ones (input and weight gradients), ``tokens`` rows, best of ``repeats``."""
    dt = dtype or torch.float32
    count = Counter(matmul_shapes(model))
    shapes = sorted(count)
    best = 0.0
    for _ in range(repeats):
        flops, secs = 0.0, 0.0
        for (i, o) in shapes:
            x = torch.randn(tokens, i, dtype=dt)
            w = torch.randn(o, i, dtype=dt)
            gy = torch.randn(tokens, o, dtype=dt)
            x @ w.t()  # warm
            t = time.perf_counter()
            x @ w.t()
            gy @ w
            gy.t() @ x
            dt_s = time.perf_counter() - t
            flops += 3 * 2 * tokens * i * o * count[(i, o)]
            secs += dt_s * count[(i, o)]
        best = max(best, flops / secs)
    return best


def bench_trl(ref, items, steps: int, precision: str, batch: int) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tok = load_tokenizer(ref)
    # TRL's completion-only format: prompt / completion strings from the same Alpaca render
    rows = []
    for it in items:
        cut = next(i for i, x in enumerate(it.labels) if x != IGNORE_INDEX)
        rows.append({"prompt": tok.decode(it.input_ids[:cut]), "completion": tok.decode(it.input_ids[cut:])})
    ds = Dataset.from_list(rows)
    counted = {"tokens": [], "t": []}

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            counted["t"].append(time.perf_counter())

    cfg = SFTConfig(output_dir="/tmp/herd-bench-trl", per_device_train_batch_size=batch, max_steps=steps + 1,
                    learning_rate=2e-4, logging_steps=1000, save_strategy="no", report_to=[], max_length=ROW,
                    completion_only_loss=True, packing=False, bf16=precision == "bf16", fp16=False,
                    gradient_checkpointing=False, use_cpu=not torch.cuda.is_available(),
                    dataloader_num_workers=0, seed=0, lr_scheduler_type="constant", warmup_steps=0)
    peft_cfg = LoraConfig(r=LORA.r, lora_alpha=LORA.alpha, lora_dropout=LORA.dropout,
                          target_modules=list(LORA.target_modules), task_type="CAUSAL_LM")
    torch.manual_seed(0)
    trainer = SFTTrainer(model=load_model(ref), args=cfg, train_dataset=ds, processing_class=tok,
                         peft_config=peft_cfg, callbacks=[Timer()])
    collate = trainer.data_collator

    def counting(features):
        batch_ = collate(features)
        counted["tokens"].append(int(batch_["attention_mask"].sum()) if "attention_mask" in batch_
                                 else int((batch_["input_ids"] != tok.pad_token_id).sum()))
        return batch_

    trainer.data_collator = counting
    trainer.train()
    toks = sum(counted["tokens"][1: steps + 1])
    secs = counted["t"][-1] - counted["t"][0]
    return {"system": f"TRL {__import__('trl').__version__} SFTTrainer (completion_only_loss, batch {batch})",
            "steps": steps, "useful_tokens": toks, "seconds": secs, "tokens_per_s": toks / secs,
            "tokens_per_step": toks / steps, "final_loss": None}


def main() -> None:
    global LORA
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="smollm2")
    ap.add_argument("--steps", type=int, default=6, help="timed herd steps (after one warm-up step)")
    ap.add_argument("--trl-steps", type=int, default=16, help="timed TRL steps (after one warm-up step)")
    ap.add_argument("--trl-batch", type=int, default=4)
    ap.add_argument("--per-step", type=int, default=12, help="examples per herd step (≈4 packed rows)")
    ap.add_argument("--method", choices=["lora", "full", "both"], default="both",
                    help="herd's runs: LoRA (the TRL comparison), full fine-tuning, or both")
    ap.add_argument("--compile", choices=["on", "off", "both"], default="on",
                    help="herd with the decoder layers compiled, eager, or both (to measure the lever)")
    ap.add_argument("--budget", default="",
                    help="comma-separated activation budgets for herd's compiled runs (default: 1, keep all)")
    ap.add_argument("--state", default="fp32",
                    help="comma-separated AdamW moment dtypes for herd's runs (fp32, bf16)")
    ap.add_argument("--no-trl", action="store_true", help="herd only (no TRL baseline, no ratio)")
    ap.add_argument("--lora-dropout", type=float, default=LORA.dropout,
                    help="LoRA input dropout for TRL and herd alike (default 0.05, TRL's demo config; "
                         "LLaMA-Factory, torchtune and Unsloth default to 0)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run TRL and every herd configuration this many times, alternating, and print the "
                         "median ratio over the rounds (one run's ratio moves with the machine's load)")
    args = ap.parse_args()
    LORA = LoraSpec(r=LORA.r, alpha=LORA.alpha, dropout=args.lora_dropout)
    torch.set_num_threads(os.cpu_count() or 1)
    ref = resolve_base(args.base)
    tok = load_tokenizer(ref)
    items = data(tok, 400)
    amp = resolve_precision("auto")
    precision = "bf16" if amp == torch.bfloat16 else "fp32"
    print(machine())
    print(f"base {ref.name}, {len(items)} records, precision {precision}, {torch.get_num_threads()} threads, "
          f"LoRA r{LORA.r} on {len(LORA.target_modules)} projections, dropout {LORA.dropout:g}")
    methods = ["lora", "full"] if args.method == "both" else [args.method]
    compiles = ["off", "on"] if args.compile == "both" else [args.compile]
    budgets = [float(b) for b in args.budget.split(",") if b] or [1.0]
    rounds: list[list[dict]] = []
    for rnd in range(args.rounds):  # TRL, then each herd configuration, then again: both see the same drift
        results = [] if args.no_trl else [bench_trl(ref, items, args.trl_steps, precision, args.trl_batch)]
        for method in methods:
            for comp in compiles:
                for budget in (budgets if comp == "on" else [1.0]):
                    for state in args.state.split(","):
                        results.append(bench_herd(ref, items, args.steps, precision, args.per_step, method, comp,
                                                  budget, state))
        if args.rounds > 1:
            for r in results:
                r["system"] += f" [round {rnd + 1}]"
        rounds.append(results)
    ceiling = matmul_ceiling(load_model(ref), amp)
    print(f"\nmatmul ceiling on the model's shapes ({precision}, 2048 rows, fwd + 2 bwd products): "
          f"{ceiling / 1e9:.0f} GFLOP/s")
    print(f"\n{'system':<72} {'steps':>5} {'tok/step':>9} {'useful tok/s':>13} {'MFU':>6} {'peak RSS':>9}")
    for results in rounds:
        for r in results:
            mfu = f"{r['tokens_per_s'] * r['flops_per_token'] / ceiling:.0%}" if "flops_per_token" in r else "-"
            peak = f"{r['peak_mb'] / 1024:.2f} GB" if "peak_mb" in r else "-"
            print(f"{r['system']:<72} {r['steps']:>5} {r['tokens_per_step']:>9.0f} {r['tokens_per_s']:>13.1f}"
                  f" {mfu:>6} {peak:>9}")
    print("\nseconds of each timed herd step (+N: dynamo compiled N frames in it, so it was not steady state):")
    for results in rounds:
        for r in results:
            if "step_seconds" in r:
                cells = [f"{t:.1f}" + (f"+{c}" if c else "") for t, c in zip(r["step_seconds"], r["compiled_in"])]
                print(f"  {r['system']:<70} {' '.join(cells)}")
    if not args.no_trl:
        for line in ratio_lines(rounds):
            print(line)


def ratio_lines(rounds: list[list[dict]]) -> list[str]:
    """Each LoRA configuration's ratio to TRL, per round (against that round's TRL run) and, over
    several rounds, the median of those ratios with their range: one run's ratio swings with the
    machine's load, a median over alternating runs does not hang on one quiet or busy minute."""
    lines = []
    for j, first in enumerate(rounds[0][1:], start=1):
        if first["method"] != "lora":
            continue
        ratios = [rs[j]["tokens_per_s"] / rs[0]["tokens_per_s"] for rs in rounds]
        label = first["system"].split(" [round")[0]
        if len(ratios) == 1:
            lines.append(f"ratio {label} / TRL: {ratios[0]:.2f}x useful training tokens per second")
        else:
            each = ", ".join(f"{x:.2f}x" for x in ratios)
            lines.append(f"ratio {label} / TRL over {len(ratios)} alternating rounds: median "
                         f"{statistics.median(ratios):.2f}x (each round: {each}; min {min(ratios):.2f}x)")
    return lines


def machine() -> str:
    """The CPU and what it can do (speed claims depend on it)."""
    from herd.core.machine import cpu_summary

    return cpu_summary()

if __name__ == "__main__":
    main()
