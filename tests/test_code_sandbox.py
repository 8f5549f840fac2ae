"""The code-execution sandbox, for real (no mocks): canonical HumanEval solutions pass, wrong ones fail,
and hostile programs harm nothing and count as failures — under the full isolation this machine allows,
under the audit hook alone, and under the kernel-enforced layers alone."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

from herd.engine import sandbox as sb
from herd.evals import humaneval as he

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HUMANEVAL = SHARED / "humaneval" / "HumanEval.jsonl.gz"
needs_humaneval = pytest.mark.skipif(not HUMANEVAL.is_file(), reason="shared HumanEval data not present")


@pytest.fixture(scope="module")
def problems():
    return he.load_humaneval(HUMANEVAL)


@pytest.fixture()
def canary(tmp_path):
    path = tmp_path / "canary" / "canary.txt"
    path.parent.mkdir()
    path.write_text("still here")
    return path


@pytest.fixture()
def home_secret():
    """A file in the user's real home directory that a sample must not be able to read."""
    fd, name = tempfile.mkstemp(dir=Path.home(), prefix=".herd-sandbox-test-")
    os.write(fd, b"TOPSECRET-7f3a")
    os.close(fd)
    yield Path(name)
    os.unlink(name)


def hostile(canary: Path, secret: Path, *, bounded: bool = False) -> dict[str, str]:
    """Programs that would damage the machine or leak data if they ran unconfined.

    ``bounded``: fork a few times instead of forever, and signal nothing — for runs where a bug in the
    layer under test would otherwise unleash a real fork bomb or kill(-1) as root."""
    c, d = str(canary), str(canary.parent)
    loop = "for _ in range(3):" if bounded else "while True:"
    progs = {
        "fork bomb": f"import os\n{loop}\n    os.fork()\n",
        "fork bomb via multiprocessing": ("import multiprocessing as mp\n"
                                          f"{loop}\n    mp.Process(target=len, args=([],)).start()\n"),
        "infinite loop": "while True:\n    pass\n",
        "infinite loop ignoring SIGALRM": ("import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                                           "while True:\n    pass\n"),
        "memory bomb": "x = bytearray(10 ** 11)\n",
        "gradual memory bomb": "hog = []\nwhile True:\n    hog.append(bytearray(2 * 10 ** 8))\n",
        "delete canary": f"import os\nos.remove({c!r})\n",
        "rmtree canary dir": f"import shutil\nshutil.rmtree({d!r})\n",
        "overwrite canary": f"open({c!r}, 'w').write('pwned')\n",
        "rename canary": f"import os\nos.rename({c!r}, 'stolen.txt')\n",
        "canary via shell": f"import os\nassert os.system('rm -f {c}') == 0 and not os.path.exists({c!r})\n",
        "canary via subprocess": f"import subprocess\nsubprocess.run(['rm', '-f', {c!r}], check=True)\n",
        "socket connect": ("import socket\ns = socket.socket()\ns.settimeout(2)\n"
                           "s.connect(('1.1.1.1', 80))\n"),
        "socket bind": "import socket\ns = socket.socket()\ns.bind(('0.0.0.0', 8765))\ns.listen()\n",
        "dns": "import socket\nsocket.getaddrinfo('example.com', 80)\n",
        "read home file": f"raise ValueError(open({str(secret)!r}).read())\n",
        "list home": f"import os\nraise ValueError(os.listdir({str(Path.home())!r}))\n",
        "kill parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
        "kill everything": "import os, signal\nos.kill(-1, signal.SIGKILL)\n",
        "ctypes": "import ctypes\nctypes.CDLL(None).fork()\n",
    }
    if bounded:
        progs["kill parent"] = progs["kill everything"] = "import os\nos.kill(os.getpid(), 0)\n"
        progs["ctypes"] = "import ctypes\n"
    return progs


def assert_contained(names, results, canary: Path, secret: Path) -> None:
    for name, r in zip(names, results, strict=True):
        assert not r.passed and r.status in ("failed", "timeout"), (name, r)
        assert "TOPSECRET" not in r.detail, (name, r)
    assert canary.read_text() == "still here"
    assert not (canary.parent / "stolen.txt").exists()
    assert secret.read_bytes() == b"TOPSECRET-7f3a"
    # the machine stays responsive: a trivial program still runs promptly, and no sample process survives
    t = time.monotonic()
    assert sb.run_program("assert sum(range(10)) == 45").passed
    assert time.monotonic() - t < 10


def _survivors_gone(uid: int | None, before: int) -> bool:
    if uid is None:
        return True
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if (sb._tasks_of(uid) or 0) <= before:
            return True
        time.sleep(0.1)
    return False


# ---- verdicts ------------------------------------------------------------------------------------------

def test_verdicts_passed_failed_timeout_and_error(monkeypatch):
    ok, bad, slow, syntax = sb.run_programs(["assert 1 + 1 == 2", "assert 1 + 1 == 3",
                                             "while True:\n    pass", "def f(:\n    pass"], timeout=1.0)
    assert (ok.passed, ok.status) == (True, "passed")
    assert (bad.passed, bad.status) == (False, "failed") and bad.detail.startswith("AssertionError")
    assert (slow.status, slow.detail) == ("timeout", "time limit 1.0 s") and slow.seconds >= 1.0
    assert syntax.status == "failed" and "SyntaxError" in syntax.detail
    assert ok.as_dict().keys() == {"passed", "status", "detail", "seconds"}
    # "error" is the harness failing, never the program: here an interpreter that does not exist
    broken = sb.Isolation("/nonexistent/python3", None, (), ())
    monkeypatch.setattr(sb, "isolation", lambda: broken)
    err = sb.run_program("assert True")
    assert (err.passed, err.status) == (False, "error") and "could not start" in err.detail


def test_early_exits_and_fake_output_do_not_pass():
    progs = ["import sys\nsys.exit(0)\nassert False", "import os\nos._exit(0)\nassert False",
             "print('passed')\nraise ValueError", "exit()\nassert False",
             "import threading, os\nthreading.Thread(target=lambda: os._exit(0)).start()\nimport time\n"
             "time.sleep(1)\nassert False"]
    for r in sb.run_programs(progs):
        assert not r.passed and r.status == "failed", r


def test_the_sample_runs_in_its_own_writable_temp_dir():
    prog = ("import os, tempfile\n"
            "here = os.getcwd()\n"
            "assert os.environ['HOME'] == here and os.environ['TMPDIR'] == here\n"
            "assert os.path.basename(here).startswith('herd-sandbox-')\n"
            "open('out.txt', 'w').write('x' * 100)\n"
            "os.mkdir('d'); os.rename('out.txt', 'd/o.txt'); os.remove('d/o.txt'); os.rmdir('d')\n"
            "fd, name = tempfile.mkstemp(); os.close(fd); os.remove(name)\n"
            "import hashlib, re, math, collections, itertools, functools, heapq, typing\n")
    r = sb.run_program(prog)
    assert r.passed, r
    where = sb.run_program("import os\nraise ValueError(os.getcwd())")
    here = where.detail.split("ValueError: ")[1].split(" (line")[0]
    assert "herd-sandbox-" in here and not Path(here).exists()  # removed afterwards


def test_output_and_file_size_are_capped():
    r = sb.run_program("while True:\n    print('x' * 100000)\n")
    assert r.status == "failed" and "File too large" in r.detail


# ---- HumanEval: the acceptance criteria ----------------------------------------------------------------

@needs_humaneval
def test_all_164_canonical_solutions_pass(problems):
    assert len(problems) == 164
    results = sb.run_programs([he.check_program(p, p["canonical_solution"]) for p in problems])
    failed = [(p["task_id"], r.detail) for p, r in zip(problems, results) if not r.passed]
    assert not failed
    assert sum(r.passed for r in results) == 164


@needs_humaneval
def test_known_wrong_completions_fail(problems):
    sel = problems[::8]
    wrong = {
        "returns None": "    return None\n",
        "body missing": "    pass\n",
        "syntax error": "    return (\n",
        "raises": "    raise NotImplementedError\n",
    }
    programs = [he.check_program(p, c) for c in wrong.values() for p in sel]
    # another problem's solution: right code, wrong problem
    programs += [he.check_program(p, q["canonical_solution"]) for p, q in zip(sel, sel[1:] + sel[:1])]
    results = sb.run_programs(programs)
    assert all(not r.passed for r in results), [r for r in results if r.passed]


# ---- hostile programs ----------------------------------------------------------------------------------

def test_hostile_programs_harm_nothing_and_fail(canary, home_secret):
    progs = hostile(canary, home_secret)
    iso = sb.isolation()
    before = (sb._tasks_of(iso.uid) or 0) if iso.uid is not None else 0
    results = sb.run_programs(list(progs.values()))
    assert_contained(progs, results, canary, home_secret)
    assert _survivors_gone(iso.uid, before)
    by = dict(zip(progs, results))
    assert by["infinite loop"].status == "timeout"
    assert by["infinite loop ignoring SIGALRM"].status == "timeout"
    assert by["memory bomb"].status == "failed" and "MemoryError" in by["memory bomb"].detail
    assert "sandbox:" in by["delete canary"].detail and "sandbox:" in by["socket connect"].detail


def test_the_audit_hook_alone_contains_them(monkeypatch, canary, home_secret):
    """No privilege drop, no namespaces: only rlimits, the process group and the audit hook."""
    weak = sb.Isolation(sb.isolation().interpreter, None, (), (str(Path.home()),))
    monkeypatch.setattr(sb, "isolation", lambda: weak)
    progs = hostile(canary, home_secret, bounded=True)
    results = sb.run_programs(list(progs.values()))
    assert_contained(progs, results, canary, home_secret)
    by = dict(zip(progs, results))
    for name in ("fork bomb", "delete canary", "overwrite canary", "socket connect", "read home file",
                 "kill everything", "canary via subprocess", "ctypes"):
        assert "sandbox:" in by[name].detail, (name, by[name])


def test_the_kernel_layers_alone_contain_them(canary, home_secret):
    """The audit hook switched off: what the kernel enforces (uid drop, namespaces, rlimits) must hold."""
    iso = sb.isolation()
    if iso.uid is None and not iso.unshare:
        pytest.skip("neither a privilege drop nor namespaces are available here")
    progs = {k: v for k, v in hostile(canary, home_secret).items()
             if k in ("fork bomb", "infinite loop", "memory bomb", "socket connect", "dns", "kill everything")
             or (iso.uid is not None and k in ("delete canary", "rmtree canary dir", "overwrite canary",
                                               "canary via shell", "read home file", "list home"))}
    before = (sb._tasks_of(iso.uid) or 0) if iso.uid is not None else 0
    results = [sb.run_program(p, audit_hook=False) for p in progs.values()]
    assert_contained(progs, results, canary, home_secret)
    assert _survivors_gone(iso.uid, before)
    assert all("sandbox:" not in r.detail for r in results)  # the kernel, not the hook, stopped them


def test_isolation_is_described():
    d = sb.isolation().describe()
    assert d["audit_hook"] is True and {"interpreter", "run_as", "namespaces", "rlimits"} <= d.keys()
