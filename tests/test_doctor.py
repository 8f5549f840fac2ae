"""The portable llama.cpp build plan, its check against the installed build, and ``herd doctor``."""

from __future__ import annotations

import importlib.util
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from herd import doctor
from herd.core import llamacpp
from herd.core.machine import capped, isa_cap

# /proc/cpuinfo flags of the machines in question (abridged to what matters).
EPYC_AVX2 = {"sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "popcnt"}  # Zen 2: no AVX-512, no VNNI
SAPPHIRE = EPYC_AVX2 | {"avx_vnni", "avx512f", "avx512vbmi", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8",
                        "amx_bf16"}
OLD_X86 = {"sse4_1", "sse4_2"}


def _on(build: dict) -> set[str]:
    return {k for k, v in build["options"].items() if v == "ON"}


def test_avx2_only_cpu_gets_no_avx512_and_no_amx():
    build = llamacpp.plan(EPYC_AVX2, machine="x86_64")
    assert build["variant"] == "avx2"
    assert _on(build) == {"GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2"}
    assert build["options"]["GGML_NATIVE"] == "OFF"  # never -march=native
    assert "-DGGML_AVX512=OFF" in llamacpp.cmake_args(build)


def test_avx512_cpu_gets_its_extensions_but_never_amx():
    build = llamacpp.plan(SAPPHIRE, machine="x86_64")
    assert build["variant"] == "avx512"
    assert {"GGML_AVX512", "GGML_AVX512_VBMI", "GGML_AVX512_VNNI", "GGML_AVX512_BF16", "GGML_AVX_VNNI"} <= _on(build)
    assert not {o for o in _on(build) if "AMX" in o}  # ggml's AMX kernel crashes on some CPUs
    assert set(build["isa"]) <= SAPPHIRE


def test_cap_stands_for_the_plainest_cpu_of_its_tier():
    """HERD_LLAMACPP_ISA=avx2 on an AVX-512 machine builds what an AVX2-only EPYC can run."""
    capped = llamacpp.plan(SAPPHIRE, machine="x86_64", cap="avx2")
    assert capped["options"] == llamacpp.plan(EPYC_AVX2, machine="x86_64")["options"]
    assert set(capped["isa"]) <= EPYC_AVX2
    with pytest.raises(SystemExit, match="expected one of"):
        llamacpp.plan(SAPPHIRE, machine="x86_64", cap="avx1024")


def test_older_and_non_x86_cpus_get_a_baseline_build():
    assert llamacpp.plan(OLD_X86, machine="x86_64")["variant"] == "sse4"
    assert _on(llamacpp.plan(OLD_X86, machine="x86_64")) == set()
    arm = llamacpp.plan({"fp", "asimd"}, machine="aarch64")
    assert arm["variant"] == "aarch64-baseline" and arm["options"] == {"GGML_NATIVE": "OFF"}


needs_llamacpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                    reason="llama-cpp-python not built (make setup-llamacpp)")


@needs_llamacpp
@pytest.mark.skipif(platform.machine() != "x86_64" or not shutil.which("objdump"), reason="x86-64 with objdump")
def test_installed_build_matches_this_cpu_and_its_code_uses_no_more():
    """The build record fits this CPU, and the machine code agrees with it: an AVX2 build contains no
    AVX-512 (zmm) instruction at all, so it cannot die with SIGILL on an AVX2-only CPU."""
    record = llamacpp.installed_record()
    assert record, "llama_cpp was not installed by `python -m herd.core.llamacpp` (no herd-build.json)"
    assert record["cmake_args"] == llamacpp.cmake_args(llamacpp.wanted())
    assert set(record["isa"]) <= llamacpp.cpu_flags()
    lib = Path(importlib.util.find_spec("llama_cpp").origin).parent / "lib"
    cpu_libs = sorted(lib.glob("libggml-cpu*.so*")) or sorted(lib.glob("libggml*.so*"))
    assert cpu_libs, f"no ggml libraries under {lib}"
    asm = "".join(subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(p)], capture_output=True, text=True,
                                 check=True).stdout for p in cpu_libs)
    uses_zmm = "%zmm" in asm
    assert uses_zmm == (record["variant"] == "avx512"), (record["variant"], uses_zmm)


def test_doctor_flags_a_build_for_instructions_this_cpu_lacks(monkeypatch):
    monkeypatch.setattr(llamacpp, "installed_record", lambda: {"variant": "avx512", "isa": ["avx2", "avx512f"],
                                                               "cmake_args": "-DGGML_AVX512=ON"})
    if importlib.util.find_spec("llama_cpp") is None:
        rows = doctor.llamacpp_checks(EPYC_AVX2)
        assert rows[0].status == "warn" and "make setup-llamacpp" in rows[0].finding
        return
    rows = doctor.llamacpp_checks(EPYC_AVX2)
    assert rows[0].status == "fail"
    assert "avx512 variant" in rows[0].finding and "lacks avx512f" in rows[0].finding
    assert "make setup-llamacpp" in rows[0].finding


def test_herd_doctor_reports_what_a_long_run_needs(capsys):
    from herd.cli import main

    code = main(["doctor"])
    out = capsys.readouterr().out
    rows = {line.split()[1]: line for line in out.splitlines() if line[:5].strip() in ("OK", "WARN", "FAIL", "INFO")}
    for what in ("cpu", "precision", "threads", "torch", "llama.cpp", "memory", "embedded", "shared"):
        assert what in rows, (what, out)
    flags = capped(llamacpp.cpu_flags(), isa_cap())  # as torch may use them (bench/as-avx2 caps them)
    if flags:
        assert f"AVX-512 {'yes' if 'avx512f' in flags else 'no'}" in out
        assert f"AVX2 {'yes' if {'avx2', 'fma'} <= flags else 'no'}" in out
    if importlib.util.find_spec("llama_cpp") is not None:
        record = llamacpp.installed_record() or {}
        assert f"{record.get('variant')} variant" in rows["llama.cpp"]  # which variant runs, from the build record
        assert "AVX2" in rows["llama.cpp"]  # and what llama.cpp itself reports it was built with (in a child)
    assert code == (1 if "FAIL" in out else 0)
    assert out.rstrip().endswith("ready") == (code == 0)
