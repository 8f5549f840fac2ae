"""One generation engine for everything that samples: evals, rejection sampling, PPO rollouts, chat
answers (Self-Instruct's teacher is a data build, below the engine, and keeps model.generate).

Why not ``model.generate``: on a 2-core CPU its per-step overhead (logits processors, stopping
criteria, a KV cache that grows by concatenation) cost more than the model's own decode step, and it
re-reads a prompt once per sample. Here, over the same transformers model:

- **one prefill per distinct prompt**: the K samples of a prompt (rejection sampling, pass@k) copy its
  keys/values instead of recomputing them;
- **a prefix shared by a batch's prompts** (few-shot demos, a system prompt, the guard's taxonomy) is
  computed once; the rest of each prompt follows it after padding in the middle (masked, with
  positions that skip the padding);
- **a KV cache that grows in place** (capacity doubling, no per-step concatenation), logits for the
  last position only, **finished sequences leave the batch**;
- **stops per sequence**: stop token ids end a sequence (the token is not kept); a stop string ends it
  once the decoded tail contains it (callers cut the text there);
- **sampling reproducible per sequence**: sequence ``i``'s sample ``j`` draws from its own stream
  (seeded by ``seed + i`` and ``j``), so its text does not depend on the batch it ran in, on the
  order, on other sequences stopping, or on the rank of a torchrun (up to float rounding, which the
  Gumbel-max draw makes very unlikely to matter); a call on ``prompts[c:]`` with ``seed + c`` draws
  what the whole call draws for those prompts, and so does a call on any subset that passes the
  prompts' own ``stream_ids`` (how rejection sampling batches its prompts by length).

Greedy decoding at fp32 equals ``model.generate`` up to float rounding (tested token for token on the
tiny model; ``bench/generation.py`` counts agreement on the real one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache

from herd.core.progress import Progress
from herd.engine.kv import CACHE_KW, PREFIX_MIN, common_prefix_len, new_cache, prefix_cache
from herd.templates.base import truncate


@dataclass
class Sample:
    ids: list[int]  # generated tokens, without a stop token id (with the tokens of a stop string)
    finish: str  # "stop" (stop id or string) or "length"


def _streams(seed: int, rows: Sequence[tuple[int, int]]) -> list[torch.Generator]:
    """One random stream per sequence (prompt ``i``, sample ``j``), seeded by ``seed + i`` and ``j``."""
    return [torch.Generator().manual_seed(((seed + i) * 1_000_003 + j) % (2**63 - 1)) for i, j in rows]


def _pick(logits: torch.Tensor, noise: torch.Tensor | None, temperature: float, top_p: float,
          top_k: int = 0) -> torch.Tensor:
    """Greedy (``noise`` None), else one draw per row from the ``top_k`` most likely tokens (0: all) and
    the nucleus, by the Gumbel-max trick over
    ``noise`` (uniforms, one per token): argmax(logits / T + Gumbel) is a draw from softmax(logits / T).

    Why Gumbel and not the inverse CDF: a draw then changes only where two perturbed scores tie, so
    float rounding that differs between batch shapes (about 1e-6) almost never changes a sample;
    an inverse CDF over 49,152 tokens moved a bucket boundary past the draw every few dozen tokens."""
    if noise is None:
        return logits.argmax(-1)
    scores = logits.double() / temperature
    if 0 < top_k < scores.shape[-1]:
        scores = scores.masked_fill(scores < scores.topk(top_k, -1).values[:, -1:], float("-inf"))
    if top_p < 1.0:
        probs, order = torch.softmax(scores, -1).sort(-1, descending=True)
        outside = (probs.cumsum(-1) - probs) >= top_p  # beyond the smallest set reaching top_p (>= 1 token)
        scores = scores.masked_fill(torch.zeros_like(outside).scatter_(-1, order, outside), float("-inf"))
    return (scores - torch.log(-torch.log(noise.clamp_(min=1e-300)))).argmax(-1)


def _prefill(model, prompts: list[list[int]], pad: int, dev) -> tuple[DynamicCache, torch.Tensor, torch.Tensor,
                                                                        torch.Tensor]:
    """Keys/values of ``prompts`` (one row each), the last position's logits, the attention mask and
    each row's next position. A shared prefix runs once; the rest is left-padded after it."""
    shared = common_prefix_len(prompts) if len(prompts) > 1 else 0
    shared = min(shared, min(len(p) for p in prompts) - 1)  # every row keeps >= 1 token of its own
    if shared < PREFIX_MIN:
        shared, cache = 0, new_cache()
    else:
        cache = prefix_cache(model, prompts[0][:shared])
        cache.batch_select_indices(torch.zeros(len(prompts), dtype=torch.long, device=dev))
    rest = [p[shared:] for p in prompts]
    width = max(len(r) for r in rest)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rest], device=dev)
    own = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rest], device=dev)
    mask = torch.cat([torch.ones((len(rest), shared), dtype=own.dtype, device=dev), own], 1)
    pos = (shared + own.cumsum(1) - 1).clamp_(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, **{CACHE_KW: cache}, use_cache=True,
                logits_to_keep=1)
    return cache, out.logits[:, -1].float(), mask, pos[:, -1:] + 1


