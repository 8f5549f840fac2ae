"""The machine line and the instruction-set cap (``bench/as-avx2``): an AVX-512 machine that computes as an
AVX2-only one must also be read as one (no native bf16, so fp32), and say so wherever a figure is recorded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from herd.core import llamacpp, machine
from herd.engine.training import arithmetic, resolve_precision
from tests.test_doctor import EPYC_AVX2, SAPPHIRE

ROOT = Path(__file__).resolve().parents[1]
SWITCHES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


@pytest.fixture
def sapphire(monkeypatch):
    """This process on a CPU with AVX-512, bf16 and AMX, with no cap set."""
    monkeypatch.setattr(llamacpp, "cpu_flags", lambda: set(SAPPHIRE))
    for name in SWITCHES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_an_avx2_cap_reads_an_avx512_cpu_as_an_avx2_one():
    assert machine.capped(SAPPHIRE, "avx2") == EPYC_AVX2 | {"avx_vnni"}  # VNNI on 256-bit lanes is AVX2's
    assert machine.cpu_features(machine.capped(SAPPHIRE, "avx2")) == machine.cpu_features(EPYC_AVX2)
    assert machine.native_bf16(SAPPHIRE) and not machine.native_bf16(machine.capped(SAPPHIRE, "avx2"))
    assert machine.capped(SAPPHIRE, None) == SAPPHIRE
    assert not {"avx2", "fma", "avx"} & machine.capped(SAPPHIRE, "default")


def test_precision_auto_follows_the_cap(sapphire):
    assert resolve_precision("auto") is not None and arithmetic("auto") == "bf16"
    sapphire.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert resolve_precision("auto") is None and arithmetic("auto") == "fp32"
    assert resolve_precision("bf16") is not None  # an explicit setting is obeyed, cap or not


def test_the_machine_line_names_a_cap_and_a_partial_one(sapphire):
    assert "capped" not in machine.cpu_summary() and "native bf16 yes" in machine.cpu_summary()
    sapphire.setenv("ATEN_CPU_CAPABILITY", "avx2")
    line = machine.cpu_summary()
    assert "AVX-512 no, native bf16 no, AMX no" in line and "capped at AVX2 by ATEN_CPU_CAPABILITY" in line
    assert "partial cap" in line and "MKL_ENABLE_INSTRUCTIONS unset" in line and "ONEDNN_MAX_CPU_ISA unset" in line
    sapphire.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    sapphire.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    assert "partial" not in machine.cpu_summary()


def test_as_avx2_caps_torch_mkl_and_herd_in_a_real_process():
    """The wrapper's switches reach the libraries: torch dispatches AVX2 kernels, MKL's sgemm reports its
    AVX2 code path, and herd computes ``auto`` in fp32 and labels the line, on whatever CPU runs the test."""
    env = {k: v for k, v in os.environ.items() if k not in SWITCHES} | {"MKL_VERBOSE": "1"}
    code = ("import torch\n"
            "from herd.core.machine import cpu_summary\n"
            "from herd.engine.training import arithmetic\n"
            "torch.randn(64, 64) @ torch.randn(64, 64)\n"
            "print('capability', torch.backends.cpu.get_cpu_capability())\n"
            "print('auto', arithmetic('auto'))\n"
            "print(cpu_summary())\n")
    out = subprocess.run([str(ROOT / "bench" / "as-avx2"), sys.executable, "-c", code], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "capability AVX2" in out and "auto fp32" in out, out
    if "avx512f" in llamacpp.cpu_flags() or "avx2" in llamacpp.cpu_flags():
        assert "capped at AVX2 by ATEN_CPU_CAPABILITY" in out and "partial" not in out, out
    import torch

    if torch.backends.mkl.is_available():
        mkl = next(line for line in out.splitlines() if line.startswith("MKL_VERBOSE oneMKL"))
        assert "(Intel(R) AVX2)" in mkl and "AVX-512" not in mkl, mkl
