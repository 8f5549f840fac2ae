"""bench/gpu_check.py is the one script a GPU session runs, with minutes of device time and no second
chance: its every path (correctness checks, herd and TRL throughput, the 8B-shape QLoRA and LoRA steps)
runs here at toy sizes on the CPU, so that the device run fails only on what needs CUDA."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from herd.core.paths import repo_root


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("trl") is None or importlib.util.find_spec("bitsandbytes") is None,
                    reason="needs the bench and qlora extras (make setup installs both)")
def test_gpu_check_smoke_runs_every_section_on_a_cpu(tmp_path):
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--smoke", "--out", str(tmp_path)],
                          cwd=repo_root(), capture_output=True, text=True, timeout=900)
    rows = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not [r for r in rows if r.get("ok") is False or "error" in r]
    checks = {r["check"] for r in rows if r["section"] == "correctness"}
    assert {"packed == alone (sdpa)", "packed == alone (flex_attention)"} <= checks
    assert sum(c.startswith("sft ") for c in checks) == 3  # full, lora, qlora: trained, merged, reloaded
    systems = [r["system"] for r in rows if r["section"] == "throughput"]
    assert len(systems) == 4 and systems[0].startswith("herd") and "steady" in systems[1]
    big = [r for r in rows if r["section"] == "8b"]
    assert [r["system"].split()[2].rstrip(",") for r in big] == ["qlora", "lora"]
    assert all(r["losses"][-1] < r["losses"][0] for r in big)  # the adapters trained on the quantised base
    assert "| system | useful tokens/s |" in proc.stdout


@pytest.mark.slow
def test_gpu_probe_smoke_measures_the_plain_loop_and_an_eager_variant(tmp_path):
    """bench/gpu_probe.py at toy sizes on a CPU (the parts that need no compile): each writes its row."""
    proc = subprocess.run([sys.executable, "bench/gpu_probe.py", "--smoke", "--only", "2,6", "--out", str(tmp_path)],
                          cwd=repo_root(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    assert not [r for r in rows if "error" in r], rows
    measured = [r for r in rows if "useful_tokens_per_s" in r]
    assert [r["section"] for r in measured] == ["plain", "herd"]
    assert all(r["useful_tokens_per_s"] > 0 and len(r.get("step_s", [0] * 6)) == 6 for r in measured)
