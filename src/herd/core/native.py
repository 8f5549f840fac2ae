"""Native code that can take the interpreter down runs in a child process first.

A llama.cpp build compiled for instructions this CPU lacks dies with SIGILL inside ``Llama()``; in
process that kills ``herd serve`` or a whole test session without a word. Here such a crash becomes a
:class:`NativeCrash` that names the signal, its likely cause and the fix. Nothing here imports torch
or llama_cpp at module level, so a spawned child starts in about a second.
"""

from __future__ import annotations

import multiprocessing
import pickle
import signal
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from herd.core.errors import HerdError

REBUILD = ("the llama.cpp build uses instructions this CPU does not have: rebuild it for this machine with "
           "`make setup-llamacpp`; `herd doctor` shows this CPU's features and the build's variant")
CAUSES: dict[int, str] = {
    signal.SIGILL: REBUILD,
    signal.SIGSEGV: "a memory fault in native code (a corrupt or incompatible file, or a library bug)",
    signal.SIGBUS: "a bus error in native code (a truncated or memory-mapped file that changed)",
    signal.SIGABRT: "native code aborted (an assertion in the library; its stderr says which)",
    signal.SIGFPE: "an arithmetic fault in native code",
    signal.SIGKILL: "killed from outside (out of memory?)",
}


class NativeCrash(HerdError):
    """A child process running native code died by a signal (or did not finish in time)."""

    def __init__(self, what: str, signum: int | None, detail: str = ""):
        self.signum = signum
        if signum is None:
            text = f"{what}: {detail or 'did not finish'}"
        else:
            text = f"{what} crashed the process with {signal_name(signum)}: {CAUSES.get(signum, 'a native crash')}"
        super().__init__(text)


class ChildError(HerdError):
    """A Python exception in the child whose type does not survive pickling; carries its traceback."""


def signal_name(signum: int) -> str:
    """``SIGILL (Illegal instruction)``: the name a user can search for, and what it means."""
    try:
        sig = signal.Signals(signum)
        return f"{sig.name} ({signal.strsignal(sig) or sig.name})"
    except ValueError:
        return f"signal {signum}"


def _child(conn, fn: Callable, args: tuple, kwargs: dict) -> None:
    try:
        reply: tuple = ("ok", fn(*args, **kwargs))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
        tb = traceback.format_exc()
        try:
            pickle.dumps(e)
            reply = ("err", e, tb)
        except Exception:  # noqa: BLE001
            reply = ("err", None, tb)
    conn.send(reply)
    conn.close()


def run_isolated(fn: Callable[..., Any], *args: Any, what: str, timeout: float | None = None,
                 **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a fresh (spawned) process; its picklable result comes back.

    A Python exception in the child is raised again here (with the child's traceback as a note); death
    by a signal raises :class:`NativeCrash` naming it. ``fn`` must be importable by name (module level).
    """
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, args, kwargs), daemon=True)
    proc.start()
    send.close()
    reply, timed_out = None, False
    try:
        if recv.poll(timeout):
            reply = recv.recv()
        else:
            timed_out = True
    except EOFError:
        pass  # the child died before answering: its exit code says how
    finally:
        recv.close()
    if timed_out:
        proc.kill()
        proc.join()
        raise NativeCrash(what, None, f"did not finish within {timeout} s (killed)")
    proc.join()
    if reply is None:
        code = proc.exitcode or 0
        if code < 0:
            raise NativeCrash(what, -code)
        raise NativeCrash(what, None, f"child exited with status {code} before answering")
    if reply[0] == "ok":
        return reply[1]
    _, exc, tb = reply
    if exc is None:
        raise ChildError(f"{what} failed in the child process:\n{tb}")
    if hasattr(exc, "add_note"):  # Python 3.11+
        exc.add_note(f"(raised in a child process running {what})\n{tb}")
    raise exc


# -- llama.cpp ------------------------------------------------------------------------------------------
def _llamacpp_probe(gguf: str, threads: int | None) -> dict:
    """Load the GGUF and decode a few tokens: the code paths (matmul kernels included) serving uses."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=gguf, n_ctx=64, n_threads=threads, verbose=False)
    ids = llm.tokenize(b"Hello", add_bos=True)
    out = [int(t) for _, t in zip(range(2), llm.generate(ids, temp=0.0, reset=True))]
    return {"n_vocab": llm.n_vocab(), "tokens": out, "version": llama_cpp.__version__}


def probe_llamacpp(gguf: str | Path, *, threads: int | None = None, timeout: float = 300) -> dict:
    """Load ``gguf`` in llama.cpp in a child process before this process does, so a build that cannot
    run on this CPU is a clear error instead of a dead server."""
    return run_isolated(_llamacpp_probe, str(gguf), threads, what=f"llama.cpp loading {Path(gguf).name}",
                        timeout=timeout)


def _llamacpp_info() -> dict:
    import llama_cpp

    raw = llama_cpp.llama_print_system_info()
    return {"version": llama_cpp.__version__,
            "system_info": raw.decode() if isinstance(raw, bytes) else str(raw)}


def llamacpp_system_info(timeout: float = 120) -> dict:
    """llama.cpp's version and ``llama_print_system_info()`` (the instruction sets it was built with),
    read in a child process: importing a bad build must not kill the caller."""
    return run_isolated(_llamacpp_info, what="llama.cpp (import llama_cpp)", timeout=timeout)
