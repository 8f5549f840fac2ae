"""herd.core.native.run_isolated: results and exceptions come back from the child; death by a signal or a
hang becomes a NativeCrash that names it (no llama.cpp needed for these)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from herd.core.native import NativeCrash, run_isolated


def _pid_and_sum(a: int, b: int) -> tuple[int, int]:
    return os.getpid(), a + b


def _fails() -> None:
    raise ValueError("bad record 3")


def _dies(signum: int) -> None:
    os.kill(os.getpid(), signum)


def _hangs() -> None:
    time.sleep(60)


def test_result_comes_back_from_another_process():
    pid, total = run_isolated(_pid_and_sum, 2, b=3, what="sum")
    assert total == 5 and pid != os.getpid()


def test_python_exception_is_raised_again_with_its_type():
    with pytest.raises(ValueError, match="bad record 3"):
        run_isolated(_fails, what="reader")


@pytest.mark.parametrize("signum, words", [(signal.SIGILL, "make setup-llamacpp"), (signal.SIGSEGV, "memory fault")])
def test_death_by_signal_names_the_signal_and_its_likely_cause(signum, words):
    with pytest.raises(NativeCrash) as e:
        run_isolated(_dies, int(signum), what="native thing")
    assert e.value.signum == signum
    assert f"native thing crashed the process with {signal.Signals(signum).name} (" in str(e.value)
    assert words in str(e.value)


def test_a_hang_is_killed_at_the_timeout():
    with pytest.raises(NativeCrash, match="did not finish within 3 s"):
        run_isolated(_hangs, what="sleeper", timeout=3)
