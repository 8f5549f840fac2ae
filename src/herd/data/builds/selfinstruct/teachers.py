"""Teachers: who continues the Self-Instruct prompts.

Two kinds, one interface (``complete(prompts, sampling) -> [Completion]``, a text and the
``finish_reason`` the parser needs, because Alpaca drops the last task when the teacher hit the length
limit):

- ``LocalTeacher``: any base herd can load, run in this process, all prompts of a request batch decoded
  together, seeded so that the same batch gives the same text;
- ``OpenAITeacher``: any OpenAI-compatible endpoint (``/v1/completions`` as Alpaca used, or
  ``/v1/chat/completions``) through the official ``openai`` client, with a request-rate limit,
  retries with exponential backoff on rate limits / timeouts / 5xx, and Alpaca's habit of shrinking
  ``max_tokens`` when the server says the request does not fit its context.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from herd.core.errors import HerdError


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" or "length"


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    presence_penalty: float = 0.0
    ban_eos: bool = False  # Alpaca banned <|endoftext|> so the teacher writes all 20 tasks
    seed: int = 0          # request i of a batch uses seed + i where the teacher seeds per request


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def _first_stop(text: str, stops: tuple[str, ...]) -> int:
    hits = [j for s in stops if s and (j := text.find(s)) >= 0]
    return min(hits) if hits else -1


class _PresencePenalty:
    """OpenAI's presence penalty: subtract ``penalty`` from every token already generated."""

    def __init__(self, start: int, penalty: float):
        self.start, self.penalty = start, penalty

    def __call__(self, input_ids, scores):
        import torch

        gen = input_ids[:, self.start:]
        if gen.shape[1] == 0:
            return scores
        seen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, gen, True)
        return scores - self.penalty * seen.to(scores.dtype)


class LocalTeacher:
    """A herd-loadable base (name, HF folder, GGUF, artifact) generating in this process."""

    chat = False

    def __init__(self, spec: str, *, batch_size: int = 8, generate_ids: Callable | None = None):
        from herd.base import load_model, load_tokenizer, resolve_base

        ref = resolve_base(spec)
        self.name, self.key = ref.name, f"base:{ref.sha256}"
        self.model, self.tok = load_model(ref), load_tokenizer(ref)
        self.batch_size = batch_size
        self.context = int(getattr(self.model.config, "max_position_embeddings", 4096))
        self.generate_ids = generate_ids  # herd's engine (batched KV cache, per-sequence stops), when given

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
        if self.tok.eos_token_id is not None:
            ids.add(self.tok.eos_token_id)
        return sorted(ids)

    def _banned(self, eos: list[int]) -> list[int]:
        """Alpaca's logit_bias banned <|endoftext|>: ban it where this vocabulary has it, and every EOS."""
        eot = self.tok.convert_tokens_to_ids("<|endoftext|>")
        known = isinstance(eot, int) and self.tok.convert_ids_to_tokens(eot) == "<|endoftext|>"
        return sorted(set(eos) | ({eot} if known else set()))

    def complete(self, prompts: list[str], s: Sampling) -> list[Completion]:
        if self.generate_ids is not None:
            return self._complete_engine(prompts, s)
        return self._complete_hf(prompts, s)

    def _pad_id(self, eos: list[int]) -> int:
        return self.tok.pad_token_id if self.tok.pad_token_id is not None else eos[0]

    def _max_new(self, n_prompt: int, s: Sampling) -> int:
        max_new = min(s.max_tokens, self.context - n_prompt)
        if max_new < 1:
            raise HerdError(f"teacher {self.name}: the prompt has {n_prompt} tokens, its context is "
                            f"{self.context}; nothing left to generate")
        return max_new

    def _complete_engine(self, prompts: list[str], s: Sampling) -> list[Completion]:
        """Through the engine: one request batch decodes together, each sequence stopping on its own;
        sampling streams are seeded per prompt (``s.seed`` + index), as the endpoint teacher's."""
        tok, eos = self.tok, self._eos_ids()
        ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        max_new = self._max_new(max(len(x) for x in ids), s)
        stops = [x for x in s.stop if x]
        samples = self.generate_ids(
            self.model, ids, max_new_tokens=max_new, temperature=s.temperature, top_p=s.top_p, top_k=0,
            stop_ids=[] if s.ban_eos else eos, stop_strings=stops, tokenizer=tok if stops else None,
            pad_id=self._pad_id(eos), batch_size=self.batch_size,
            seed=s.seed, suppress_ids=self._banned(eos) if s.ban_eos else (),
            presence_penalty=s.presence_penalty)
        out = []
        for (sample,) in samples:
            text = tok.decode(sample.ids, skip_special_tokens=True)
            cut = _first_stop(text, s.stop)
            out.append(Completion(text[:cut], "stop") if cut >= 0 else Completion(text, sample.finish))
        return out

    def _complete_hf(self, prompts: list[str], s: Sampling) -> list[Completion]:
        import torch
        from transformers import LogitsProcessorList

        tok, eos = self.tok, self._eos_ids()
        old_side, tok.padding_side = tok.padding_side, "left"
        out: list[Completion] = []
        self.model.eval()
        try:
            for i in range(0, len(prompts), self.batch_size):
                enc = tok(prompts[i:i + self.batch_size], return_tensors="pt", padding=True,
                          add_special_tokens=False)
                start = enc["input_ids"].shape[1]
                max_new = self._max_new(start, s)
                kw = dict(max_new_tokens=max_new, pad_token_id=self._pad_id(eos), eos_token_id=eos or None)
                if any(s.stop):
                    kw.update(stop_strings=[x for x in s.stop if x], tokenizer=tok)
                if s.temperature > 0:
                    kw.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=0)
                else:
                    kw.update(do_sample=False)
                if s.ban_eos:
                    kw["suppress_tokens"] = self._banned(eos)
                if s.presence_penalty:
                    kw["logits_processor"] = LogitsProcessorList([_PresencePenalty(start, s.presence_penalty)])
                torch.manual_seed(s.seed + i)
                with torch.no_grad():
                    gen = self.model.generate(**enc, **kw)
                for row in gen[:, start:].tolist():
                    text = tok.decode(row, skip_special_tokens=True)
                    cut = _first_stop(text, s.stop)
                    if cut >= 0:
                        out.append(Completion(text[:cut], "stop"))
                    else:
                        ended = any(t in eos for t in row) and not s.ban_eos
                        out.append(Completion(text, "stop" if ended or len(row) < max_new else "length"))
        finally:
            tok.padding_side = old_side
        return out