def generate_ids(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, n: int = 1,
                 temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, stop_ids: Sequence[int] = (),
                 stop_strings: Sequence[str] = (), tokenizer=None, pad_id: int = 0, batch_size: int = 8,
                 seed: int = 0, suppress_ids: Sequence[int] = (), presence_penalty: float = 0.0,
                 heal: Sequence[Sequence[int] | None] | None = None, stream_ids: Sequence[int] | None = None,
                 batch_tokens: int | None = None, progress: bool = False, desc: str = "generate"
                 ) -> list[list[Sample]]:
    """``n`` continuations of each tokenized prompt: ``out[i][j]`` is prompt ``i``'s sample ``j``.

    ``batch_size`` sequences decode together (prompts sorted by length, so little padding); identical
    prompts are prefilled once. ``stop_strings`` need ``tokenizer``. ``suppress_ids`` never sampled;
    ``presence_penalty`` subtracted once from the logit of every token already generated (OpenAI's).
    ``heal[i]`` (token healing): prompt ``i`` lost a token (its last, or an infilling prefix's last), and
    its first new token is drawn from these ids only (those whose text starts with the lost text); that
    token re-writes the lost text, so it counts toward neither ``max_new_tokens`` nor the stop strings,
    and the prompt is prefilled once. ``stream_ids[i]`` (default ``i``): which random streams prompt ``i``'s
    samples draw from (seeded by ``seed + stream_ids[i]``), so a prompt's samples need not depend on
    where it sits in this call. ``batch_tokens``: a batch also holds no more rows than fit
    ``rows x (its longest prompt + max_new_tokens) <= batch_tokens`` (at least one), which bounds its KV cache
    and prefill where prompts are long."""
    if stop_strings and tokenizer is None:
        raise ValueError("stop strings need the tokenizer")
    if heal is not None and len(heal) != len(prompts):
        raise ValueError(f"heal: {len(heal)} entries for {len(prompts)} prompts")
    if stream_ids is not None and len(stream_ids) != len(prompts):
        raise ValueError(f"stream_ids: {len(stream_ids)} entries for {len(prompts)} prompts")
    dev = next(model.parameters()).device
    stops = set(stop_ids)
    tail = max((len(s) for s in stop_strings), default=0) + 4  # tokens that can hold a stop string
    rows = sorted(((i, j) for i in range(len(prompts)) for j in range(n)), key=lambda r: (-len(prompts[r[0]]), r))
    out: list[list[Sample | None]] = [[None] * n for _ in prompts]
    model.eval()
    bar = Progress(total=len(rows), desc=desc, unit="completion", enabled=progress)
    try:
        for batch in _batches(rows, [len(p) for p in prompts], batch_size, max_new_tokens, batch_tokens):
            for (i, j), s in zip(batch, _decode(model, prompts, batch, max_new_tokens=max_new_tokens,
                                                temperature=temperature, top_p=top_p, top_k=top_k, stops=stops,
                                                stop_strings=list(stop_strings), tail=tail, tokenizer=tokenizer,
                                                pad=pad_id, seed=seed, suppress=list(suppress_ids),
                                                presence=presence_penalty, heal=heal, stream_ids=stream_ids,
                                                dev=dev)):
                out[i][j] = s
            bar.update(len(batch))
    finally:
        bar.close(failed=any(s is None for r in out for s in r))
    return out  # type: ignore[return-value]


