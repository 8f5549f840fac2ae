"""One progress reporter for every loop over records or steps (evals, classify, generate, export, training).

Why: a 30-minute eval that prints nothing after the weights load cannot be told from a hung one. On a
terminal (stderr is a TTY) :class:`Progress` is a tqdm bar, which shows rate and ETA. Anywhere else
(log files, CI, pytest) a redrawn bar is noise, so it writes plain lines to stderr instead: one at the
start, then at most one every ``HERD_PROGRESS_EVERY`` seconds (default 30; 0 = on every update), and
one at the end::

    [eval guard] 120/680 records (17.6%), 4.2 records/s, elapsed 0:28, ETA 2:13

The API is the part of tqdm herd uses (``total``, ``initial``, ``desc``, ``unit``, ``update``, ``n``,
``set_postfix``, ``set_postfix_str``, ``close``, context manager, wrapping an iterable), so a loop
switches over by changing its import. :func:`phase` marks the long steps of a run (``[derive] stage 1/2
sft``) with the time each took.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TextIO, TypeVar

from herd.core.phases import fmt_duration, record

T = TypeVar("T")

EVERY_ENV = "HERD_PROGRESS_EVERY"
DEFAULT_EVERY = 30.0


def every_seconds() -> float:
    """Seconds between two log lines: ``$HERD_PROGRESS_EVERY`` (0 = every update), else 30."""
    raw = os.environ.get(EVERY_ENV, "").strip()
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_EVERY
    except ValueError:  # a typo in an environment variable must not stop a run
        return DEFAULT_EVERY


def plural(unit: str) -> str:
    """``record`` → ``records``, ``batch`` → ``batches``, ``reply`` → ``replies``; a unit already ending
    in s is kept."""
    if unit.endswith("s"):
        return unit
    if unit.endswith("y") and unit[-2:-1] not in ("a", "e", "o", "u", ""):
        return unit[:-1] + "ies"
    return unit + ("es" if unit.endswith(("x", "ch", "sh")) else "s")


def _is_tty(file: TextIO) -> bool:
    """A terminal a bar can be drawn on: a pseudo-terminal of zero columns (``docker run -t`` and some
    CI runners) gets an empty tqdm bar, so it counts as a log."""
    try:
        if not file.isatty():
            return False
    except (AttributeError, ValueError):  # a closed or file-like object without isatty
        return False
    try:
        return os.get_terminal_size(file.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):  # no file descriptor to ask: trust isatty
        return True


class Progress(Generic[T]):
    """Progress of one loop: a tqdm bar on a terminal, periodic plain lines on stderr otherwise.

    ``total=None``: unknown length (count and rate, no ETA). ``initial``: units already done (a resumed
    run; the rate and ETA count only this run's). ``postfix``: extra text from the first line on (see
    :meth:`set_postfix_str`). ``enabled=False``: silent (other ranks, ``--no-progress``)
    while ``n`` still counts. ``every``: seconds between log lines (default: :func:`every_seconds`).
    ``file``: where to write (default: ``sys.stderr`` at construction). ``clock``: for tests.
    A loop with ``total=0`` has nothing to report and prints nothing."""

    def __init__(self, iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "item", initial: int = 0, postfix: str = "", enabled: bool = True,
                 every: float | None = None, file: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self.initial = initial
        self.every = every_seconds() if every is None else every
        self.file = file if file is not None else sys.stderr
        self._clock = clock
        self._t0 = self._last = clock()
        self._postfix = postfix
        self._closed = False
        self._bar: Any = None
        self.enabled = enabled and total != 0
        if self.enabled and _is_tty(self.file):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc or None, unit=unit, postfix=postfix or None,
                             dynamic_ncols=True, file=self.file)
        elif self.enabled:
            self._emit(self.line())

    # -- tqdm's interface ------------------------------------------------------------------------------

    def update(self, n: int = 1) -> None:
        """``n`` more units done; in log mode a line when ``every`` seconds passed since the last one."""
        self.n += n
        if not self.enabled or self._closed:
            return
        if self._bar is not None:
            self._bar.update(n)
        elif self.every == 0 or self._clock() - self._last >= self.every:
            self._emit(self.line())

    def set_postfix_str(self, text: str = "") -> None:
        """Extra text after the counts (a training loss, kept/rejected counts)."""
        self._postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text)

    def set_postfix(self, **values: object) -> None:
        """``set_postfix(loss="1.23")`` → ``loss=1.23`` after the counts, as tqdm writes it."""
        self.set_postfix_str(", ".join(f"{k}={v}" for k, v in values.items()))

    def close(self, *, failed: bool = False) -> None:
        """The end line: ``done``, or ``stopped`` when ``failed`` (an error, a loop left early)."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            self._emit(self.line(end="stopped" if failed else "done"))

    def __enter__(self) -> Progress[T]:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("Progress(...) wraps no iterable; call update(n) instead")
        ok = False
        try:
            for item in self.iterable:
                yield item
                self.update(1)
            ok = True
        finally:
            self.close(failed=not ok)

    # -- the log line ----------------------------------------------------------------------------------

    @property
    def elapsed(self) -> float:
        return self._clock() - self._t0

    def line(self, end: str | None = None) -> str:
        """``[desc] 120/680 records (17.6%), 4.2 records/s, elapsed 0:28, ETA 2:13[, postfix]``; with
        ``end`` (``done``/``stopped``) in place of the ETA."""
        units = plural(self.unit)
        elapsed = self.elapsed
        done = self.n - self.initial
        rate = done / elapsed if done > 0 and elapsed > 0 else None
        parts = [f"{self.n}/{self.total} {units} ({100 * self.n / self.total:.1f}%)" if self.total
                 else f"{self.n} {units}"]
        if rate is not None:
            parts.append(f"{rate:.1f} {units}/s" if rate >= 1 else f"{1 / rate:.1f} s/{self.unit}")
        parts.append(f"elapsed {fmt_duration(elapsed)}")
        if end is not None:
            parts.append(end)
        elif self.total:
            parts.append(f"ETA {fmt_duration(max(0, self.total - self.n) / rate)}" if rate else "ETA ?")
        if self._postfix:
            parts.append(self._postfix)
        return (f"[{self.desc}] " if self.desc else "") + ", ".join(parts)

    def _emit(self, text: str) -> None:
        self._last = self._clock()
        print(text, file=self.file, flush=True)


@contextmanager
def phase(name: str, what: str, *, enabled: bool = True, file: TextIO | None = None,
          clock: Callable[[], float] = time.monotonic) -> Iterator[None]:
    """``[name] what`` on entry and ``[name] what: done in 0:12`` on exit (``failed after`` on an error),
    on stderr in every mode: which long step a run is in, and what each step took. Inside an active
    :class:`herd.core.phases.PhaseLog` the step's seconds and peak RSS are also recorded (printed or not)."""
    out = file if file is not None else sys.stderr
    if enabled:
        print(f"[{name}] {what}", file=out, flush=True)
    t0 = clock()
    ok = False
    try:
        with record(what):
            yield
        ok = True
    finally:
        if enabled:
            print(f"[{name}] {what}: {'done in' if ok else 'failed after'} {fmt_duration(clock() - t0)}",
                  file=out, flush=True)
