"""What machine a number was measured on: CPU name, instruction sets, torch threads (one line).

Benchmarks print it in their header and every scorecard records it under ``run.machine``, because a
speed or wall-time figure means nothing without the machine (AVX2-only laptops differ ~5x from an
AVX-512 + AMX server)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_features(flags: set[str]) -> str:
    """``AVX2 yes, AVX-512 no, native bf16 no, AMX no`` from /proc/cpuinfo flags."""
    def has(*names: str) -> str:
        return "yes" if all(n in flags for n in names) else "no"

    bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    return (f"AVX2 {has('avx2', 'fma')}, AVX-512 {has('avx512f')}, native bf16 {'yes' if bf16 else 'no'}, "
            f"AMX {has('amx_tile')}")


def cpu_summary() -> str:
    """One line for a benchmark's header or a scorecard: the machine a figure was measured on."""
    import torch

    from herd.core.llamacpp import cpu_flags

    flags = cpu_flags()
    features = cpu_features(flags) if flags else "unknown (no /proc/cpuinfo)"
    return (f"machine: {cpu_name()}, {os.cpu_count()} logical cores, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads; {features}")
