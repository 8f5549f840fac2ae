"""Where a run's time and memory go: the phase log measures nested phases, and derive records it."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from herd.core.phases import PhaseLog, record, release_memory
from herd.core.progress import phase


def _hold(mb: int, seconds: float = 0.0) -> None:
    buf = bytearray(mb * 1024 * 1024)  # zero-filled: the pages are touched, so they count in RSS
    buf[::4096] = b"\x01" * len(buf[::4096])
    time.sleep(seconds)
    del buf


def test_nested_phases_get_their_own_peaks_and_times():
    with PhaseLog() as log:
        with phase("t", "outer", enabled=False):
            with record("small"):
                _hold(8)
            with record("big"):
                _hold(300, 0.05)
        with record("after"):
            pass
    rows = {r.name: r for r in log.rows}
    assert [r.name for r in log.rows] == ["outer", "small", "big", "after"]
    assert [r.depth for r in log.rows] == [0, 1, 1, 0]
    assert rows["big"].seconds >= 0.05 and rows["outer"].seconds >= rows["big"].seconds
    # the 300 MB buffer counts in "big" and in its parent, not in its siblings
    assert rows["big"].peak_rss_mb >= rows["small"].peak_rss_mb + 250
    assert rows["outer"].peak_rss_mb >= rows["big"].peak_rss_mb
    assert rows["after"].peak_rss_mb < rows["big"].peak_rss_mb - 250
    assert log.peak_rss_mb >= rows["big"].peak_rss_mb
    table = log.table()
    assert "  big" in table and "whole run" in table and "GiB" in table


def test_the_kernel_peak_stays_true_for_outside_tools():
    """/usr/bin/time -v and ru_maxrss report the process's real peak after a logged run."""
    import resource

    with PhaseLog():
        with record("big"):
            _hold(300, 0.05)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 >= 300


def test_failed_phase_is_marked_and_nothing_is_recorded_without_a_log():
    with record("no log") as row:
        assert row is None
    with PhaseLog() as log:
        with pytest.raises(RuntimeError):
            with phase("t", "boom", enabled=False):
                raise RuntimeError("x")
    assert log.rows[0].ok is False and "(failed)" in log.table()
    release_memory()  # callable anywhere, glibc or not


def test_derive_records_phases_in_lineage(tmp_path):
    import json

    import yaml

    from herd.api import derive
    from herd.core.paths import repo_root

    raw = yaml.safe_load((repo_root() / "recipes" / "alpaca.yaml").read_text())
    raw["profiles"]["test"] = {"max_train_records": 8, "eval_size": 4, "dev_size": 0,
                               "stages": {"sft": {"epochs": 1, "global_batch": 8, "max_len": 256,
                                                  "precision": "fp32"}},
                               "evals": {"side_by_side": {"enabled": False}, "mtbench_pairwise": {"enabled": False}}}
    recipe = tmp_path / "alpaca.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    res = derive(str(recipe), base="tiny", profile="test", out=tmp_path / "ws", progress=False)
    lin = json.loads((res.path / "lineage.json").read_text())
    names = [r["phase"] for r in lin["phases"]["rows"]]
    for expected in ("stage 1/1 sft (sft)", "tokenize", "train loop", "save artifact", "scorecard",
                     "heldout_loss on parent", "heldout_loss on derived"):
        assert expected in names, names
    assert all(r["seconds"] >= 0 and r["peak_rss_mb"] > 0 for r in lin["phases"]["rows"])
    assert lin["phases"]["peak_rss_mb"] >= max(r["peak_rss_mb"] for r in lin["phases"]["rows"])
    record = json.loads((tmp_path / "ws" / "derive.json").read_text())
    assert record["phases"] == lin["phases"]["rows"]
    assert record["state"] == "done" and record["pid"] is None and record["model"] == res.path.name
    assert record["args"]["recipe_file"] == str(recipe.resolve()) and record["args"]["out"] == str((tmp_path / "ws").resolve())


_HEAP_PROBE = """
import sys, torch
from herd.core.phases import current_rss_mb, set_mmap_threshold
if sys.argv[1] != "0":
    assert set_mmap_threshold(int(sys.argv[1]))
big = torch.ones(4 << 20)  # 16 MB freed: glibc's adaptive threshold rises to 16 MB
del big
t = torch.ones(2 << 20)    # 8 MB, touched
before = current_rss_mb()
del t
print(before - current_rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_mmap_threshold_returns_a_freed_activation_to_the_os():
    """Why the setting exists: with glibc's adaptive threshold a freed 8 MB tensor stays in the heap (in
    RSS); at a fixed 4 MB it goes back to the OS when freed. Each case in its own process (the setting is
    process-wide and cannot be undone)."""
    def freed_mb(threshold: int) -> float:
        out = subprocess.run([sys.executable, "-c", _HEAP_PROBE, str(threshold)], capture_output=True, text=True,
                             check=True)
        return float(out.stdout.split()[-1])

    assert freed_mb(4) > 7.5
    assert freed_mb(0) < 1.0


def test_a_stage_heap_setting_reaches_the_training_loop(tmp_path, monkeypatch):
    """``heap_mmap_threshold_mb`` in a recipe is applied once when the loop starts; 0 leaves glibc alone."""
    import torch

    from herd.core.recipe import SFTStage
    from herd.engine import training
    from herd.engine.loading import loop_config
    from herd.engine.pair_loop import pair_loop_config
    from herd.stages.configs import DPOStage

    calls: list[int] = []
    monkeypatch.setattr(training, "set_mmap_threshold", calls.append)
    lin = torch.nn.Linear(4, 1)

    def step_fn(step: int) -> training.StepOut:
        loss = lin(torch.ones(2, 4)).pow(2).mean()
        loss.backward()
        return training.StepOut(loss=float(loss))

    pair = {"data": [{"name": "p", "path": "pairs.jsonl", "format": "preference"}]}
    for mb, want in ((4, [4]), (0, [])):
        for kind, cfg in (("sft", loop_config(SFTStage(heap_mmap_threshold_mb=mb), progress=False)),
                          ("dpo", pair_loop_config(DPOStage(**pair, heap_mmap_threshold_mb=mb), progress=False))):
            calls.clear()
            training.optimise(lin, cfg, tmp_path / f"{kind}{mb}", 2, step_fn)
            assert calls == want, kind
