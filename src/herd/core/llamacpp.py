"""Build llama-cpp-python for the CPU it lands on (stdlib only; ``make setup-llamacpp`` runs it).

Why not ``-march=native``: ggml's AMX kernel crashes on some AMX CPUs, so the instruction sets are
named one by one. Why not a fixed list: a build with AVX-512 dies with SIGILL on the AVX2-only CPUs
of most laptops and many cloud machines. Why not llama.cpp's run-time variants (``GGML_BACKEND_DL``
with ``GGML_CPU_ALL_VARIANTS``): llama-cpp-python does not load dynamic backends
(abetlen/llama-cpp-python#2069), so such a build finds no backend at all.

So the flags are derived from the CPU's reported features at build time, the wheel is cached under
a key of those flags (pip's own wheel cache ignores ``CMAKE_ARGS`` and would hand an AVX-512 wheel to
an AVX2 machine), and a record of the build lands next to the installed package, where
``herd doctor`` reads it. Re-running is a no-op while the record matches this CPU.

``HERD_LLAMACPP_ISA=avx2`` (or ``sse4``, ``avx``, ``avx512``) caps the variant below what the CPU has:
that is how an AVX-512 machine builds and tests the AVX2-only variant.

    python -m herd.core.llamacpp [--check] [--print-flags]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from herd.core.paths import cache_dir

VERSION = "0.3.36"
RECORD = "herd-build.json"

# x86-64 tiers, lowest first: each tier's ggml options and the /proc/cpuinfo flags it needs.
TIERS: list[tuple[str, dict[str, str]]] = [
    ("sse4", {}),
    ("avx", {"GGML_AVX": "avx"}),
    ("avx2", {"GGML_AVX2": "avx2", "GGML_FMA": "fma", "GGML_F16C": "f16c", "GGML_BMI2": "bmi2"}),
    ("avx512", {"GGML_AVX512": "avx512f"}),
]
# Extensions enabled only when their tier is in and the CPU reports them. AMX is never enabled.
EXTENSIONS: dict[str, tuple[str, str]] = {
    "GGML_AVX_VNNI": ("avx2", "avx_vnni"),
    "GGML_AVX512_VBMI": ("avx512", "avx512vbmi"),
    "GGML_AVX512_VNNI": ("avx512", "avx512_vnni"),
    "GGML_AVX512_BF16": ("avx512", "avx512_bf16"),
}


@functools.cache
def _read_cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_flags() -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo names them (empty where there is no such file). Read once
    per process: ``precision: auto`` asks on every micro-batch's autocast."""
    return set(_read_cpu_flags())


def wanted() -> dict:
    """The build this machine should have (``HERD_LLAMACPP_ISA`` caps it)."""
    return plan(cpu_flags(), cap=os.environ.get("HERD_LLAMACPP_ISA") or None)


def plan(flags: set[str], machine: str | None = None, cap: str | None = None) -> dict:
    """The variant name and cmake options for a CPU with ``flags``, capped at tier ``cap``."""
    machine = machine or platform.machine()
    options = {"GGML_NATIVE": "OFF"}
    if machine not in ("x86_64", "AMD64", "i686"):
        # ARM and others: ggml's portable baseline for the architecture (no -march=native).
        return {"machine": machine, "variant": f"{machine}-baseline", "options": options, "isa": []}
    names = [name for name, _ in TIERS]
    if cap and cap not in names:
        raise SystemExit(f"HERD_LLAMACPP_ISA={cap!r}: expected one of {', '.join(names)}")
    if cap:
        # A capped build stands for the plainest CPU of that tier: no extensions beyond its flags.
        allowed = {flag for name, needs in TIERS[: names.index(cap) + 1] for flag in needs.values()}
        flags = flags & allowed
    variant, isa = "sse4", []
    for name, needs in TIERS:
        if cap and names.index(name) > names.index(cap):
            break
        if not all(flag in flags for flag in needs.values()):
            break
        variant = name
        isa += list(needs.values())
    for name, needs in TIERS:
        for option in needs:
            options[option] = "ON" if names.index(name) <= names.index(variant) else "OFF"
    for option, (tier, flag) in EXTENSIONS.items():
        on = names.index(tier) <= names.index(variant) and flag in flags
        options[option] = "ON" if on else "OFF"
        if on:
            isa.append(flag)
    for option in ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16"):
        options[option] = "OFF"
    return {"machine": machine, "variant": variant, "options": options, "isa": sorted(isa)}


def cmake_args(build: dict) -> str:
    return " ".join(f"-D{k}={v}" for k, v in sorted(build["options"].items()))


def installed_record() -> dict | None:
    """The build record next to the installed llama_cpp package (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / RECORD
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def build_and_install(build: dict, *, install: bool = True) -> None:
    key = hashlib.sha256(f"{VERSION} {cmake_args(build)}".encode()).hexdigest()[:16]
    cache = cache_dir() / "llamacpp-wheels" / key
    wheels = sorted(cache.glob("llama_cpp_python-*.whl"))
    if not wheels:
        print(f"llama.cpp: building llama-cpp-python {VERSION} for {build['variant']} "
              f"(about 8 minutes on 2 cores): {cmake_args(build)}", flush=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache.parent) as tmp:  # same filesystem: the move is atomic
            env = dict(os.environ, CMAKE_ARGS=cmake_args(build))
            subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-cache-dir",
                            "-w", tmp, f"llama-cpp-python=={VERSION}"], check=True, env=env)
            cache.mkdir(parents=True, exist_ok=True)
            for whl in Path(tmp).glob("*.whl"):
                os.replace(whl, cache / whl.name)
        wheels = sorted(cache.glob("llama_cpp_python-*.whl"))
    else:
        print(f"llama.cpp: cached {build['variant']} wheel {wheels[-1]}", flush=True)
    if not install:
        return
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall",
                    str(wheels[-1])], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "diskcache"], check=True)
    import importlib
    import importlib.util

    importlib.invalidate_caches()
    spec = importlib.util.find_spec("llama_cpp")
    assert spec and spec.origin, "llama_cpp did not install"
    record = dict(build, version=VERSION, cmake_args=cmake_args(build), wheel=wheels[-1].name)
    (Path(spec.origin).parent / RECORD).write_text(json.dumps(record, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the installed build does not match")
    ap.add_argument("--print-flags", action="store_true", help="print the cmake options and exit")
    ap.add_argument("--cache-only", action="store_true", help="build the wheel into the cache, install nothing")
    args = ap.parse_args(argv)
    build = wanted()
    if args.print_flags:
        print(cmake_args(build))
        return 0
    if args.cache_only:
        build_and_install(build, install=False)
        return 0
    have = installed_record()
    current = bool(have) and have.get("cmake_args") == cmake_args(build) and have.get("version") == VERSION
    if current:
        print(f"llama.cpp: llama-cpp-python {VERSION} built for {build['variant']} is installed")
        return 0
    if args.check:
        print(f"llama.cpp: installed build {None if have is None else have.get('variant', 'unknown')} "
              f"does not match this CPU's {build['variant']}")
        return 1
    build_and_install(build)
    print(f"llama.cpp: installed the {build['variant']} build ({', '.join(build['isa']) or 'baseline'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
