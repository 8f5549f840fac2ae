"""Where a training step's time goes: herd's compiled step under torch.profiler, by kind of work.

The SFT bench (``bench/sft_throughput.py``) gives tokens/s and model FLOPs utilisation; this says what
the rest of the step is. Same data, LoRA config and loop as that bench. Each method trains once to
compile (not profiled), then a fresh model trains ``--steps`` steps under the profiler, with inductor's
generated kernels named in the trace (``cpp.enable_kernel_profile``). Self CPU time of the main thread
is grouped into matmuls (with their measured GFLOP/s, against this machine's ceiling for the model's
shapes from the SFT bench), attention, inductor's fused elementwise kernels, the loss, the optimizer,
random numbers, copies, and the rest; the top operators follow.

    .venv/bin/python bench/step_profile.py [--method lora,full] [--steps 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import sft_throughput as sft  # noqa: E402

from herd.base import load_model, load_tokenizer, resolve_base  # noqa: E402
from herd.engine.training import resolve_precision, train  # noqa: E402

KINDS = [  # first match wins; names are aten's, inductor's (cpp_fused_*) and herd's
    ("attention", ("scaled_dot_product", "flash_attention", "_efficient_attention")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "mkldnn", "aten::_weight_int")),
    ("loss", ("cross_entropy", "log_softmax", "nll_loss", "logsumexp")),
    ("optimizer", ("_foreach", "adam", "Optimizer", "lerp", "addcdiv", "addcmul")),
    ("random numbers", ("aten::random", "aten::bernoulli", "aten::rand", "aten::normal", "philox", "seed")),
    ("fused elementwise (inductor)", ("cpp_fused",)),
    ("copies and casts", ("aten::copy_", "aten::to", "aten::_to_copy", "aten::clone", "aten::cat",
                          "aten::contiguous", "aten::fill_", "aten::zero_", "aten::empty")),
]


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k.lower() in low for k in keys):
            return kind
    return "other"


def run(ref, items, method: str, steps: int, precision: str, per_step: int, profile: bool):
    tok, model, cfg = sft.herd_setup(ref, method, steps, precision, per_step)  # the SFT bench's run, compiled
    with tempfile.TemporaryDirectory() as d:
        if not profile:
            return train(model, items, cfg, d, pad_id=tok.pad_token_id), None, sft.flops_per_token(model, method)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True) as prof:
            t = time.perf_counter()
            res = train(model, items, cfg, d, pad_id=tok.pad_token_id)
            res.wall = time.perf_counter() - t
    return res, prof, sft.flops_per_token(model, method)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="smollm2")
    ap.add_argument("--method", default="lora,full", help="comma-separated: lora, full")
    ap.add_argument("--steps", type=int, default=3, help="profiled optimizer steps per method")
    ap.add_argument("--per-step", type=int, default=12, help="examples per step (≈4 packed rows, as the SFT bench)")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    import torch._inductor.config as inductor_config

    inductor_config.cpp.enable_kernel_profile = True  # inductor's kernels appear by name in the trace
    ref = resolve_base(args.base)
    items = sft.data(load_tokenizer(ref), 400)
    amp = resolve_precision("auto")
    precision = "bf16" if amp == torch.bfloat16 else "fp32"
    print(sft.machine())
    ceiling = sft.matmul_ceiling(load_model(ref), amp)
    print(f"matmul ceiling on the model's shapes ({precision}): {ceiling / 1e9:.0f} GFLOP/s")
    for method in args.method.split(","):
        run(ref, items, method, 2, precision, args.per_step, profile=False)  # compiles; not profiled
        res, prof, fpt = run(ref, items, method, args.steps, precision, args.per_step, profile=True)
        tokens = sum(h["tokens"] for h in res.history)
        by_kind: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        ops = []
        for ev in prof.key_averages():
            self_s = ev.self_cpu_time_total / 1e6
            if self_s <= 0:
                continue
            k = kind_of(ev.key)
            by_kind[k][0] += self_s
            by_kind[k][1] += ev.flops or 0
            ops.append((self_s, ev.count, ev.key, k))
        total = sum(v[0] for v in by_kind.values())
        print(f"\n{method}: {args.steps} steps, {tokens} useful tokens in {res.wall:.1f} s under the profiler "
              f"({tokens / res.wall:.1f} tok/s, model FLOPs {tokens * fpt / res.wall / 1e9:.0f} GFLOP/s); "
              f"self CPU time of the main thread {total:.1f} s")
        print(f"  {'kind':<30} {'seconds':>8} {'share':>6} {'GFLOP/s':>8}")
        for k, (s, fl) in sorted(by_kind.items(), key=lambda kv: -kv[1][0]):
            rate = f"{fl / s / 1e9:.0f}" if fl and s else "-"
            print(f"  {k:<30} {s:>8.2f} {s / total:>6.1%} {rate:>8}")
        print(f"  top {args.top} operators by self time:")
        for s, n, name, k in sorted(ops, reverse=True)[: args.top]:
            print(f"    {s:>7.2f} s {s / total:>6.1%} {n:>6}x  {name[:70]}  [{k}]")


if __name__ == "__main__":
    main()
