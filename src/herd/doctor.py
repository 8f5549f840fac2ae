"""``herd doctor``: what a user needs to know before a long run, in one screen.

Each check is a row (status, what, finding). ``fail`` means the demo or the tests cannot work as set up
(no embedded base, a llama.cpp build this CPU cannot run); ``warn`` means they will work, slower or with
less (no native bf16, less free memory than the demo's peak, no shared data for some recipes).
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from herd.core.machine import capped, cpu_name, features_line, isa_cap

# The demo's peak RSS (/usr/bin/time -v, 2 cores, the README's table): 2.98 GB on an AVX2-only EPYC in fp32
# and 2.94-3.16 GB on an AVX-512 EPYC in bf16 since the memory work of issue 18 (was 7.9 and 8.9 GB).
DEMO_PEAK_GB = 3.2


@dataclass
class Check:
    status: str  # "ok", "warn", "fail" or "info"
    what: str
    finding: str


def _meminfo() -> dict[str, int]:
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def cpu_checks(flags: set[str]) -> list[Check]:
    """The CPU's features as torch may use them (an ``ATEN_CPU_CAPABILITY`` cap applied, and named)."""
    return [Check("info", "cpu", f"{cpu_name()} ({platform.machine()})"),
            Check("ok" if "avx2" in capped(flags, isa_cap()) or platform.machine() != "x86_64" else "warn",
                  "cpu features", features_line(flags))]


def precision_checks() -> list[Check]:
    from herd.engine.training import resolve_precision

    auto = resolve_precision("auto")
    return [Check("info", "precision", "training autocasts to bf16 (native on this hardware)" if auto is not None
                  else "training runs in fp32 (no native bf16 here; emulated bf16 was measured 4x slower)")]


def thread_checks() -> list[Check]:
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [Check("info", "threads", f"{usable} usable cores of {os.cpu_count()}; torch uses "
                                     f"{torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")]


def torch_checks() -> list[Check]:
    import torch

    cpu_kernels = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")()
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
    if torch.cuda.is_available():
        device = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = "Apple MPS"
    else:
        device = "cpu"
    return [Check("ok", "torch", f"{torch.__version__} ({build}); CPU kernels {cpu_kernels}; device {device}")]


def llamacpp_checks(flags: set[str]) -> list[Check]:
    """Installed? Built for which variant? Does that variant fit this CPU? Does it load (in a child)?"""
    import importlib.util

    from herd.core import llamacpp
    from herd.core.native import NativeCrash, llamacpp_system_info

    want = llamacpp.wanted()
    if importlib.util.find_spec("llama_cpp") is None:
        return [Check("warn", "llama.cpp", f"not built (the GGUF tests and `serve --backend llamacpp` need it); "
                                           f"`make setup-llamacpp` builds the {want['variant']} variant")]
    record = llamacpp.installed_record() or {}
    variant = record.get("variant", "unknown (not built by herd)")
    missing = sorted(f for f in record.get("isa", []) if flags and f not in flags)
    rows = []
    try:
        info = llamacpp_system_info()
    except NativeCrash as e:
        return [Check("fail", "llama.cpp", f"{variant} build: {e}")]
    cpu_line = next((part for part in info["system_info"].split("|") if "CPU" in part), "")
    isa = " ".join(m.group(1) for m in re.finditer(r"(\w+) = 1", info["system_info"]))
    rows.append(Check("fail" if missing else "ok", "llama.cpp",
                      f"llama-cpp-python {info['version']}, {variant} variant"
                      + (f" (built with {', '.join(record['isa'])})" if record.get("isa") else "")
                      + f"; runs: {isa or cpu_line.strip() or 'see system info'}"
                      + (f"; this CPU lacks {', '.join(missing)}: `make setup-llamacpp` rebuilds it" if missing else "")))
    if not missing and record.get("cmake_args") != llamacpp.cmake_args(want):
        rows.append(Check("warn", "llama.cpp rebuild", f"this CPU would get the {want['variant']} variant; "
                                                     "`make setup-llamacpp` rebuilds it"))
    return rows


def memory_checks() -> list[Check]:
    mem = _meminfo()
    if not mem:
        return [Check("info", "memory", "unknown (no /proc/meminfo)")]
    avail, total = mem.get("MemAvailable", 0) / 2**30, mem.get("MemTotal", 0) / 2**30
    ok = avail >= DEMO_PEAK_GB
    return [Check("ok" if ok else "warn", "memory",
                  f"{avail:.1f} GiB free of {total:.1f}; the demo peaks at about {DEMO_PEAK_GB:.1f} GB"
                  + ("" if ok else " (it may swap or be killed)"))]


def base_checks() -> list[Check]:
    from herd.base import smollm2_gguf_path
    from herd.core.errors import HerdError

    try:
        path = smollm2_gguf_path()
    except HerdError as e:
        return [Check("fail", "embedded base", str(e))]
    return [Check("ok", "embedded base", f"smollm2: {path} ({path.stat().st_size / 2**20:.0f} MiB)")]


def data_checks() -> list[Check]:
    """The shared datasets each shipped recipe names (read from the YAML text: no recipe is loaded)."""
    from herd.core.paths import repo_root, shared_data_dir

    root = shared_data_dir()
    if not root.is_dir():
        return [Check("warn", "shared data", f"not found at {root} (set HERD_DATA, or pass --data files)")]
    ready, missing = [], []
    for recipe in sorted((repo_root() / "recipes").glob("*.yaml")):
        refs = set(re.findall(r"shared:([\w./-]+)", recipe.read_text()))
        lost = sorted(r for r in refs if not (root / r).exists())
        (missing if lost else ready).append(recipe.stem + (f" (missing {', '.join(lost)})" if lost else ""))
    rows = [Check("ok", "shared data", f"{root}; recipes with their data: {', '.join(ready) or 'none'}")]
    if missing:
        rows.append(Check("warn", "shared data", "incomplete for: " + "; ".join(missing)))
    return rows


def run_checks() -> list[Check]:
    from herd.core import llamacpp

    flags = llamacpp.cpu_flags()
    return (cpu_checks(flags) + precision_checks() + thread_checks() + torch_checks() + llamacpp_checks(flags) + memory_checks()
            + base_checks() + data_checks())


def report(checks: list[Check]) -> str:
    width = max(len(c.what) for c in checks)
    return "\n".join(f"{c.status.upper():<5} {c.what:<{width}}  {c.finding}" for c in checks)


def main() -> int:
    checks = run_checks()
    print(report(checks))
    failed = [c for c in checks if c.status == "fail"]
    print(f"\n{len(failed)} problem(s)" + (": fix the FAIL rows before a long run" if failed else "; ready"))
    return 1 if failed else 0


