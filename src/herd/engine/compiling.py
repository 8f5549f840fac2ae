"""torch.compile for the training step, one decoder layer at a time, where it pays.

Why per layer: the 30 layers of SmolLM2 are one module class, so inductor compiles one graph (twice at
most: the last micro-batch of a step may have fewer rows) and reuses it for every layer, in ~20-35 s on
2 cores, instead of unrolling the whole model. What it buys on a CPU: the elementwise work around the
matmuls (RMSNorm, rotary, SiLU x up, the bf16 casts) fused into a few C++ loops, and fewer saved
activations (the partitioner recomputes cheap ops in the backward). Measured on SmolLM2, 4 rows x 512,
bf16 autocast on the 2-core Xeon: 5.1 s -> 3.9 s per micro-batch, peak RSS 6.1 -> 4.7 GB per step.

When: ``compile: auto`` turns it on for runs long enough to repay the one-time compile (at least
:data:`AUTO_MIN_STEPS` optimizer steps), with a C++ compiler present (inductor writes C++ on a CPU),
one process, no gradient checkpointing. ``HERD_COMPILE=0`` / ``1`` overrides ``auto`` everywhere.

Memory: a compiled layer's forward/backward split is chosen by AOTAutograd's partitioner, which can
keep only a fraction of the activations and recompute the rest in the backward
(``activation_memory_budget``; 0 = keep only each layer's inputs, i.e. activation checkpointing per
layer, with the recompute fused by inductor). Measured on SmolLM2, full fine-tuning, 4 rows x 512, bf16
autocast, 2-core EPYC (``bench/sft_throughput.py --method full --budget 1,0,1,0``): budget 0 cut the
bench's peak RSS 4.2-4.8 -> 3.4 GB for 6-16 % fewer tokens/s. So 1 (keep all) is the default and a
profile that must fit a small machine (the demo) asks for 0.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

AUTO_MIN_STEPS = 20
_compiled_budget: float | None = None  # the budget the cached layer graphs were split with
ENV = "HERD_COMPILE"


def _have_cxx() -> bool:
    return any(shutil.which(c) for c in (os.environ.get("CXX") or "g++", "g++", "c++", "clang++"))


def should_compile(setting: str | bool, *, steps: int, world: int, gradient_checkpointing: bool,
                   device: torch.device) -> tuple[bool, str]:
    """(compile?, why) for a run of ``steps`` optimizer steps."""
    env = os.environ.get(ENV, "").strip()
    if env in ("0", "1"):
        setting = env == "1"
    if setting is False or setting == "off":
        return False, "compile off"
    if world > 1:
        return False, "not under torchrun yet (FSDP2/DDP wrap the layers)"
    if gradient_checkpointing:
        return False, "gradient checkpointing is on"
    if device.type == "cpu" and not _have_cxx():
        return False, "no C++ compiler for inductor's CPU code (install g++)"
    if setting == "auto" and steps < AUTO_MIN_STEPS:
        return False, f"{steps} steps < {AUTO_MIN_STEPS}: the compile would cost more than it saves"
    return True, "decoder layers compiled (inductor)"


@contextmanager
def compiled_layers(layers: list[nn.Module], enabled: bool, budget: float = 1.0, shapes: int = 0
                    ) -> Iterator[None]:
    """Inside: each decoder layer runs compiled (``nn.Module.compile``: parameter names and the state
    dict are unchanged, so checkpoints and the saved artifact are the same files), keeping ``budget``
    of its activations for the backward. After: eager again. ``shapes``: how many input shapes the
    caller may present; dynamo's recompile limit is raised to cover them (past it, a layer runs eager)."""
    layers = list(layers) if enabled else []
    if not layers:
        yield
        return
    import torch._functorch.config as functorch_config

    global _compiled_budget
    if _compiled_budget not in (None, budget):  # dynamo would reuse the graphs split for the other budget
        torch._dynamo.reset()
    _compiled_budget = budget
    for layer in layers:
        layer.compile()
    limit = max(torch._dynamo.config.recompile_limit, shapes + 4)
    try:
        with functorch_config.patch(activation_memory_budget=float(budget)), \
                torch._dynamo.config.patch(recompile_limit=limit):
            yield
    finally:
        for layer in layers:
            layer._compiled_call_impl = None
