"""Generation jobs: the hand-off between the asyncio server and a backend's worker thread.

Backends generate in one worker thread per model (a llama.cpp context and a torch model are not safe
to drive from several threads), so requests queue there; the worker pushes text deltas back into the
event loop. ``Detokenizer`` turns token ids into the text deltas a stream sends, holding back bytes of
an unfinished UTF-8 character and any tail that may still become a stop string, so a stop string never
leaks into the output, not even split across chunks.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from herd.core.errors import HerdError


@dataclass
class GenParams:
    """One request's sampling settings (temperature 0 = greedy)."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Delta:
    """A piece of output; the last one of a request carries ``finish_reason`` and the token counts."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Overloaded(HerdError):
    """More requests are waiting than the server accepts."""


class Detokenizer:
    """Incremental ids -> text with stop tokens (id level) and stop strings (text level)."""

    def __init__(self, decode: Callable[[list[int]], str], stop_ids: set[int], stop: list[str]):
        self.decode, self.stop_ids, self.stop = decode, stop_ids, [s for s in stop if s]
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already sent
        self.text = ""

    def push(self, token: int) -> tuple[str, bool]:
        """Add one generated token; returns (text to send now, finished by a stop)."""
        if token in self.stop_ids:
            return self._release(len(self.text)), True
        self.ids.append(token)
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):  # the token ends inside a multi-byte character
            return "", False
        self.text = text
        hits = [at for s in self.stop if (at := text.find(s, max(0, self.sent - len(s) + 1))) >= 0]
        if hits:
            self.text = text[:min(hits)]
            return self._release(min(hits)), True
        hold = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        return self._release(len(text) - hold), False

    def flush(self) -> str:
        """Text still held back (a partial stop string) when generation ends for another reason."""
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        out = self.text[self.sent:upto] if upto > self.sent else ""
        self.sent = max(self.sent, upto)
        return out


class Job:
    """One request in a worker's queue; ``emit`` is called from the worker thread."""

    def __init__(self, params: GenParams, loop: asyncio.AbstractEventLoop):
        self.params, self.loop = params, loop
        self.out: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()

    def emit(self, item: Delta | BaseException | None) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)


class Worker:
    """A thread that takes jobs from a queue and hands them, in batches, to ``run_batch``."""

    def __init__(self, run_batch: Callable[[list[Job]], None], *, max_batch: int = 1,
                 max_queue: int = 256, gather_s: float = 0.005, name: str = "herd-worker"):
        self.run_batch, self.max_batch, self.gather_s = run_batch, max_batch, gather_s
        self.queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            batch = [job]
            while len(batch) < self.max_batch:  # let requests that arrive together share a batch
                try:
                    nxt = self.queue.get(timeout=self.gather_s)
                except queue.Empty:
                    break
                if nxt is None:
                    self.queue.put(None)
                    break
                batch.append(nxt)
            batch = [j for j in batch if not j.cancelled.is_set()]
            if not batch:
                continue
            try:
                self.run_batch(batch)
            except BaseException as e:  # report to every waiting client, keep serving
                for j in batch:
                    j.emit(e)

    def submit(self, params: GenParams) -> AsyncIterator[Delta]:
        """Queue a request now (so an overloaded server refuses it before any response starts) and
        return its stream of deltas. Must be called from the event loop."""
        job = Job(params, asyncio.get_running_loop())
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise Overloaded(f"{self.queue.maxsize} requests are already waiting; retry later") from None
        return self._drain(job)

    @staticmethod
    async def _drain(job: Job) -> AsyncIterator[Delta]:
        try:
            while True:
                item = await job.out.get()
                # a consumer that fell behind gets what is ready as one delta: fewer, larger chunks
                while isinstance(item, Delta) and not item.finish_reason and not job.out.empty():
                    nxt = job.out.get_nowait()
                    if not isinstance(nxt, Delta):
                        yield item
                        item = nxt
                        break
                    item = Delta(item.text + nxt.text, nxt.finish_reason, nxt.prompt_tokens, nxt.completion_tokens)
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            job.cancelled.set()  # a client that went away stops its generation

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=10)
