"""Serving backends: transformers (batched) and llama.cpp (the exported GGUF), behind one interface.

Both receive token ids (the served model tokenizes with the artifact's HF tokenizer; the GGUF test
proves llama.cpp's tokenizer gives the same ids) and stream text deltas back through a worker thread.
The transformers backend batches requests that wait together (left-padded, one KV cache, per-row
sampling), because on CPU a batch of 8 decodes ~3x more tokens/s than 8 requests in turn. llama.cpp's
Python binding drives one sequence per context, so its requests run in turn, reusing the KV cache of
a shared prompt prefix.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

from herd.core.errors import HerdError
from herd.serve.jobs import Delta, Detokenizer, GenParams, Job, Worker


class Backend:
    """Generation for one model. Subclasses set ``context_length`` and start ``self.worker``."""

    name = "?"
    context_length: int
    worker: Worker

    def stream(self, params: GenParams) -> AsyncIterator[Delta]:
        return self.worker.submit(params)

    def close(self) -> None:
        self.worker.close()


def _finish(job: Job, det: Detokenizer, text: str, stopped: bool, n: int) -> bool:
    """Emit one step's delta; returns True when the job is finished."""
    p = job.params
    finish = "stop" if stopped else "length" if n >= p.max_tokens else None
    if finish == "length":
        text += det.flush()
    if text or finish:
        job.emit(Delta(text, finish, len(p.prompt_ids), n))
    if finish:
        job.emit(None)
    return finish is not None


class TransformersBackend(Backend):
    """transformers' LlamaForCausalLM, requests that arrive together decoded as one batch."""

    name = "transformers"

    def __init__(self, folder: str | Path, tokenizer, stop_ids: set[int], *, max_batch: int = 16,
                 context_length: int | None = None):
        import torch

        from herd.base import load_model

        self.torch = torch
        self.model = load_model(folder).eval()
        self.tok, self.stop_ids = tokenizer, stop_ids
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        model_ctx = getattr(self.model.config, "max_position_embeddings", 4096)
        self.context_length = min(context_length or model_ctx, model_ctx)
        self.worker = Worker(self._run_batch, max_batch=max_batch, name="herd-transformers")

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _pick(self, logits, jobs: list[Job], gens: list) -> list[int]:
        """One token per row, the whole batch at once: argmax for greedy rows, else temperature and
        nucleus sampling by inverse CDF (one uniform draw per row from that row's seeded generator)."""
        torch = self.torch
        picks = logits.argmax(-1)
        temps = torch.tensor([j.params.temperature for j in jobs])
        sampled = (temps > 0).nonzero().flatten().tolist()
        if not sampled:
            return picks.tolist()
        rows = torch.tensor(sampled)
        probs = torch.softmax(logits[rows] / temps[rows, None], dim=-1)
        top_p = torch.tensor([jobs[i].params.top_p for i in sampled])
        idx = None
        if bool((top_p < 1.0).any()):  # the sort is the costly part; skip it when no row needs it
            probs, idx = probs.sort(dim=-1, descending=True)
            probs = probs * ((probs.cumsum(-1) - probs) < top_p[:, None])
        cdf = probs.cumsum(-1)
        u = torch.cat([torch.rand(1, generator=gens[i]) for i in sampled]) * cdf[:, -1]
        at = torch.searchsorted(cdf, u[:, None]).clamp(max=cdf.shape[-1] - 1)
        picks[rows] = (idx.gather(-1, at) if idx is not None else at).flatten()
        return picks.tolist()

    def _run_batch(self, jobs: list[Job]) -> None:
        torch = self.torch
        from transformers import DynamicCache

        n_rows = len(jobs)
        width = max(len(j.params.prompt_ids) for j in jobs)
        ids = torch.full((n_rows, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n_rows, width), dtype=torch.long)
        for i, j in enumerate(jobs):  # left padding: every row's next token goes in the last column
            n = len(j.params.prompt_ids)
            ids[i, width - n:] = torch.tensor(j.params.prompt_ids)
            mask[i, width - n:] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        dets = [Detokenizer(self._decode, self.stop_ids, j.params.stop) for j in jobs]
        gens = [torch.Generator().manual_seed(j.params.seed if j.params.seed is not None
                                              else int(torch.randint(2**62, ()))) for j in jobs]
        done, counts = [False] * n_rows, [0] * n_rows
        cache = DynamicCache(config=self.model.config)
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache,
                             use_cache=True, logits_to_keep=1)
            pos = pos[:, -1:]
            while True:
                picks = self._pick(out.logits[:, -1, :].float(), jobs, gens)
                nxt = []
                for i, j in enumerate(jobs):
                    if not done[i] and j.cancelled.is_set():
                        done[i] = True
                        j.emit(None)
                    if done[i]:
                        nxt.append(self.pad_id)
                        continue
                    t = picks[i]
                    counts[i] += 1
                    text, stopped = dets[i].push(t)
                    done[i] = _finish(j, dets[i], text, stopped, counts[i])
                    nxt.append(t)
                if all(done):
                    return
                mask = torch.cat([mask, torch.ones((n_rows, 1), dtype=torch.long)], dim=1)
                pos = pos + 1
                out = self.model(input_ids=torch.tensor(nxt)[:, None], attention_mask=mask, position_ids=pos,
                                 cache=cache, use_cache=True)


class LlamaCppBackend(Backend):
    """llama.cpp (llama-cpp-python) on the artifact's GGUF; one request at a time."""

    name = "llamacpp"

    def __init__(self, gguf_path: str | Path, stop_ids: set[int], *, context_length: int | None = None,
                 threads: int | None = None):
        import importlib.util

        if importlib.util.find_spec("llama_cpp") is None:
            raise HerdError("--backend llamacpp needs llama-cpp-python: `make setup-llamacpp` builds it for "
                            "this CPU (`herd doctor` shows whether it is there)")
        from herd.core.native import probe_llamacpp

        # load it in a child first: a build this CPU cannot run fails there with a clear error, not here
        probe_llamacpp(gguf_path, threads=threads)
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf_path), n_ctx=context_length or 0, n_threads=threads,
                         n_batch=512, verbose=False)
        self.context_length = self.llm.n_ctx()
        self.stop_ids = stop_ids
        self.worker = Worker(self._run_batch, max_batch=1, name="herd-llamacpp")

    def _decode(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")

    def _run_batch(self, jobs: list[Job]) -> None:
        for job in jobs:
            p = job.params
            det = Detokenizer(self._decode, self.stop_ids, p.stop)
            # the sampler is re-seeded per request: a fixed seed reproduces, no seed means fresh randomness
            self.llm.set_seed(p.seed if p.seed is not None else random.randrange(2**32))
            n = 0
            for t in self.llm.generate(p.prompt_ids, temp=max(p.temperature, 0.0), top_p=p.top_p, top_k=0,
                                       min_p=0.0, repeat_penalty=1.0, reset=True):
                if job.cancelled.is_set():
                    job.emit(None)
                    break
                n += 1
                text, stopped = det.push(int(t))
                if _finish(job, det, text, stopped, n):
                    break
