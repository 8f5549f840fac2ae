"""LoRA's adapter dropout inside compiled layers, on one mask and on whole LoRA training steps, one process.

Variants (``--variants``, any of):
- ``inductor``: inductor's own dropout (a release before the hash, a frozen copy here): a Philox number
  per element in scalar code.
- ``independent``: herd's hashed mask (engine/lora.py), one independent mask per adapted projection, as
  peft draws them (the release before mask sharing).
- ``shared``: today: one hashed mask per input, shared by q/k/v and by gate/up.

All are inverted dropout with the same p. The training runs alternate (a, b, a, b, ...) so all see the
same machine load; the figure is useful tokens/s as in ``bench/sft_throughput.py`` (same data, LoRA r 16,
dropout 0.05). Ratios are each variant against the first one named.

    .venv/bin/python bench/lora_dropout.py [--variants independent,shared] [--rounds 2] [--steps 6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import sft_throughput as sft  # noqa: E402

from herd.base import load_tokenizer, resolve_base  # noqa: E402
from herd.engine import lora  # noqa: E402
from herd.engine.training import resolve_precision  # noqa: E402

TODAY = lora.FastDropout.forward
SHARE = lora.share_masks


def previous_forward(self, x: torch.Tensor) -> torch.Tensor:
    """The previous release's FastDropout.forward: inductor's dropout when traced."""
    if self.training and self.threshold and torch.compiler.is_compiling():
        return nn.functional.dropout(x, self.p, training=True)
    return TODAY(self, x)


VARIANTS = {  # name: (FastDropout.forward, share_masks) while that variant runs
    "inductor": (previous_forward, lambda model: 0),
    "independent": (TODAY, lambda model: 0),
    "shared": (TODAY, SHARE),
}


def use(variant: str) -> None:
    lora.FastDropout.forward, lora.share_masks = VARIANTS[variant]


def mask_ms(forward, shape=(2048, 576), dtype=torch.bfloat16, repeats: int = 50) -> float:
    """Milliseconds per compiled RMSNorm + dropout of one ``shape`` activation (the fused kernel's shape)."""
    lora.FastDropout.forward = forward
    torch._dynamo.reset()
    d = lora.FastDropout(0.05)
    w = torch.randn(shape[-1], dtype=dtype)

    def norm_drop(x):
        xf = x.float()
        return d((xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5) * w.float()).to(x.dtype))

    f = torch.compile(norm_drop)
    x = torch.randn(*shape, dtype=dtype)
    for _ in range(3):
        f(x)
    t = time.perf_counter()
    for _ in range(repeats):
        f(x)
    return (time.perf_counter() - t) / repeats * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="smollm2")
    ap.add_argument("--variants", default="independent,shared", help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per training run (after two warm-up steps)")
    args = ap.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := [v for v in variants if v not in VARIANTS]:
        ap.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    torch.set_num_threads(os.cpu_count() or 1)
    amp = resolve_precision("auto")
    precision = "bf16" if amp == torch.bfloat16 else "fp32"
    print(sft.machine())
    dtype = amp or torch.float32
    if "inductor" in variants:
        prev_ms, today_ms = mask_ms(previous_forward, dtype=dtype), mask_ms(TODAY, dtype=dtype)
        print(f"compiled RMSNorm + dropout 0.05, 2048 x 576 {precision}: inductor {prev_ms:.2f} ms, hashed "
              f"{today_ms:.2f} ms ({prev_ms / today_ms:.1f}x)")
    ref = resolve_base(args.base)
    items = sft.data(load_tokenizer(ref), 400)
    runs: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for name in variants:
            use(name)
            torch._dynamo.reset()  # each variant compiles its own layer graph
            r = sft.bench_herd(ref, items, args.steps, precision, 12, "lora", "on")
            runs[name].append(r["tokens_per_s"])
            print(f"  {name:<12} LoRA step, compiled: {r['tokens_per_s']:.1f} useful tokens/s "
                  f"(loss {r['final_loss']:.4f}, peak {r['peak_mb'] / 1024:.2f} GB; step s "
                  f"{' '.join(f'{x:.1f}' for x in r['step_seconds'])})", flush=True)
    use("shared")
    base = variants[0]
    for name in variants[1:]:
        ratios = [t / p for p, t in zip(runs[base], runs[name])]
        print(f"{name} / {base} over {args.rounds} alternating rounds: median {statistics.median(ratios):.2f}x "
              f"(each: {', '.join(f'{x:.2f}x' for x in ratios)})")


if __name__ == "__main__":
    main()
