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
