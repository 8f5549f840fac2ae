"""What machine a number was measured on: CPU name, instruction sets, torch threads (one line).

Benchmarks print it in their header and every scorecard records it under ``run.machine``, because a
speed or wall-time figure means nothing without the machine (AVX2-only laptops differ ~5x from an
AVX-512 + AMX server).

An AVX-512 machine can compute as an AVX2-only one would: torch's own switches cap the instruction sets
of its kernels (``ATEN_CPU_CAPABILITY``, also read by inductor's generated code), of oneDNN (bf16 and AMX
matrix products) and of MKL (fp32 matrix products). ``bench/as-avx2 CMD`` sets all three. herd then
reads the CPU as the cap leaves it: no native bf16 (so ``precision: auto`` is fp32), and the machine line
says the features are capped. The same cores, caches and clock remain, so such a figure approximates an
AVX2 machine and is labelled as one; it is not a measurement of one."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The switch, its value for an AVX2 cap, and what computes without it.
AVX2_SWITCHES: dict[str, tuple[str, str]] = {
    "ATEN_CPU_CAPABILITY": ("avx2", "torch's kernels and inductor's code"),
    "ONEDNN_MAX_CPU_ISA": ("AVX2", "oneDNN's bf16 and AMX matrix products"),
    "MKL_ENABLE_INSTRUCTIONS": ("AVX2", "MKL's fp32 matrix products"),
}
# /proc/cpuinfo flags above each cap (prefixes): what a capped torch no longer uses.
_ABOVE = {"avx2": ("avx512", "amx", "avx10"), "default": ("avx", "amx", "fma", "f16c", "bmi2")}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def isa_cap() -> str | None:
    """``avx2`` or ``default`` where ``ATEN_CPU_CAPABILITY`` caps torch's kernels, else None."""
    value = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    return value if value in _ABOVE else None


def capped(flags: set[str], cap: str | None) -> set[str]:
    """``flags`` without those above ``cap`` (all of them where there is no cap)."""
    if cap is None:
        return set(flags)
    return {f for f in flags if not f.startswith(_ABOVE[cap])}


def effective_flags() -> set[str]:
    """The CPU's flags as torch may use them here: /proc/cpuinfo's, less what ``ATEN_CPU_CAPABILITY`` caps."""
    from herd.core.llamacpp import cpu_flags

    return capped(cpu_flags(), isa_cap())


def native_bf16(flags: set[str] | None = None) -> bool:
    """Whether bf16 matrix products run natively (AVX-512 bf16 or AMX), the condition for ``precision: auto``."""
    flags = effective_flags() if flags is None else flags
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cap_note(flags: set[str]) -> str:
    """Empty without a cap; else what it hides of ``flags`` and which of torch's switches are missing (a
    partial cap)."""
    cap = isa_cap()
    if cap is None:
        return ""
    hidden = sorted(flags - capped(flags, cap))
    note = f"capped at {cap.upper() if cap == 'avx2' else 'no vector extensions'} by ATEN_CPU_CAPABILITY"
    note += f" (the CPU has {len(hidden)} more: {', '.join(hidden[:4])}{', ...' if len(hidden) > 4 else ''})" \
        if hidden else " (the CPU has nothing above it)"
    if cap == "avx2":
        missing = [f"{name} unset, so {what} still use the CPU's best" for name, (value, what) in AVX2_SWITCHES.items()
                   if name != "ATEN_CPU_CAPABILITY" and os.environ.get(name, "").upper() != value]
        if missing:
            note += "; partial cap: " + "; ".join(missing) + " (bench/as-avx2 sets all three)"
    return note


def cpu_features(flags: set[str]) -> str:
    """``AVX2 yes, AVX-512 no, native bf16 no, AMX no`` from /proc/cpuinfo flags."""
    def has(*names: str) -> str:
        return "yes" if all(n in flags for n in names) else "no"

    return (f"AVX2 {has('avx2', 'fma')}, AVX-512 {has('avx512f')}, native bf16 {'yes' if native_bf16(flags) else 'no'}, "
            f"AMX {has('amx_tile')}")


def features_line(flags: set[str]) -> str:
    """The features of /proc/cpuinfo's ``flags`` as torch may use them here, and the cap where there is one."""
    if not flags:
        return "unknown (no /proc/cpuinfo)"
    note = cap_note(flags)
    return cpu_features(capped(flags, isa_cap())) + (f"; {note}" if note else "")


def cpu_summary() -> str:
    """One line for a benchmark's header or a scorecard: the machine a figure was measured on."""
    import torch

    from herd.core.llamacpp import cpu_flags

    return (f"machine: {cpu_name()}, {os.cpu_count()} logical cores, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads; {features_line(cpu_flags())}")
