"""Memory of one full fine-tuning step, phase by phase: after the forward, the backward, the optimizer.

Loads SmolLM2, trains ``--rows`` random 512-token rows for ``--steps`` steps (the first compiles and
creates AdamW's state) and prints RSS and the peak since the step began (the kernel's high-water mark,
reset per step through /proc/self/clear_refs, so Linux only). The levers it measures: ``--budget``
(the share of a compiled layer's activations kept for the backward, engine/compiling.py), ``--compile``,
``--amp`` (bf16 autocast or fp32), ``--state`` (AdamW's moments in fp32 or bf16) and, from outside,
the glibc tunables, e.g. ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1048576``.

    .venv/bin/python bench/step_memory.py --rows 4 --budget 0
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from herd.base import load_model, resolve_base  # noqa: E402
from herd.core.phases import current_rss_mb, process_peak_mb, reset_peak_rss, trim_heap  # noqa: E402
from herd.engine.compiling import compiled_layers  # noqa: E402
from herd.engine.training import MaskedLMLoss, adamw, param_groups  # noqa: E402


def _row(step: int, point: str, extra: str = "") -> str:
    return f"{step:>4} {point:<10} {current_rss_mb():>8.0f} {process_peak_mb():>8.0f}{extra}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--budget", type=float, default=1.0)
    ap.add_argument("--compile", type=int, default=1)
    ap.add_argument("--amp", type=int, default=1, help="1: bf16 autocast, 0: fp32")
    ap.add_argument("--state", default="fp32", choices=["fp32", "bf16"], help="AdamW's moments")
    ap.add_argument("--widths", default="512",
                    help="row widths, cycled over the steps (a derive's rows vary: each new width recompiles)")
    a = ap.parse_args()
    from herd.core.machine import cpu_summary

    print(cpu_summary())
    model = load_model(resolve_base("smollm2"))
    model.train()
    loss_fn = MaskedLMLoss(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(param_groups(params, 0.0), lr=1e-5, state=a.state)
    g = torch.Generator().manual_seed(0)
    widths = [int(w) for w in a.widths.split(",")]
    print(f"{a.rows} rows x {a.widths}, budget {a.budget:g}, compile {a.compile}, {'bf16' if a.amp else 'fp32'}")
    print(f"{'step':>4} {'point':<10} {'RSS MB':>8} {'peak MB':>8}")
    with compiled_layers(model.model.layers, bool(a.compile), a.budget):
        for s in range(a.steps):
            reset_peak_rss()
            w = widths[s % len(widths)]
            ids = torch.randint(0, model.config.vocab_size, (a.rows, w), generator=g)
            pos = torch.arange(w).expand(a.rows, w)
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(a.amp)):
                loss = loss_fn(ids, pos, ids)
            print(_row(s, "forward"))
            loss.backward()
            print(_row(s, "backward"))
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            trim_heap()
            print(_row(s, "optimizer", f"   ({time.perf_counter() - t:.1f} s, width {w})"))


if __name__ == "__main__":
    main()
