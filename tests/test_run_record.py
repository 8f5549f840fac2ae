"""``derive.json`` records a derive from its first stage: ``running`` with its arguments (paths absolute)
and process, then ``done`` or ``failed``; a killed run is a ``running`` record whose process is gone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from herd.core.run_record import read_run_record, still_running
from tests.ui_helpers import tiny_alpaca_recipe


def test_still_running_asks_the_process():
    me = {"state": "running", "pid": os.getpid(), "host": socket.gethostname()}
    assert still_running(me)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # exited and reaped: its pid names no process
    assert not still_running({**me, "pid": proc.pid})
    assert still_running({**me, "pid": 1, "host": "another-host"})  # elsewhere it cannot be told
    assert not still_running({**me, "state": "failed"}) and not still_running({**me, "pid": None})


def test_a_derive_that_fails_records_failed_with_the_error(tmp_path, monkeypatch):
    import herd.derive as d

    def boom(*args, **kw):
        raise RuntimeError("out of memory (test)")

    monkeypatch.setattr(d, "_run_stages", boom)
    recipe = tiny_alpaca_recipe(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="out of memory"):
        d.derive("alpaca-test.yaml", base="tiny", profile="test", out="ws", max_steps=2, progress=False)
    rec = read_run_record(tmp_path / "ws")
    assert rec["state"] == "failed" and "out of memory (test)" in rec["error"] and not still_running(rec)
    assert rec["args"] == {"recipe": "alpaca-test.yaml", "recipe_file": str(recipe.resolve()), "base": "tiny",
                           "profile": "test", "data": [], "out": str((tmp_path / "ws").resolve()), "max_steps": 2,
                           "report_to": None, "overrides": None}
    assert rec["command"] == "herd derive alpaca-test.yaml --profile test --base tiny --out ws --max-steps 2"


def test_a_resumed_derive_records_its_earlier_legs_and_its_scorecard_says_so(tmp_path, monkeypatch):
    """A resume's wall time is one leg's: derive.json and the scorecard name every earlier start."""
    import herd.derive as d
    from herd.scorecard import to_markdown

    monkeypatch.setattr(d, "_run_stages", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("killed (test)")))
    tiny_alpaca_recipe(tmp_path)
    monkeypatch.chdir(tmp_path)
    starts = []
    for resume in (False, True, True):
        with pytest.raises(RuntimeError, match="killed"):
            d.derive("alpaca-test.yaml", base="tiny", profile="test", out="ws", resume=resume, progress=False)
        rec = read_run_record(tmp_path / "ws")
        starts.append(rec["started"])
        legs = [leg["started"] for leg in rec.get("earlier_legs", [])]
        assert legs == (starts[:-1] if resume else [])  # a fresh run (no --resume) starts the count again
    assert [leg["state"] for leg in rec["earlier_legs"]] == ["failed", "failed"]
    again = {"state": "running", "started": "later", "earlier_legs": rec["earlier_legs"]}  # killed: no state change
    assert [leg["started"] for leg in d.earlier_legs(again)] == [*starts[:2], "later"]
    card = {"title": "t", "profile": "tiny", "metrics": [], "published": [], "deviations": [], "samples": [],
            "run": {"command": "herd derive x", "started": "s3", "wall_seconds": 60.0, "machine": "m",
                    "earlier_legs": rec["earlier_legs"]}}
    md = to_markdown(card)
    assert "resumed" in md and all(s in md for s in starts[:2]) and "last leg's, started s3" in md
    assert "resumed" not in to_markdown({**card, "run": {**card["run"], "earlier_legs": []}})
    assert "(1.0 min to this scorecard, peak RSS 3.00 GiB on m)" in to_markdown(
        {**card, "run": {**card["run"], "peak_rss_mb": 3072}})  # cards before the field: time alone
    assert "(1.0 min to this scorecard on m)" in md