def _batches(rows: list[tuple[int, int]], lengths: list[int], size: int, max_new: int, tokens: int | None):
    """``rows`` (longest prompt first) in batches of ``size``, fewer where ``tokens`` caps a batch's rows times
    its width (its first, longest prompt plus ``max_new``)."""
    b = 0
    while b < len(rows):
        take = size if tokens is None else max(1, min(size, tokens // (lengths[rows[b][0]] + max_new)))
        yield rows[b:b + take]
        b += take


@torch.no_grad()
def _decode(model, prompts, batch, *, max_new_tokens, temperature, top_p, top_k, stops, stop_strings, tail, tokenizer,
            pad, seed, suppress, presence, heal, stream_ids, dev) -> list[Sample]:
    uniq: dict[tuple[int, ...], int] = {}
    for i, _ in batch:
        uniq.setdefault(tuple(prompts[i]), len(uniq))
    cache, logits, mask, pos = _prefill(model, [list(p) for p in uniq], pad, dev)
    of = torch.tensor([uniq[tuple(prompts[i])] for i, _ in batch], device=dev)
    if len(uniq) != len(batch):
        cache.batch_select_indices(of)
    logits, mask, pos = logits[of], mask[of], pos[of]
    streams = batch if stream_ids is None else [(stream_ids[i], j) for i, j in batch]
    gens = _streams(seed, streams) if temperature > 0 else None
    gen: list[list[int]] = [[] for _ in batch]
    done: list[Sample | None] = [None] * len(batch)
    live = list(range(len(batch)))  # batch rows still decoding, in cache order
    healed = [heal is not None and heal[i] is not None for i, _ in batch]  # first token re-writes the prompt
    if any(healed):
        allowed = torch.zeros_like(logits, dtype=torch.bool)
        for k, (i, _) in enumerate(batch):
            allowed[k, list(heal[i]) if healed[k] else slice(None)] = True
        logits = logits.masked_fill(~allowed, float("-inf"))
    for _ in range(max_new_tokens + any(healed)):
        if suppress:
            logits[:, suppress] = float("-inf")
        if presence:
            for r, k in enumerate(live):
                if gen[k]:
                    logits[r, sorted(set(gen[k]))] -= presence
        noise = None if gens is None else torch.stack([torch.rand(logits.shape[-1], generator=gens[k],
                                                                  dtype=torch.float64) for k in live])
        nxt = _pick(logits, noise, temperature, top_p, top_k).tolist()
        keep = []
        for r, (k, t) in enumerate(zip(live, nxt)):
            if t in stops:
                done[k] = Sample(gen[k], "stop")
                continue
            gen[k].append(t)
            new = gen[k][int(healed[k]):]  # what the model added to the prompt's text
            if stop_strings and new and any(s in tokenizer.decode(new[-tail:]) for s in stop_strings):
                done[k] = Sample(gen[k], "stop")
            elif len(new) == max_new_tokens:
                done[k] = Sample(gen[k], "length")
            else:
                keep.append(r)
        if not keep:
            break
        if len(keep) < len(live):
            sel = torch.tensor(keep, device=dev)
            cache.batch_select_indices(sel)
            mask, pos = mask[sel], pos[sel]
            live = [live[r] for r in keep]
        ids = torch.tensor([[gen[k][-1]] for k in live], device=dev)
        mask = torch.cat([mask, torch.ones_like(ids)], 1)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, **{CACHE_KW: cache},
                       use_cache=True, logits_to_keep=1).logits[:, -1].float()
        pos = pos + 1
    return [d if d is not None else Sample(gen[k], "length") for k, d in enumerate(done)]


def sampling_model(model, precision: str):
    """The model to draw samples from: ``model`` itself, or a copy in bf16 where ``precision`` resolves to
    bf16 (``auto``: native bf16 only). Samples are random draws, so the copy's rounding is harmless there;
    greedy evaluations keep the fp32 weights (bf16 changed 3 of 8 greedy replies in bench/generation.py)."""
    import copy

    from herd.engine.training import resolve_precision

    dtype = resolve_precision(precision)
    if dtype is None or next(model.parameters()).dtype == dtype:
        return model
    return copy.deepcopy(model).to(dtype)


def stop_token_ids(tokenizer, stop: Sequence[str]) -> tuple[list[int], list[str]]:
    """(token ids that end a sequence: EOS and stops that are one special token, the remaining text stops)."""
    stop = [s for s in stop if s]
    ids = sorted({i for s in stop if (i := tokenizer.convert_tokens_to_ids(s)) is not None
                  and i != tokenizer.unk_token_id and tokenizer.convert_ids_to_tokens(i) == s}
                 | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()))
    return ids, [s for s in stop if tokenizer.convert_tokens_to_ids(s) not in ids]


