"""Chat for the UI: artifacts loaded through the server's own loader and streamed by its backend.

The page's chat is the same path as ``herd serve``: :func:`herd.serve.load_served` renders the artifact's
own template and the transformers backend streams deltas, so the UI and the API cannot drift apart. A few
models stay loaded (least recently used go first); a guard artifact, when chosen, classifies the input
before generation (prompt classification) and the whole answer after it (response classification: the
answer as the agent's reply to that input, as Llama Guard classifies responses).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from herd.core.errors import HerdError
from herd.serve.jobs import GenParams
from herd.serve.models import ServedModel


class ChatModels:
    def __init__(self, keep: int = 4):
        self.keep = keep
        self._models: OrderedDict[Path, ServedModel] = OrderedDict()
        self._guards: OrderedDict[Path, object] = OrderedDict()
        self._lock = threading.Lock()  # two panes asking for one model load it once

    def model(self, folder: Path) -> ServedModel:
        from herd.serve import load_served

        with self._lock:
            if folder not in self._models:
                self._models[folder] = load_served(folder, max_batch=4)
                while len(self._models) > self.keep:
                    _, old = self._models.popitem(last=False)
                    old.backend.close()
            self._models.move_to_end(folder)
            return self._models[folder]

    def guard(self, folder: Path):
        from herd.guard import Guard

        with self._lock:
            if folder not in self._guards:
                self._guards[folder] = Guard(folder)
                while len(self._guards) > 2:
                    self._guards.popitem(last=False)
            return self._guards[folder]

    async def stream(self, folder: Path, messages: list[dict], *, max_tokens: int, temperature: float,
                     guard: Path | None) -> AsyncIterator[dict]:
        """Events for one answer: ``{"delta"}``..., ``{"flagged", "where", "categories"}``, ``{"done"}``."""
        m = await run_in_threadpool(self.model, folder)
        g = await run_in_threadpool(self.guard, guard) if guard is not None else None
        yield {"model": m.id, "template": getattr(m.template, "name", None)}
        if g is not None:
            verdict = (await run_in_threadpool(g.moderate, [messages[-1]["content"]]))[0]
            if verdict.flagged:
                yield {"flagged": True, "where": "input", "categories": _violated(verdict)}
                yield {"done": "content_filter"}
                return
        try:
            ids = m.chat_prompt_ids(messages)
        except HerdError as e:
            yield {"error": str(e)}
            return
        budget = m.backend.context_length - len(ids)
        if budget < 1:
            yield {"error": f"the conversation has {len(ids)} tokens; this model's context is "
                            f"{m.backend.context_length}"}
            return
        params = GenParams(prompt_ids=ids, max_tokens=min(max_tokens, budget), temperature=temperature,
                           top_p=1.0, stop=m.stop_strings, seed=0)
        text, finish = [], "stop"
        async for d in m.backend.stream(params):
            if d.text:
                text.append(d.text)
                yield {"delta": d.text}
            if d.finish_reason:
                finish = d.finish_reason
        if g is not None and text:  # response classification (Llama Guard's "Agent"): the reply to the prompt
            asked = next((m["content"] for m in reversed(messages) if m["role"] == "user"), None)
            item = (asked, "".join(text)) if asked is not None else "".join(text)
            verdict = (await run_in_threadpool(g.classify_many, [item]))[0]
            if verdict.flagged:
                yield {"flagged": True, "where": "output", "categories": _violated(verdict)}
        yield {"done": finish}

    def close(self) -> None:
        for m in self._models.values():
            m.backend.close()
        self._models.clear()


def _violated(verdict) -> list[str]:
    return [k for k, v in (getattr(verdict, "categories", None) or {}).items() if v]