class RateLimiter:
    """At most ``per_minute`` request starts per minute, shared by the worker threads."""

    def __init__(self, per_minute: float | None):
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self.next = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + self.interval
        time.sleep(max(0.0, start - now))


class OpenAITeacher:
    """An OpenAI-compatible endpoint; ``model`` defaults to the first one the server lists."""

    def __init__(self, base_url: str, *, api_key: str | None = None, model: str | None = None,
                 api: str = "completions", rate_limit: float | None = None, retries: int = 6,
                 timeout: float = 600.0, concurrency: int = 5, logit_bias: dict | None = None,
                 backoff: float = 1.0):
        import openai

        self.openai = openai
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY")
                                    or "none", max_retries=0, timeout=timeout)
        self.api, self.chat = api, api == "chat"
        self.retries, self.backoff, self.concurrency = retries, backoff, concurrency
        self.limiter, self.logit_bias = RateLimiter(rate_limit), logit_bias
        if model is None:
            models = self._call(lambda: self.client.models.list().data)
            if not models:
                raise HerdError(f"{base_url}: the server lists no models; pass --model")
            model = models[0].id
        self.model, self.name, self.key = model, f"{model}@{base_url}", f"url:{base_url}:{model}:{api}"

    def _call(self, fn):
        """``fn()`` with retries: backoff doubles from ``backoff`` s (cap 60 s, ±25 % jitter)."""
        o = self.openai
        for attempt in range(self.retries + 1):
            self.limiter.wait()
            try:
                return fn()
            except (o.RateLimitError, o.APIConnectionError, o.APITimeoutError, o.InternalServerError) as e:
                if attempt == self.retries:
                    raise HerdError(f"teacher {self.client.base_url}: {type(e).__name__} after "
                                    f"{self.retries + 1} attempts: {e}") from e
                time.sleep(min(60.0, self.backoff * 2 ** attempt) * random.uniform(0.75, 1.25))

    def _one(self, prompt: str, s: Sampling, seed: int) -> Completion:
        o, max_tokens = self.openai, s.max_tokens
        stop = list(dict.fromkeys(x for x in s.stop if x))[:4]
        extra = {"presence_penalty": s.presence_penalty} if s.presence_penalty else {}
        if self.logit_bias:
            extra["logit_bias"] = self.logit_bias
        while True:
            # the original Self-Instruct's later steps ask for temperature 0 with top_p 0 (greedy either way);
            # servers that insist on 0 < top_p (vLLM, herd serve) get the equivalent top_p 1
            top_p = s.top_p if s.top_p > 0 or s.temperature > 0 else 1.0
            common = dict(model=self.model, max_tokens=max_tokens, temperature=s.temperature, top_p=top_p,
                          stop=stop, seed=seed, **extra)
            try:
                if self.chat:
                    r = self._call(lambda kw=common: self.client.chat.completions.create(
                        messages=[{"role": "user", "content": prompt}], **kw))
                    c = r.choices[0]
                    return Completion(c.message.content or "", c.finish_reason or "stop")
                r = self._call(lambda kw=common: self.client.completions.create(prompt=prompt, **kw))
                return Completion(r.choices[0].text, r.choices[0].finish_reason or "stop")
            except o.BadRequestError as e:
                body = getattr(e, "body", None) or {}
                body = body.get("error", body) if isinstance(body, dict) else {}
                too_long = body.get("code") == "context_length_exceeded" or body.get("param") == "max_tokens" \
                    or "context length" in str(e)
                if not too_long or max_tokens <= 16:
                    raise HerdError(f"teacher {self.client.base_url}: request refused: {e}") from e
                max_tokens = int(max_tokens * 0.8)  # as Alpaca: shrink the target and ask again

    def complete(self, prompts: list[str], s: Sampling) -> list[Completion]:
        with ThreadPoolExecutor(max(1, min(self.concurrency, len(prompts)))) as pool:
            return list(pool.map(lambda ip: self._one(ip[1], s, s.seed + ip[0]), enumerate(prompts)))


def make_teacher(spec: str, **kw) -> LocalTeacher | OpenAITeacher:
    """A URL (``http(s)://…/v1``) is an endpoint; anything else is a base for ``resolve_base``, decoded
    by ``generate_ids`` (the engine) when given, else by transformers' ``generate``."""
    generate_ids = kw.pop("generate_ids", None)
    if is_url(spec):
        return OpenAITeacher(spec, **kw)
    return LocalTeacher(spec, batch_size=kw.get("batch_size", 8), generate_ids=generate_ids)