@dataclass
class Completion:
    text: str  # cut at the first stop string, stripped
    finish: str  # "stop" (a stop token or string ended it) or "length" (cut at max_new_tokens)


def completions(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 128, temperature: float = 0.0,
                top_p: float = 1.0, top_k: int = 0, stop: list[str] | None = None, batch_size: int = 8,
                seed: int = 0, stream_ids: Sequence[int] | None = None, batch_tokens: int | None = None,
                progress: bool = False, desc: str = "generate") -> list[Completion]:
    """:func:`generate` with each completion's finish reason: a reply cut at ``max_new_tokens`` is not a
    whole reply (rejection sampling must not train one as if it ended there). ``stream_ids``: as in
    :func:`generate_ids`."""
    ids, text_stops = stop_token_ids(tokenizer, stop or [])
    enc = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (ids[0] if ids else 0)
    rows = generate_ids(model, enc, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                        stop_ids=ids, stop_strings=text_stops, tokenizer=tokenizer, pad_id=pad,
                        batch_size=batch_size, seed=seed, stream_ids=stream_ids, batch_tokens=batch_tokens,
                        progress=progress, desc=desc)
    return [Completion(cut_at_stop(tokenizer.decode(r[0].ids, skip_special_tokens=True), text_stops), r[0].finish)
            for r in rows]


# The evaluations' decode batch: 32 sequences a step, at most this many prompt-plus-reply tokens in a batch.
# bench/greedy_batches.py (80 Vicuna first turns, SmolLM2 greedy in fp32, 2-core Xeon): 8 -> 32 rows 1.98x
# tokens/s, every answer identical; 32 x 512 tokens keeps a batch's fp32 KV cache near 0.75 GB on SmolLM2.
EVAL_BATCH, EVAL_BATCH_TOKENS = 32, 32 * 512


def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 128, temperature: float = 0.0,
             top_p: float = 1.0, top_k: int = 0, stop: list[str] | None = None, batch_size: int = EVAL_BATCH,
             seed: int = 0, batch_tokens: int | None = EVAL_BATCH_TOKENS, progress: bool = False,
             desc: str = "generate") -> list[str]:
    """Completions of ``prompts`` (already rendered by a template), cut at the first stop string.

    ``progress``: report completions done under ``desc`` (off by default: callers that loop over
    chunks report their own progress)."""
    return [c.text for c in completions(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                        temperature=temperature, top_p=top_p, top_k=top_k, stop=stop,
                                        batch_size=batch_size, seed=seed, batch_tokens=batch_tokens,
                                        progress=progress, desc=desc)]


def cut_at_stop(text: str, stops: list[str]) -> str:
    """The reply before its first stop string, stripped."""
    return truncate(text, stops).strip()


def model_responder(spec: str, *, temperature: float, max_new_tokens: int, seed: int = 0):
    """``respond(messages) -> reply``: one sampled reply from ``spec`` in its own template."""
    from herd.artifacts import artifact_path, artifact_template
    from herd.base import load_model, load_tokenizer, resolve_base

    ref = resolve_base(artifact_path(spec))
    tok, model = load_tokenizer(ref), load_model(ref)
    template = artifact_template(ref.path, tok)
    calls = [0]

    def respond(messages: list[dict]) -> str:
        calls[0] += 1
        prompt = template.prompt(messages, tok)
        reply = generate(model, tok, [prompt], max_new_tokens=max_new_tokens, temperature=temperature,
                         stop=template.stop_strings(tok), seed=seed + calls[0])[0]
        return reply or "…"  # an empty sample would make an empty turn; keep the record renderable

    return respond
